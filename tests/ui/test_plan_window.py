"""The window's planner: auto mode runs the planner's placement (a MoE's experts on the CPU),
the PLAN card lists its choices with their predicted speed and applies one, each table row
carries its speed, several GPUs get the split mode and main GPU controls, and RPC servers are
devices before the GPUs."""

from __future__ import annotations

from kvgui.core.config.settings import ALL_LAYERS, SplitMode
from kvgui.core.devices.budget import HW_CATALOG, HW_CUSTOM, HardwareChoice
from kvgui.core.memory.estimate import estimate
from kvgui.core.sizes import GiB
from kvgui.ui.viewmodel import NGL_AUTO

MOE = "Qwen3-30B-A3B Q4_K_M"


def _open_catalog(qtbot, win, label: str) -> None:
    with qtbot.waitSignal(win.ctl.modelChanged, timeout=30000):
        win.open_catalog(label)
    win.ctl.flush()


def test_auto_mode_runs_the_planners_placement(qtbot, window) -> None:
    c = window.ctl
    _open_catalog(qtbot, window, MOE)
    c.set_hardware_choice(HardwareChoice(mode=HW_CUSTOM, custom_bytes=12 * GiB,
                                         custom_bandwidth=504e9))
    c.update_settings(n_ctx=32768, type_k="q8_0", type_v="q8_0")
    c.set_ngl_mode(NGL_AUTO)
    c.flush()
    s = c.settings
    assert s.n_gpu_layers == ALL_LAYERS and 0 < s.n_cpu_moe < 48  # experts first
    cc = window.cache_controls
    assert cc.experts_cpu.value() == s.n_cpu_moe and not cc.experts_cpu.isEnabled()
    est = c.snapshot.estimate
    assert est is not None and est.fits  # what auto chose is the estimate's "fits"
    assert not estimate(c.model, s.replace(n_cpu_moe=s.n_cpu_moe - 1), c.plan.devices(),
                        c._caches.memo).fits  # and one layer's experts more do not
    view = window.plan_panel.view
    mine = view.choices[0]
    assert mine.current and mine.title.startswith("Auto") and "t/s" in mine.speed
    assert f"experts of {s.n_cpu_moe} layers on the CPU" in mine.summary
    assert "504 GB/s" in mine.detail  # what the speed is made of
    row = next(r for r in window.table.rows if r.current)
    assert row.speed.endswith("t/s") and "Predicted decode speed" in row.speed_tip
    # the longest context is one click away, and applying it changes the settings
    i = next(i for i, ch in enumerate(view.choices) if ch.title == "Longest context")
    window.plan_panel._rows[i][3].click()
    c.flush()
    assert c.settings.n_ctx == view.choices[i].changes["n_ctx"]
    assert window.plan_panel.view.choices[0].current  # auto now runs that choice


def test_several_gpus_get_split_and_main_gpu(qtbot, window) -> None:
    c = window.ctl
    _open_catalog(qtbot, window, "Gemma-3-12B-it Q4_K_M")
    cc = window.cache_controls
    assert cc.split_mode.isHidden()  # one GPU: no split to choose
    c.set_hardware_choice(HardwareChoice(mode=HW_CATALOG, catalog_name="2x RTX 3060"))
    c.flush()
    assert not cc.split_mode.isHidden() and cc.main_gpu.count() == 2
    assert len([r for r in window.bar.rows if r.is_gpu]) == 2  # a bar per GPU
    cc.split_mode.setCurrentIndex(cc.split_mode.findData(SplitMode.NONE))
    cc.split_mode.activated.emit(cc.split_mode.currentIndex())
    cc.main_gpu.setCurrentIndex(1)
    cc.main_gpu.activated.emit(1)
    c.flush()
    assert (c.settings.split_mode, c.settings.main_gpu) == (SplitMode.NONE, 1)
    gpus = [d for d in c.snapshot.estimate.devices if d.is_gpu]
    assert gpus[0].total == 0 and gpus[1].total > 0  # -sm none -mg 1: only the second


def test_rpc_servers_with_typed_memory_are_devices_first(qtbot, window) -> None:
    c = window.ctl
    _open_catalog(qtbot, window, "Llama-3.1-8B-Instruct Q4_K_M")
    panel = window.hw_panel
    panel.rpc.setText("192.0.2.7:50052=6GiB")
    panel.rpc.editingFinished.emit()
    c.flush()
    assert c.plan.gpus[0].name == "RPC0 (192.0.2.7:50052)"
    assert c.settings.rpc_servers == ("192.0.2.7:50052",)  # exported as --rpc
    assert window.bar.rows[0].label == "RPC0 (192.0.2.7:50052)"
    panel.rpc.setText("not an endpoint")
    panel.rpc.editingFinished.emit()
    assert not panel.rpc_error.isHidden() and "HOST:PORT" in panel.rpc_error.text()
    assert c.settings.rpc_servers == ("192.0.2.7:50052",)  # the last good value stays
