"""Untrusted text stays text in the window; a broken settings file never locks the user out."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from kvgui.core.config.appconfig import AppConfig, config_path, load_config, save_config
from kvgui.core.config.settings import Settings
from kvgui.core.model.catalog import find
from kvgui.core.model.info import ModelInfo

HOSTILE = "<b style='color:green;font-size:40px'>FITS ✔</b>\x1b[2J"


def test_a_model_name_with_html_is_shown_as_plain_text(qtbot, window) -> None:
    md, tensors, size = find("Llama-3.2-3B-Instruct Q4_K_M").header()
    md["general.name"] = HOSTILE
    model = ModelInfo.from_header(md, tensors, file_bytes=size)
    with qtbot.waitSignal(window.ctl.modelChanged, timeout=5000):
        window.ctl.set_model(model, "catalog:evil")
    label = window.model_panel.name
    assert label.textFormat() == Qt.TextFormat.PlainText
    assert "<b style=" in label.text()  # shown as the characters it is
    assert "\x1b" not in label.text()  # the escape is written out, not sent
    assert "\x1b" not in window.windowTitle() and "\n" not in window.windowTitle()


@pytest.mark.parametrize(("content", "why"), [
    (b"\xff\xfe{not utf-8", "not UTF-8"),
    (b'{"version": 1, "settings": []}', ""),
    (b"[" * 100000 + b"]" * 100000, "nested"),
    (b'{"version": 1, "settings": {"n_ctx": 99999999999}}', ""),
    (b'{"version": 1, "hardware": {"mode": "detected", "custom_more": "x"}}', ""),
])
def test_a_broken_settings_file_is_set_aside_and_the_window_opens(qtbot, content: bytes,
                                                                  why: str) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    result = load_config()
    assert result.config == AppConfig()  # defaults
    assert result.warning and "moved to settings.json.corrupt-" in result.warning
    assert why in result.warning and "\n" not in result.warning
    assert not path.exists() and list(path.parent.glob("settings.json.corrupt-*"))
    from kvgui.ui.main_window import MainWindow

    win = MainWindow(result.config, detect_hardware=False, persist=True)
    qtbot.addWidget(win)
    win.close()  # and what it saves loads back
    assert load_config().warning is None


def test_only_values_that_apply_are_saved(qtbot, tmp_path: Path) -> None:
    from kvgui.ui.main_window import MainWindow

    win = MainWindow(AppConfig(), detect_hardware=False, persist=True)
    qtbot.addWidget(win)
    assert not win.ctl.update_settings(n_ctx=99999999999)  # refused, with a message
    win.ctl.flush()
    win.close()
    assert load_config().config.settings == Settings()
    save_config(AppConfig())


def test_a_megabyte_paste_into_import_is_refused_at_once(qtbot) -> None:
    """A 1 MB pasted command froze Import for 140 s (issue 18, case 8): the paste is not
    inserted, the reason is shown, and what was typed before stays."""
    import time

    from PySide6.QtCore import QMimeData

    from kvgui.ui.import_dialog import ImportDialog

    dialog = ImportDialog(Settings())
    qtbot.addWidget(dialog)
    dialog.edit.setPlainText("llama-cli -m a.gguf -c 8192")
    mime = QMimeData()
    mime.setText("llama-cli -m a.gguf " + "-c 4096 " * 130_000)
    t0 = time.monotonic()
    dialog.edit.insertFromMimeData(mime)
    assert time.monotonic() - t0 < 0.5
    assert dialog.preview.text().startswith("Not pasted: 1,040,020 characters")
    assert dialog.edit.toPlainText() == "llama-cli -m a.gguf -c 8192"
    small = QMimeData()
    small.setText(" -ngl 10")
    dialog.edit.moveCursor(dialog.edit.textCursor().MoveOperation.End)
    dialog.edit.insertFromMimeData(small)
    assert dialog.parsed is not None and dialog.parsed.settings.n_gpu_layers == 10


def test_chat_measure_and_serve_show_a_hostile_path_as_plain_text(qtbot, tmp_path: Path) -> None:
    """A path or message from elsewhere is data in every panel, not HTML (issue 18, case 2)."""
    from PySide6.QtCore import Qt

    from kvgui.ui.chat_window import ChatPanel
    from kvgui.ui.measure_panel import MeasurePanel
    from kvgui.ui.serve_panel import ServePanel

    hostile = str(tmp_path / '<b style="color:green">FITS ✔</b>.gguf')
    chat = ChatPanel()
    qtbot.addWidget(chat)
    chat.settings_label.setText(hostile)
    measure = MeasurePanel()
    qtbot.addWidget(measure)
    serve = ServePanel()
    qtbot.addWidget(serve)
    for label in (chat.settings_label, chat.status_label, chat.stats_label,
                  measure.model_label, measure.status, serve.status_label):
        assert label.textFormat() == Qt.TextFormat.PlainText
    assert chat.settings_label.text() == hostile
