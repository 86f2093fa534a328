"""The window's Hub dialog and "Models on this machine", against the Hub on 127.0.0.1."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytest.importorskip("PySide6")
# the offscreen platform cannot pass size hints to a window manager it does not have
pytestmark = pytest.mark.qt_log_ignore("does not support propagateSizeHints")

import kvgui.ui  # noqa: E402,F401  (PySide6 safety before any Qt call)
from kvgui.core.config.appconfig import AppConfig  # noqa: E402
from kvgui.core.devices.budget import HW_CUSTOM, HardwareChoice  # noqa: E402
from kvgui.core.sizes import GiB  # noqa: E402
from kvgui.testing.fake_hub import FakeHub  # noqa: E402
from kvgui.testing.hub_repos import QWEN_SPLIT, TINY  # noqa: E402


@pytest.fixture
def win(qtbot, hub: FakeHub):  # type: ignore[no-untyped-def]
    from kvgui.ui.main_window import MainWindow

    config = AppConfig(hardware=HardwareChoice(mode=HW_CUSTOM, custom_bytes=int(8 * GiB)))
    w = MainWindow(config, detect_hardware=False, persist=False)
    qtbot.addWidget(w)
    return w


def _dialog(win):  # type: ignore[no-untyped-def]
    from kvgui.ui.hub_dialog import show_hub_dialog

    return show_hub_dialog(win)


def test_quant_table_then_open_header_only(qtbot, win, hub: FakeHub) -> None:  # type: ignore[no-untyped-def]
    dlg = _dialog(win)
    hub.delay = 0.3  # a slow Hub must not block the window
    dlg.query.setText(QWEN_SPLIT)
    t0 = time.perf_counter()
    dlg.go()
    assert time.perf_counter() - t0 < 0.2
    qtbot.waitUntil(lambda: dlg.table.rowCount() == 2 and dlg.table.item(1, 2) is not None,
                    timeout=15000)
    hub.delay = 0.0
    labels = [dlg.table.item(i, 0).text() for i in range(2)]
    assert labels == ["Q4_K_M", "Q6_K"]  # by size
    q4 = dlg.rows[0]
    assert [dlg.table.item(0, 2 + j).text()[0] for j in range(len(dlg.pairs))] == \
        ["✓" if c.fits else "✗" for c in q4.cells]
    assert "longest context that fits" in dlg.table.item(0, 2).toolTip()
    dlg.table.selectRow(0)
    assert dlg.open_button.isEnabled() and dlg.download_button.isEnabled()
    with qtbot.waitSignal(win.ctl.modelChanged, timeout=10000):
        dlg.open_button.click()
    assert win.ctl.model_source == f"hf:{QWEN_SPLIT}:Q4_K_M"
    assert win.ctl.model.name == q4.opened.info.name and win.ctl.model.path is None
    from kvgui.sources.resolve import hf_model_args

    assert hf_model_args(win.ctl.model_source) == ["-hf", f"{QWEN_SPLIT}:Q4_K_M"]


def test_download_from_the_dialog_opens_the_file(qtbot, win, hub: FakeHub,  # type: ignore[no-untyped-def]
                                                 hub_files: dict[str, Path]) -> None:
    dlg = _dialog(win)
    dlg.list_repo(TINY)
    qtbot.waitUntil(lambda: dlg.table.rowCount() == 1 and bool(dlg.rows[0].cells), timeout=10000)
    dlg.table.selectRow(0)
    with qtbot.waitSignal(win.ctl.modelChanged, timeout=15000):
        dlg.download_button.click()
    path = Path(win.ctl.model.path)
    assert path.read_bytes() == hub_files["tiny"].read_bytes()
    assert win.ctl.model_source == f"hf:{TINY}:F16"  # still exported as -hf
    assert "Downloaded to" in dlg.progress_label.text() and dlg.progress.value() == 1000

    from kvgui.ui.hub_dialog import show_local_models

    local = show_local_models(win)
    qtbot.waitUntil(lambda: local.table.rowCount() >= 1, timeout=10000)
    names = [local.table.item(i, 0).text() for i in range(local.table.rowCount())]
    assert TINY in names
    row = names.index(TINY)
    assert local.table.item(row, 3).text() == "Hub cache"
    with qtbot.waitSignal(win.ctl.modelChanged, timeout=10000):
        local.open_row(row)
    assert win.ctl.model_source == f"hf:{TINY}:F16"


def test_private_repo_asks_for_the_token(qtbot, win, hub: FakeHub) -> None:  # type: ignore[no-untyped-def]
    from kvgui.testing.hub_repos import PRIVATE, TOKEN

    dlg = _dialog(win)
    dlg.list_repo(PRIVATE)
    qtbot.waitUntil(lambda: "401" in dlg.status.text(), timeout=10000)
    assert "token" in dlg.status.text()
    dlg.token.setText(TOKEN)
    dlg.list_repo(PRIVATE)
    qtbot.waitUntil(lambda: dlg.table.rowCount() == 1 and bool(dlg.rows[0].cells), timeout=10000)
