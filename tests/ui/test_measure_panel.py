"""The Measure panel: run with progress, results table and plot, cache on reopen, cancel."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("pytestqt")

from kvgui.core.config.settings import Settings
from kvgui.ui.measure_panel import COLUMNS, MeasurePanel

pytestmark = [pytest.mark.llama, pytest.mark.slow]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kvgui.testing.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture
def panel(qtbot, tiny: Path):
    p = MeasurePanel()
    qtbot.addWidget(p)
    p.set_settings(Settings(n_ctx=256))
    p.window_spin.setValue(128)
    p.windows_spin.setValue(3)
    p.set_selected_pairs((("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")))
    yield p
    p.shutdown()


def column(p: MeasurePanel, name: str) -> list[str]:
    col = COLUMNS.index(name)
    return [p.table.item(r, col).text() for r in range(p.table.rowCount())]


def test_run_fills_table_and_plot_and_reopens_from_cache(qtbot, panel: MeasurePanel,
                                                         tiny: Path) -> None:
    assert not panel.run_button.isEnabled()  # no model yet
    panel.set_model(tiny)
    assert "Not measured yet" in panel.status.text() and panel.table.rowCount() == 0
    progress: list[float] = []
    panel.process.progress.connect(lambda f, _m: progress.append(f))
    with qtbot.waitSignal(panel.runFinished, timeout=60_000):
        assert panel.start()
        assert panel.cancel_button.isEnabled() and not panel.run_button.isEnabled()
    assert progress and progress[-1] == 1.0 and panel.progress.value() == 1000
    assert column(panel, "Type") == ["f16", "q8_0", "q4_0"]
    assert column(panel, "ΔPPL")[0] == "reference"
    assert column(panel, "KL mean")[0] == "0.00000"
    assert float(column(panel, "KL mean")[2]) > 0
    assert "189 tokens scored per type (3 windows of 128 tokens" in panel.status.text()
    assert sorted(panel.plot.labels) == ["f16", "q4_0", "q8_0"]
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()

    # a budget marks the most faithful type that fits: q8_0 at 48 KiB, with a star
    panel.set_budget(48 * 1024)
    assert panel.recommended is not None and panel.recommended.label == "q8_0"
    assert column(panel, "Type")[1] == "q8_0 ★"
    assert panel.plot.pick.data.size == 1 and panel.plot.budget_line.isVisible()
    # a cost at the user's context (here: 10x the measured KV) changes the pick
    panel.set_budget(500 * 1024, cost=lambda r: None if r.kv_bytes is None else 10 * r.kv_bytes)
    assert panel.recommended is not None and panel.recommended.label == "q8_0"
    panel.set_budget(300 * 1024, cost=lambda r: None if r.kv_bytes is None else 10 * r.kv_bytes)
    assert panel.recommended is not None and panel.recommended.label == "q4_0"
    assert not panel.plot.budget_line.isVisible()  # another unit than the x axis
    panel.set_budget(None)
    assert panel.recommended is None and "★" not in "".join(column(panel, "Type"))

    # reopening: a new panel on the same model and settings shows the results at once
    other = MeasurePanel()
    qtbot.addWidget(other)
    other.set_settings(Settings(n_ctx=256))
    other.window_spin.setValue(128)
    other.windows_spin.setValue(3)
    other.set_model(tiny)
    assert not other.process.is_running()
    assert column(other, "Type") == ["f16", "q8_0", "q4_0"]
    assert column(other, "PPL") == column(panel, "PPL")
    assert "measured" in other.status.text()
    # other settings: not the same measurement
    other.set_settings(Settings(n_ctx=512))
    assert other.table.rowCount() == 0


def test_cancel_stops_the_worker(qtbot, panel: MeasurePanel, tiny: Path) -> None:
    panel.windows_spin.setValue(0)  # every window of the sample: long enough to cancel
    panel.set_model(tiny)
    windows: list[str] = []
    panel.process.progress.connect(lambda _f, m: windows.append(m))
    assert panel.start()
    qtbot.waitUntil(lambda: any("window" in m and "/" in m for m in windows), timeout=30_000)
    pid = panel.process.pid
    with qtbot.waitSignal(panel.process.cancelled, timeout=5_000):
        panel.cancel()
    assert not panel.process.is_running()
    assert "Cancelled" in panel.status.text()
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()
    import psutil

    assert pid is not None and not psutil.pid_exists(pid)  # killed and reaped


def test_refuses_what_llama_cpp_would(qtbot, panel: MeasurePanel, tiny: Path) -> None:
    panel.set_model(tiny)
    panel.set_settings(Settings(n_ctx=256, flash_attn="off"))
    assert not panel.start()
    assert "needs flash attention" in panel.status.text()
    assert not panel.process.is_running()
