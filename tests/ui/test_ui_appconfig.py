"""Persisted settings: round trip, atomic writes, corrupt and future files set aside."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kvgui.core.config.appconfig import (
    CONFIG_VERSION,
    MAX_RECENT,
    AppConfig,
    config_path,
    load_config,
    save_config,
)
from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.devices.budget import HW_CATALOG, HardwareChoice


def test_config_dir_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KVGUI_CONFIG_DIR", str(tmp_path / "cfg"))
    assert config_path() == tmp_path / "cfg" / "settings.json"


def test_round_trip() -> None:
    cfg = AppConfig(
        settings=Settings(n_ctx=32768, type_k="q8_0", type_v="q4_0", flash_attn=FlashAttn.ON,
                          n_gpu_layers=20, n_parallel=2, swa_full=True),
        hardware=HardwareChoice(mode=HW_CATALOG, catalog_name="GeForce RTX 4060",
                                desktop=512 << 20, embedding=1 << 30, margin=0),
        last_model="catalog:Qwen3-8B Q4_K_M", advanced_open=True, ngl_mode="auto",
        geometry="AAAA")
    for i in range(MAX_RECENT + 3):
        cfg.add_recent(f"/models/m{i}.gguf")
    cfg.add_recent("/models/m5.gguf")
    save_config(cfg)
    assert json.loads(config_path().read_text())["version"] == CONFIG_VERSION
    loaded = load_config()
    assert loaded.warning is None
    assert loaded.config == cfg
    assert loaded.config.recent_files[0] == "/models/m5.gguf"
    assert len(loaded.config.recent_files) == MAX_RECENT
    assert len(set(loaded.config.recent_files)) == MAX_RECENT
    # atomic: nothing but the file itself is left in the directory
    assert os.listdir(config_path().parent) == ["settings.json"]


def test_missing_file_gives_defaults() -> None:
    loaded = load_config()
    assert loaded.config == AppConfig() and loaded.warning is None


def _assert_set_aside(path: Path, original: str) -> None:
    loaded = load_config()
    assert loaded.config == AppConfig()
    assert loaded.warning and "using defaults" in loaded.warning
    assert "\n" not in loaded.warning
    aside = [p for p in path.parent.iterdir() if p.name.startswith("settings.json.corrupt-")]
    assert len(aside) == 1 and aside[0].read_text() == original
    assert not path.exists()


def test_corrupt_json_is_set_aside() -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{ not json")
    _assert_set_aside(path, "{ not json")


def test_bad_values_are_set_aside() -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": CONFIG_VERSION, "settings": {"type_k": "q9_9"}})
    path.write_text(text)
    _assert_set_aside(path, text)


def test_a_newer_version_is_set_aside_not_misread() -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": CONFIG_VERSION + 1, "settings": {}})
    path.write_text(text)
    _assert_set_aside(path, text)


def test_window_saves_and_restores(qtbot, model_file, make_config, open_model) -> None:
    from kvgui.ui.main_window import MainWindow

    win = MainWindow(make_config(12), detect_hardware=False)
    qtbot.addWidget(win)
    win.resize(700, 500)
    win.show()
    open_model(win, model_file)
    win.ctl.update_settings(n_ctx=24576, type_k="q8_0", type_v="q8_0")
    win.ctl.flush()
    size = win.size()
    win.close()
    loaded = load_config()
    assert loaded.warning is None
    cfg = loaded.config
    assert (cfg.settings.n_ctx, cfg.settings.type_k) == (24576, "q8_0")
    assert cfg.last_model == str(model_file) and cfg.recent_files == [str(model_file)]
    assert cfg.hardware.custom_bytes == 12 << 30
    win2 = MainWindow(cfg, detect_hardware=False)
    qtbot.addWidget(win2)
    # (the offscreen screen is 800 px wide, narrower than the window: only the height is free)
    assert win2.geometry_restored and win2.height() == size.height() == 500
    assert win2.ctx.spin.value() == 24576
    assert win2.cache_controls.type_k.currentData() == "q8_0"


def test_wrong_types_are_set_aside() -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"version": CONFIG_VERSION, "hardware": {"custom_bytes": "8GB"}})
    path.write_text(text)
    _assert_set_aside(path, text)
