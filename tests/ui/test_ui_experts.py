"""The window's "experts on the CPU" control: shown for MoE models only, bound to
Settings.n_cpu_moe through the controller, and the per-device bars follow the estimate."""

from __future__ import annotations

from kvgui.core.config.settings import ALL_MOE_LAYERS
from kvgui.core.memory.estimate import estimate
from kvgui.ui.viewmodel import rows_from_estimate

MOE = "Qwen3-30B-A3B Q4_K_M"


def _open(qtbot, window, label: str) -> None:  # type: ignore[no-untyped-def]
    with qtbot.waitSignal(window.ctl.modelChanged, timeout=20000):
        window.open_catalog(label)
    window.ctl.flush()


def _gpu_weights(window) -> int:  # type: ignore[no-untyped-def]
    rows = window.ctl.snapshot.rows
    return next(r for r in rows if r.is_gpu).part("weights")


def test_experts_on_the_cpu_moves_weights_off_the_gpu(qtbot, window) -> None:
    _open(qtbot, window, MOE)
    spin = window.cache_controls.experts_cpu
    assert spin.isVisible() and spin.maximum() == 48 and spin.value() == 0
    before = _gpu_weights(window)
    spin.setValue(20)
    window.ctl.flush()
    assert window.ctl.settings.n_cpu_moe == 20
    est = window.ctl.snapshot.estimate
    assert est.settings.n_cpu_moe == 20
    # the bar draws the estimate's figure, which lost the experts of layers 0-19
    assert _gpu_weights(window) == est.devices[0].weights < before
    rows = rows_from_estimate(est, window.ctl.plan.views)
    assert [r.parts for r in rows] == [r.parts for r in window.ctl.snapshot.rows]
    spin.setValue(48)  # every layer: --cpu-moe
    window.ctl.flush()
    assert window.ctl.settings.n_cpu_moe == ALL_MOE_LAYERS
    assert "--cpu-moe" in spin.suffix()
    every = estimate(window.ctl.model, window.ctl.settings, window.ctl.plan.devices())
    assert _gpu_weights(window) == every.devices[0].weights
    window.ctl.update_settings(n_cpu_moe=7)  # from elsewhere (an import): the control follows
    window.ctl.flush()
    assert spin.value() == 7


def test_hidden_for_a_dense_model(qtbot, window) -> None:
    _open(qtbot, window, "Llama-3.1-8B-Instruct Q4_K_M")
    assert not window.cache_controls.experts_cpu.isVisible()


def test_a_models_first_plan_is_worked_out_off_the_gui_thread(qtbot, window,
                                                               monkeypatch) -> None:
    """The first plan of a 48-layer MoE replays llama.cpp's graph for each representative
    placement (seconds): the open thread does it, the GUI thread's first plan reuses them."""
    import threading

    from kvgui.core.memory import reserve

    replays: list[str] = []
    real = reserve.split_graph

    def split_graph(*args, **kwargs):  # type: ignore[no-untyped-def]
        replays.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(reserve, "split_graph", split_graph)
    with qtbot.waitSignal(window.ctl.modelChanged, timeout=20000):
        window.open_catalog(MOE)
    on_open = len(replays)
    assert on_open >= 4 and set(replays) == {"kvgui-open"}
    window.ctl.flush()  # the window's first plan, the bars, the curves
    assert replays[on_open:] == []
    assert window.ctl.planned is not None and window.ctl.planned.for_pair(("f16", "f16"))

