"""kvgui's own preset file: the settings, the model path and the extras, as versioned JSON.

A preset is what an export to ``--format json`` prints and what the window saves and opens.
It is checked field by field on load so a hand-edited file fails with one line that names
the field, not with a traceback from deep inside Settings.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvgui.core.commandline.parse import ParsedCommand
from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.gguf.ggml_types import CACHE_TYPE_NAMES

PRESET_FORMAT = "kvgui-preset"
PRESET_VERSION = 1

# Extras kvgui knows, and their JSON types; other keys are kept as long as they are scalars.
_EXTRA_TYPES: dict[str, type | tuple[type, ...]] = {
    "system_prompt": str,
    "prompt": str,
    "host": str,
    "port": int,
}


class PresetError(ValueError):
    """A preset that cannot be loaded; the message is one line."""


@dataclass(frozen=True)
class Preset:
    settings: Settings
    model_path: str | None = None
    # system_prompt, prompt, host, port, and anything else scalar a later kvgui adds
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def extra_args(self) -> tuple[str, ...]:
        """Flags for llama.cpp that kvgui does not model (Settings.extra_args)."""
        return self.settings.extra_args

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PRESET_FORMAT,
            "version": PRESET_VERSION,
            "model_path": self.model_path,
            "settings": self.settings.to_dict(),
            "extras": dict(self.extras),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"


def _settings_from(data: Any) -> Settings:
    if not isinstance(data, dict):
        raise PresetError("'settings' must be an object")
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PresetError(f"settings: unknown field {unknown[0]!r}")
    kwargs: dict[str, Any] = {}
    defaults = Settings()
    for name, value in data.items():
        default = getattr(defaults, name)
        where = f"settings.{name}"
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise PresetError(f"{where} must be true or false, not {value!r}")
        elif isinstance(default, FlashAttn):
            if value not in [m.value for m in FlashAttn]:
                raise PresetError(f"{where} must be on, off or auto, not {value!r}")
            value = FlashAttn(value)
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise PresetError(f"{where} must be a whole number, not {value!r}")
        elif name in ("type_k", "type_v"):
            if value not in CACHE_TYPE_NAMES:
                raise PresetError(
                    f"{where} must be one of {', '.join(CACHE_TYPE_NAMES)}, not {value!r}"
                )
        elif name == "tensor_split":
            if not isinstance(value, list) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in value
            ):
                raise PresetError(f"{where} must be a list of non-negative numbers")
            value = tuple(float(x) for x in value)
        elif name == "extra_args":
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise PresetError(f"{where} must be a list of strings")
            value = tuple(value)
        kwargs[name] = value
    try:
        return Settings(**kwargs)
    except (ValueError, TypeError) as exc:
        raise PresetError(f"settings: {exc}") from None


def preset_from_dict(data: Any) -> Preset:
    if not isinstance(data, dict) or data.get("format") != PRESET_FORMAT:
        raise PresetError(f"not a kvgui preset (no \"format\": \"{PRESET_FORMAT}\")")
    version = data.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PresetError(f"preset version must be a whole number from 1, not {version!r}")
    if version > PRESET_VERSION:
        raise PresetError(
            f"preset version {version} is newer than this kvgui reads ({PRESET_VERSION}); "
            "update kvgui"
        )
    model_path = data.get("model_path")
    if model_path is not None and not isinstance(model_path, str):
        raise PresetError("'model_path' must be a string or null")
    settings = _settings_from(data.get("settings", {}))
    # presets written before Settings kept them had the flags at the top level
    extra_args = data.get("extra_args", [])
    if not isinstance(extra_args, list) or not all(isinstance(a, str) for a in extra_args):
        raise PresetError("'extra_args' must be a list of strings")
    if extra_args and not settings.extra_args:
        settings = settings.replace(extra_args=tuple(extra_args))
    extras = data.get("extras", {})
    if not isinstance(extras, dict):
        raise PresetError("'extras' must be an object")
    for key, value in extras.items():
        want = _EXTRA_TYPES.get(key)
        if want is not None and value is not None:
            if isinstance(value, bool) or not isinstance(value, want):
                raise PresetError(f"extras.{key} has the wrong type ({type(value).__name__})")
        elif value is not None and not isinstance(value, (str, int, float, bool)):
            raise PresetError(f"extras.{key} must be a string, number, true/false or null")
    return Preset(settings=settings, model_path=model_path, extras=dict(extras))


def preset_from_json(text: str) -> Preset:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PresetError(f"not valid JSON: {exc.msg} at line {exc.lineno}") from None
    return preset_from_dict(data)


def load_preset(path: str | Path) -> Preset:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PresetError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise PresetError(f"{path} is not UTF-8 text") from None
    try:
        return preset_from_json(text)
    except PresetError as exc:
        raise PresetError(f"{path}: {exc}") from None


def save_preset(path: str | Path, preset: Preset) -> None:
    Path(path).write_text(preset.to_json(), encoding="utf-8")


def preset_from_command(parsed: ParsedCommand) -> Preset:
    """An imported command line as a preset; flags kvgui does not model are in the settings'
    extra_args."""
    extras = {k: v for k, v in parsed.extras.items() if k in _EXTRA_TYPES}
    return Preset(settings=parsed.settings, model_path=parsed.model_path, extras=extras)
