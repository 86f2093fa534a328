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


def wait_for_end(qtbot, panel: MeasurePanel, timeout_ms: int = 60_000) -> object:
    """Wait until the run ends however it ends, and fail with the panel's own words (status,
    last progress) unless it finished: a failed run is then told apart from a slow one."""
    ends: list[tuple[str, object]] = []
    panel.runFinished.connect(lambda run: ends.append(("finished", run)))
    panel.process.failed.connect(lambda msg, _partial: ends.append(("failed", msg)))
    panel.process.cancelled.connect(lambda _partial: ends.append(("cancelled", None)))
    try:
        qtbot.waitUntil(lambda: bool(ends), timeout=timeout_ms)
    except AssertionError:
        child = panel.process.child
        pytest.fail(f"no end after {timeout_ms} ms; status: {panel.status.text()!r}; worker "
                    f"running: {child.running}; tail: {child.tail.lines()}")
    kind, what = ends[0]
    assert kind == "finished", f"the run {kind}: {what}; status: {panel.status.text()!r}"
    return what


def column(p: MeasurePanel, name: str) -> list[str]:
    col = COLUMNS.index(name)
    return [p.table.item(r, col).text() for r in range(p.table.rowCount())]


def test_run_fills_table_and_plot_and_reopens_from_cache(qtbot, panel: MeasurePanel,
                                                         tiny: Path) -> None:
    assert not panel.run_button.isEnabled()  # no model yet
    assert "No model" in panel.model_label.text()
    panel.set_model(tiny)
    assert panel.model_label.text() == f"Model: tiny.gguf — {tiny}"
    assert "context 256" in panel.settings_label.text()
    assert "Not measured yet" in panel.status.text() and panel.table.rowCount() == 0
    progress: list[tuple[float, str]] = []
    panel.process.progress.connect(lambda f, m: progress.append((f, m)))
    assert panel.start()
    assert panel.cancel_button.isEnabled() and not panel.run_button.isEnabled()
    wait_for_end(qtbot, panel)
    assert progress and progress[-1][0] == 1.0 and panel.progress.value() == 1000
    # per-phase progress with an ETA, naming the type
    assert any("q4_0 (type 3 of 3): speed" in m for _f, m in progress)
    assert any("left" in m for _f, m in progress)
    assert column(panel, "Type") == ["f16", "q8_0", "q4_0"]
    assert column(panel, "ΔPPL")[0] == "reference"
    assert column(panel, "KL mean")[0] == "0.00000"
    assert float(column(panel, "KL mean")[2]) > 0
    assert column(panel, "Within")[0] == "✓"
    # speed: the median and the slowest–fastest of the repeats
    assert all("(" in c and "–" in c for c in column(panel, "PP t/s"))
    assert "189 tokens scored per type (3 windows of 128 tokens" in panel.status.text()
    assert "repeats after a warm-up" in panel.status.text()
    assert sorted(panel.plot.labels) == ["f16", "q4_0", "q8_0"]
    assert sorted(panel.profile_plot.lines) == ["q4_0", "q8_0"]  # KL by position
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()

    # the star is the host's rule (the controller's), drawn here
    panel.set_recommender(lambda run: ("q8_0", "q8_0"))
    assert panel.recommended is not None and panel.recommended.label == "q8_0"
    assert column(panel, "Type")[1] == "q8_0 ★"
    assert panel.plot.pick.data.size == 1
    panel.set_budget(48 * 1024)
    assert panel.plot.budget_line.isVisible()
    panel.set_recommender(None)
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


def test_a_run_keeps_its_model_when_another_is_chosen(qtbot, panel: MeasurePanel, tiny: Path,
                                                      tmp_path: Path) -> None:
    import shutil

    other = tmp_path / "other.gguf"
    shutil.copy(tiny, other)
    panel.set_model(tiny)
    assert panel.start()
    panel.set_model(other)  # the main window switched models meanwhile
    assert "Measuring tiny.gguf" in panel.model_label.text()
    run = wait_for_end(qtbot, panel)
    assert run.model.path == str(tiny.resolve())  # measured what it started with
    assert panel.table.rowCount() == 0  # the other model is not measured: nothing mixed in
    assert "Finished measuring tiny.gguf" in panel.status.text()
    assert panel.model_label.text() == f"Model: other.gguf — {other}"
    panel.set_model(tiny)  # and the run is in tiny's cache
    assert column(panel, "Type") == ["f16", "q8_0", "q4_0"]


def test_cancel_stops_the_worker(qtbot, panel: MeasurePanel, tiny: Path) -> None:
    panel.windows_spin.setValue(0)  # every window of the sample: long enough to cancel
    panel.set_model(tiny)
    windows: list[str] = []
    panel.process.progress.connect(lambda _f, m: windows.append(m))
    assert panel.start()
    qtbot.waitUntil(lambda: any("quality" in m for m in windows), timeout=30_000)
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


def test_a_worker_that_lingers_after_its_last_word_is_ended(qtbot, monkeypatch,
                                                             tiny: Path) -> None:
    """A worker that has said ``failed`` (or ``done``) but does not exit (its teardown stalls)
    is ended after the grace, and the run is reported, not waited for without end."""
    import sys
    import time

    from kvgui.runtime import qt_measure
    from kvgui.runtime.measure import MeasureRequest

    script = ("import sys, time; sys.stdin.readline(); "
              "print('{\"type\": \"failed\", \"message\": \"no such text\"}', flush=True); "
              "time.sleep(60)")
    monkeypatch.setattr(qt_measure, "worker_command", lambda: [sys.executable, "-c", script])
    proc = qt_measure.MeasureProcess()
    failures: list[str] = []
    proc.failed.connect(lambda msg, _partial: failures.append(msg))
    t0 = time.monotonic()
    proc.start(MeasureRequest(model=str(tiny), settings=Settings(n_ctx=256)))
    qtbot.waitUntil(lambda: bool(failures), timeout=10_000)
    assert failures == ["no such text"]  # the worker's own reason, not "killed by SIGKILL"
    assert time.monotonic() - t0 < qt_measure.EXIT_GRACE_MS / 1000 + 3
    assert not proc.child.running and not proc.is_running()
    proc.shutdown()
