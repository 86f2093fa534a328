"""The window says what the core and the CLI say: the same parts, plan, rules and limits."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from PySide6.QtCore import QRectF
from PySide6.QtGui import QImage, QPainter

from kvgui.core.config.appconfig import AppConfig, load_config
from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.devices.budget import (
    HW_CATALOG,
    HW_CUSTOM,
    HW_DETECTED,
    HardwareChoice,
    add_budget_args,
    plan_from_args,
)
from kvgui.core.devices.hardware.types import HardwareReport, SystemMemory
from kvgui.core.memory.estimate import Verdict, estimate
from kvgui.core.memory.fit import max_context
from kvgui.core.model.catalog import catalog_model, load_catalog
from kvgui.core.sizes import GiB
from kvgui.ui import theme
from kvgui.ui.barpaint import paint_row
from kvgui.ui.viewmodel import NGL_AUTO, rows_from_estimate

# what the bar may draw besides the estimate's parts
NOT_PARTS = {"reserve", "over", "headroom", ""}


def drawn_bytes(row) -> int:  # type: ignore[no-untyped-def]
    """Paint ``row`` as the window does and add up the segments actually drawn."""
    img = QImage(1200, 40, QImage.Format.Format_ARGB32)
    p = QPainter(img)
    hits = paint_row(p, QRectF(0, 0, 1200, 24), row, theme.current())
    p.end()
    return sum(h.nbytes for h in hits if h.key not in NOT_PARTS)


SETTINGS = (Settings(), Settings(n_ctx=32768, type_k="q8_0", type_v="q8_0", n_parallel=4),
            Settings(n_ctx=8192, n_gpu_layers=5), Settings(n_ctx=4096, kv_offload=False))


@pytest.mark.parametrize("label", [e.label for e in load_catalog()])
def test_every_catalog_model_is_drawn_to_its_estimated_total(qapp, label: str) -> None:
    """Recurrent, hybrid, MoE, MLA, SWA: no part of the estimate goes undrawn."""
    model = catalog_model(label)
    from kvgui.core.devices.budget import plan_hardware

    plan = plan_hardware(HardwareChoice(mode=HW_CUSTOM, custom_bytes=12 * GiB), [], 64 * GiB)
    for s in SETTINGS:
        est = estimate(model, s, plan.devices())
        rows = rows_from_estimate(est, plan.views)
        for dm in est.devices:
            row = next((r for r in rows if r.label == dm.name), None)
            if row is None:
                assert dm.total == 0
                continue
            assert drawn_bytes(row) == dm.total, (label, s, dm.name)


def test_a_recurrent_model_says_what_the_estimate_says(qtbot, window, sparse_model) -> None:
    """Mamba-Codestral at -np 4 on a 4.5 GiB card: its recurrent state is on the bar, and the
    window's verdict is the estimate's (it did not fit, and the window said it did)."""
    path = sparse_model("Mamba-Codestral-7B-v0.1 Q4_K_M")
    window.ctl.set_hardware_choice(HardwareChoice(mode=HW_CUSTOM,
                                                  custom_bytes=int(5.5 * GiB)))
    with qtbot.waitSignal(window.ctl.modelChanged, timeout=20000):
        window.open_path(str(path))
    window.ctl.update_settings(n_parallel=4)
    window.ctl.flush()
    est = estimate(window.ctl.model, window.ctl.settings, window.ctl.plan.devices())
    assert est.state > 0
    gpu = window.bar.rows[0]
    assert gpu.part("state") == est.devices[0].state and gpu.used == est.devices[0].total
    assert est.verdict is Verdict.OVER
    assert window.ctl.headline()[2] == "over"
    assert window.headline.text().startswith("Over budget")


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_budget_args(parser)
    return parser.parse_args(list(argv))


def test_the_window_and_the_cli_plan_the_same_budgets(qtbot, window) -> None:
    report = HardwareReport(system=SystemMemory(64 * GiB, 48 * GiB))
    window.set_hardware_report(report)
    window._poll.stop()
    window.ctl.set_hardware_choice(HardwareChoice(mode=HW_CATALOG, catalog_name="M2 Max 64GB"))
    cli = plan_from_args(_args("--gpu-model", "M2 Max 64GB"), report)
    assert window.ctl.plan.devices() == cli.devices()
    assert cli.gpus[0].total < 64 * GiB  # Metal's working-set share, in both
    window.ctl.set_hardware_choice(HardwareChoice(mode=HW_DETECTED))  # no GPU: CPU only
    cli = plan_from_args(_args("--gpu", "none"), report)
    assert window.ctl.plan.devices() == cli.devices()
    assert cli.devices()[0].budget == 47 * GiB  # available less llama.cpp's --fit margin


def test_refused_pairs_are_refused_everywhere(qtbot, open_model, window, model_file) -> None:
    """FA off: every quantized-V row is refused — no total, no "fits up to", no curve."""
    open_model(window, model_file)
    window.ctl.update_settings(flash_attn=FlashAttn.OFF)
    window.ctl.flush()
    rows = {(r.type_k, r.type_v): r for r in window.table.rows}
    for (k, v), r in rows.items():
        if v in ("f16", "f32", "bf16"):
            assert not r.refused and r.limit.raw
        else:
            assert r.refused and r.bar is None and "flash attention" in r.error
            assert (k, v) not in window.plot.curves.ys
            assert (k, v) in window.plot.curves.refused
    # choosing a refused row takes the fix with it
    window.ctl.choose_pair("q4_0", "q4_0")
    window.ctl.flush()
    s = window.ctl.settings
    assert (s.type_k, s.type_v, s.flash_attn) == ("q4_0", "q4_0", FlashAttn.AUTO)


def test_fits_up_to_is_capped_at_the_trained_context(qtbot, open_model, window,
                                                     model_file) -> None:
    open_model(window, model_file)
    window.ctl.set_hardware_choice(HardwareChoice(mode=HW_CUSTOM, custom_bytes=80 * GiB))
    window.ctl.flush()
    trained = window.ctl.model.n_ctx_train
    q4 = next(r for r in window.table.rows if (r.type_k, r.type_v) == ("q4_0", "q4_0"))
    assert q4.limit.raw > trained and q4.limit.shown == trained
    assert q4.limit.text == "≥ 128K (trained)" and f"{q4.limit.raw:,}" in q4.limit.tooltip
    assert window.plot.curves.xs[-1] <= 2 * trained  # the plot stays around the trained context


def test_auto_fit_limits_are_under_the_chosen_placement(qtbot, open_model, window,
                                                        model_file) -> None:
    """Under auto the planner places the selected pair; every row's "fits up to" is then
    the longest context under that placement (issue 12: the table follows the chosen
    placement), the same figure max_context gives for it."""
    open_model(window, model_file)
    c = window.ctl
    c.set_hardware_choice(HardwareChoice(mode=HW_CUSTOM, custom_bytes=6 * GiB))
    c.set_ngl_mode(NGL_AUTO)
    for pair in (("f16", "f16"), ("q4_0", "q4_0")):
        c.choose_pair(*pair)
        c.flush()
        for r in window.table.rows:
            s = c.settings.replace(type_k=r.type_k, type_v=r.type_v)
            assert r.limit.raw == max_context(c.model, s, c.plan.devices(),
                                              memo=c._caches.memo), (pair, r.label)


def test_imported_flags_survive_to_the_export(qtbot, open_model, window, model_file) -> None:
    from kvgui.core.commandline.export import export_notes, llama_cli_args, llama_server_args
    from kvgui.core.commandline.parse import parse_command

    open_model(window, model_file)
    window.apply_import(parse_command(
        f"llama-server -m {model_file} -c 8192 --jinja -t 8 --host 0.0.0.0 --port 8080"))
    window.ctl.flush()
    s = window.ctl.settings
    assert s.n_threads == 8  # -t is a setting kvgui models now; the rest travel as given
    server = llama_server_args(s, str(model_file))
    assert server[-5:] == ["--jinja", "--host", "0.0.0.0", "--port", "8080"]
    assert server[server.index("-t") + 1] == "8"
    cli = llama_cli_args(s, str(model_file))
    assert "--jinja" in cli and "-t" in cli and "--host" not in cli
    assert any("--host 0.0.0.0 --port 8080" in n for n in export_notes(s, "llama-cli"))


def test_controls_follow_the_settings(qtbot, open_model, window, model_file, sparse_model) -> None:
    from kvgui.core.commandline.parse import parse_command

    open_model(window, model_file)
    window.apply_import(parse_command("llama-cli -ngl 30"))
    window.ctl.flush()
    assert window.cache_controls.ngl.value() == 30 and window.ctl.settings.n_gpu_layers == 30
    # a model with fewer layers (28 + output): 30 of them is every layer, and says so
    small = sparse_model("Llama-3.2-3B-Instruct Q4_K_M")
    with qtbot.waitSignal(window.ctl.modelChanged, timeout=20000):
        window.open_path(str(small))
    window.ctl.flush()
    assert window.ctl.settings.n_gpu_layers == -1
    assert window.cache_controls.ngl_mode.currentData() == "all"


def test_a_slider_step_is_not_echoed_to_the_slider(qtbot, open_model, window,
                                                   model_file) -> None:
    open_model(window, model_file)
    calls: list[int] = []
    real = window.ctx.set_ctx
    window.ctx.set_ctx = lambda n: (calls.append(n), real(n))  # type: ignore[method-assign]
    from kvgui.ui.context_slider import pos_of

    for target in (8192, 16384, 32768):
        window.ctx.slider.setValue(pos_of(target))
        window.ctl.flush()
    assert calls == []
    assert abs(window.ctl.settings.n_ctx - 32768) <= 256


def test_every_control_survives_a_restart(qtbot, tmp_path: Path, model_file) -> None:
    from kvgui.ui.main_window import MainWindow

    win = MainWindow(AppConfig(hardware=HardwareChoice(mode=HW_CUSTOM, custom_bytes=8 * GiB)),
                     detect_hardware=False, persist=True)
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.ctl.modelChanged, timeout=20000):
        win.open_path(str(model_file))
    win.ctl.update_settings(type_k="q8_0", type_v="q4_0", n_ctx=24576, n_ubatch=256,
                            flash_attn=FlashAttn.ON, swa_full=True)
    win.ctl.set_ngl_mode(NGL_AUTO)
    win.ctl.flush()
    win.close()
    config = load_config().config
    again = MainWindow(config, detect_hardware=False, persist=False)
    qtbot.addWidget(again)
    again.ctl.flush()
    s = again.ctl.settings
    assert (s.type_k, s.type_v, s.n_ctx, s.n_ubatch, s.flash_attn, s.swa_full) == (
        "q8_0", "q4_0", 24576, 256, FlashAttn.ON, True)
    cc = again.cache_controls
    assert (cc.type_k.currentData(), cc.type_v.currentData()) == ("q8_0", "q4_0")
    assert cc.ngl_mode.currentData() == "auto" and again.ctx.spin.value() == 24576


def test_verify_names_the_layout_it_checked(qtbot, open_model, window, model_file) -> None:
    open_model(window, model_file)
    window.ctl.set_hardware_choice(HardwareChoice(mode=HW_CATALOG, catalog_name="RTX 4060"))
    window.ctl.flush()
    with qtbot.waitSignal(window._verify.done, timeout=60000):
        window.verify()
    text = window.verify_panel.layout_label.text()
    assert "RTX 4060" in text and "CPU" in text
    assert max_context(window.ctl.model, window.ctl.settings, window.ctl.plan.devices()) > 0


def test_a_build_whose_kernels_crash_is_fixed_by_the_fix_button(qtbot, open_model, window,
                                                               model_file) -> None:
    """The host's refusal (this build crashes in its AMX kernels) comes with the window's fix:
    the estimate's findings are the controller's, not only the model's rules."""
    from dataclasses import replace

    from kvgui.core.devices.hardware import cpu
    from kvgui.ui.controller import HardwareState

    crashing = replace(cpu.preset("amx"), kernels_crash="this build crashes in its AMX kernels")
    window.ctl.set_hardware_state(HardwareState(ram_available=64 * GiB, host_cpu=crashing))
    window.ctl.set_hardware_choice(HardwareChoice(mode=HW_DETECTED))
    open_model(window, model_file)
    assert window.ctl.snapshot.estimate.refused
    assert window.cache_controls.fix.isVisible()
    from PySide6.QtCore import Qt

    qtbot.mouseClick(window.cache_controls.fix, Qt.MouseButton.LeftButton)
    window.ctl.flush()
    assert window.ctl.settings.repack is False
    assert not window.ctl.snapshot.estimate.refused
    assert window.cache_controls.repack.isChecked() is False
