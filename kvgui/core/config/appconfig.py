"""The window's persisted state: last settings, hardware choice, recent files, geometry.

One versioned JSON file in the user's config directory (platformdirs, or $KVGUI_CONFIG_DIR),
written atomically (temp file + rename) so a crash never leaves half a file. A file that
cannot be read is moved aside (``settings.json.corrupt-<time>``) with a warning, and the
defaults are used: a broken config must never stop the window from opening.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvgui.core.config.settings import Settings
from kvgui.core.devices.budget import HardwareChoice
from kvgui.core.quality.advice import QualityThreshold
from kvgui.core.untrusted import loads_json, one_line, read_text_capped

log = logging.getLogger(__name__)

CONFIG_VERSION = 1
CONFIG_FILE = "settings.json"
MAX_RECENT = 10

@dataclass
class AppConfig:
    settings: Settings = field(default_factory=Settings)
    hardware: HardwareChoice = field(default_factory=HardwareChoice)
    recent_files: list[str] = field(default_factory=list)
    last_model: str = ""  # a path, or "catalog:<id>"
    advanced_open: bool = False
    ngl_mode: str = "all"  # GPU layers: all / auto (the most that fit) / n (settings' number)
    geometry: str = ""  # QMainWindow.saveGeometry(), base64
    window_state: str = ""  # QMainWindow.saveState(), base64
    llama_cpp_folder: str = ""  # the user's llama.cpp binaries (Serve, Verify, terminal)
    # the loss the user accepts from a quantized cache (the presets and the advice use it)
    quality_threshold: QualityThreshold = field(default_factory=QualityThreshold)
    measure_text: str = ""  # the text measurements are looked up for ("" = the sample)

    def add_recent(self, path: str) -> None:
        """Most recent first, no duplicates, at most MAX_RECENT."""
        self.recent_files = [path] + [p for p in self.recent_files if p != path]
        del self.recent_files[MAX_RECENT:]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CONFIG_VERSION,
            "settings": self.settings.to_dict(),
            "hardware": self.hardware.to_dict(),
            "recent_files": list(self.recent_files),
            "last_model": self.last_model,
            "advanced_open": self.advanced_open,
            "ngl_mode": self.ngl_mode,
            "geometry": self.geometry,
            "window_state": self.window_state,
            "llama_cpp_folder": self.llama_cpp_folder,
            "quality_threshold": self.quality_threshold.to_dict(),
            "measure_text": self.measure_text,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AppConfig:
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        version = data.get("version")
        if version != CONFIG_VERSION:
            raise ValueError(f"version {version!r}, this kvgui reads version {CONFIG_VERSION}")
        recent = data.get("recent_files", [])
        if not isinstance(recent, list) or not all(isinstance(p, str) for p in recent):
            raise ValueError("recent_files is not a list of paths")
        return cls(
            settings=Settings.from_dict(data.get("settings", {})),
            hardware=HardwareChoice.from_dict(data.get("hardware", {})),
            recent_files=recent[:MAX_RECENT],
            last_model=str(data.get("last_model", "")),
            advanced_open=bool(data.get("advanced_open", False)),
            ngl_mode=_ngl_mode(data.get("ngl_mode", "all")),
            geometry=str(data.get("geometry", "")),
            window_state=str(data.get("window_state", "")),
            llama_cpp_folder=str(data.get("llama_cpp_folder", "")),
            quality_threshold=QualityThreshold.from_dict(data.get("quality_threshold") or {}),
            measure_text=str(data.get("measure_text", "")),
        )


def _ngl_mode(value: Any) -> str:
    if value not in ("all", "auto", "n"):
        raise ValueError(f"unknown GPU-layers mode {value!r}")
    return str(value)


def user_dir(env: str, kind: str) -> Path:
    """$``env`` if set (tests, portable installs), else platformdirs' user ``kind`` dir
    ("config", "log", "cache") for kvgui."""
    value = os.environ.get(env)
    if value:
        return Path(value)
    import platformdirs

    return Path(getattr(platformdirs, f"user_{kind}_dir")("kvgui", appauthor=False))


def config_dir() -> Path:
    return user_dir("KVGUI_CONFIG_DIR", "config")


def config_path() -> Path:
    return config_dir() / CONFIG_FILE


@dataclass
class LoadResult:
    config: AppConfig
    warning: str | None = None  # one line for the status bar when the file was set aside


MAX_CONFIG_BYTES = 4 << 20  # a real one is a few KB (recent files, geometry)


def load_config(path: Path | None = None) -> LoadResult:
    """Read the config; a missing file gives defaults, a broken one is set aside (named in a
    one-line warning), so nothing in it can keep the window from opening."""
    path = path or config_path()
    try:
        if not path.exists():
            return LoadResult(AppConfig())
        data = loads_json(read_text_capped(path, MAX_CONFIG_BYTES))
        if not isinstance(data, dict):
            raise ValueError("top level is not an object")
        return LoadResult(AppConfig.from_dict(data))
    except OSError as exc:
        log.warning("could not read %s", path, exc_info=True)
        return LoadResult(AppConfig(), f"could not read settings ({exc.strerror or exc}); "
                          "using defaults")
    except Exception as exc:  # anything in the file: set it aside, never lock the user out
        log.warning("settings file %s set aside", path, exc_info=True)
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            os.replace(path, aside)
            where = f"moved to {aside.name}"
        except OSError:
            where = "left in place"
        reason = one_line(str(exc) or type(exc).__name__, 160)
        return LoadResult(AppConfig(), f"settings file was unreadable ({reason}); {where}, "
                          "using defaults")


def save_config(config: AppConfig, path: Path | None = None) -> None:
    """Write atomically: a temp file in the same directory, fsync, then rename over."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
