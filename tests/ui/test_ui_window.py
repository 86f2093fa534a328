"""The configurator window on real widgets: open, drag, over budget, refusals, presets, drops."""

from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QMessageBox

from kvgui.core.config.settings import FlashAttn
from kvgui.core.devices.budget import HW_CUSTOM, HardwareChoice
from kvgui.core.memory.estimate import estimate
from kvgui.core.memory.fit import COMMON_CACHE_PAIRS, max_context
from kvgui.core.sizes import GiB
from kvgui.ui.context_slider import pos_of


def bar_matches_estimate(win) -> None:
    """Every segment of every device row equals the core estimate for the same inputs."""
    ctl = win.ctl
    est = estimate(ctl.model, ctl.settings, ctl.plan.devices())
    rows = {r.label: r for r in win.bar.rows}
    assert rows, "the bar shows no device"
    for dm in est.devices:
        if dm.name not in rows:
            assert dm.total == 0
            continue
        row = rows[dm.name]
        named = {"weights": dm.weights, "kv_k": dm.kv_k, "kv_v": dm.kv_v, "state": dm.state,
                 "compute": dm.compute, "output": dm.output}
        assert {k: v for k, v in row.parts if v} == {k: v for k, v in named.items() if v}
        assert row.used == dm.total  # no part of the estimate is left out of the bar


def test_open_model_shows_summary(qtbot, open_model, window, model_file: Path) -> None:
    open_model(window, model_file)
    m = window.ctl.model
    assert m.name == "Llama-3.1-8B-Instruct"
    assert window.model_panel.name.text() == m.name
    form = window.model_panel.form
    labels = [form.itemAt(i, form.ItemRole.LabelRole).widget().text() for i in
              range(form.rowCount())]
    values = [form.itemAt(i, form.ItemRole.FieldRole).widget().text() for i in
              range(form.rowCount())]
    summary = dict(zip(labels, values, strict=True))
    assert summary["Architecture"] == "llama"
    assert summary["File type"] == "Q4_K_M"
    assert summary["Heads / KV heads"] == "32 / 8"
    assert summary["Trained context"] == "131,072"
    assert str(model_file) in window.config.recent_files
    bar_matches_estimate(window)


def test_dragging_the_slider_updates_every_bar(qtbot, open_model, window, model_file: Path) -> None:
    open_model(window, model_file)
    slider = window.ctx.slider
    for target in (8192, 24576, 65536, 131072):
        slider.setValue(pos_of(target))  # as a drag does: valueChanged per position
        window.ctl.flush()
        n = window.ctl.settings.n_ctx
        assert n % 256 == 0 and abs(n - target) <= 256
        assert window.ctx.spin.value() == n
        bar_matches_estimate(window)
        # every cache type's row is the estimate for that pair at the same context
        for row in window.table.rows:
            s = window.ctl.settings.replace(type_k=row.type_k, type_v=row.type_v)
            est = estimate(window.ctl.model, s, window.ctl.plan.devices())
            assert row.total == est.devices[0].total  # the main device, as the big bar
            assert row.all_devices == est.total
        assert window.plot.cursor_value == pytest.approx(n)
        assert window.plot.cursor.isVisible()
    # keyboard: one step is one llama.cpp padding unit, Page Up the next power of two
    slider.setFocus()
    before = window.ctl.settings.n_ctx
    qtbot.keyClick(slider, Qt.Key.Key_Left)
    window.ctl.flush()
    assert window.ctl.settings.n_ctx == before - 256
    qtbot.keyClick(slider, Qt.Key.Key_PageUp)
    window.ctl.flush()
    assert window.ctl.settings.n_ctx == 131072
    bar_matches_estimate(window)


def test_cache_table_lists_every_common_pair_with_its_fit(qtbot, open_model,
        window, model_file) -> None:
    open_model(window, model_file)
    rows = window.table.rows
    assert [(r.type_k, r.type_v) for r in rows] == list(COMMON_CACHE_PAIRS)
    budgets = window.ctl.plan.devices()
    for r in rows:
        s = window.ctl.settings.replace(type_k=r.type_k, type_v=r.type_v)
        assert r.max_ctx == max_context(window.ctl.model, s, budgets)
        assert r.note.text and r.note.source
    fits = [r.max_ctx for r in rows]
    assert fits[0] < fits[1] < fits[6]  # f16 < q8_0 < q4_0
    # the plot has one line per pair and the budget line at the GPU's budget
    curves = window.plot.curves
    assert set(curves.ys) == set(COMMON_CACHE_PAIRS)
    assert window.plot.budget_line.value() == pytest.approx(curves.budget / GiB)


def test_over_budget_is_red_and_says_by_how_much(qtbot, open_model, window, model_file) -> None:
    open_model(window, model_file)
    window.ctl.set_hardware_choice(HardwareChoice(mode=HW_CUSTOM, custom_bytes=6 * GiB))
    window.ctl.update_settings(n_ctx=65536)
    window.ctl.flush()
    gpu = window.bar.rows[0]
    assert gpu.budget == 5 * GiB  # 6 GiB less the 1 GiB margin
    assert gpu.over == gpu.used - gpu.budget > 0
    verdict, _detail, state = window.ctl.headline()
    assert state == "over"
    from kvgui.core.sizes import format_bytes

    assert window.headline.text() == f"Over budget by {format_bytes(gpu.over)}" == verdict
    assert "d93025" in window.headline.styleSheet().lower() or \
        "ff5a4f" in window.headline.styleSheet().lower()
    bar_matches_estimate(window)
    # back under budget: green again
    window.ctl.update_settings(n_ctx=1024)
    window.ctl.flush()
    assert window.bar.rows[0].over == 0
    assert window.ctl.headline()[2] == "ok"


def test_refused_combination_is_explained_and_fixable(qtbot, open_model,
        window, model_file) -> None:
    open_model(window, model_file)
    cc = window.cache_controls
    cc.fa.setCurrentIndex(cc.fa.findData(FlashAttn.OFF))
    cc.fa.activated.emit(cc.fa.currentIndex())
    cc.type_v.setCurrentIndex(cc.type_v.findData("q8_0"))
    cc.type_v.activated.emit(cc.type_v.currentIndex())
    window.ctl.flush()
    assert window.ctl.settings.type_v == "q8_0"
    assert window.ctl.settings.flash_attn is FlashAttn.OFF
    assert cc.banner.isVisible()
    assert "needs flash attention" in cc.banner.text()
    assert window.ctl.headline()[2] == "error"
    assert window.bar.error
    # the V list marks every quantized type with the reason; f16 stays clean
    tip = cc.type_v.itemData(cc.type_v.findData("q4_0"), Qt.ItemDataRole.ToolTipRole)
    assert tip.startswith("refused:") and "flash attention" in tip
    assert "⚠" not in cc.type_v.itemText(cc.type_v.findData("f16"))
    qtbot.mouseClick(cc.fix, Qt.MouseButton.LeftButton)
    window.ctl.flush()
    assert window.ctl.settings.flash_attn is FlashAttn.AUTO
    assert not cc.banner.isVisible()
    bar_matches_estimate(window)


@pytest.mark.parametrize(("key", "type_k", "n_ctx"), [
    ("chat", "f16", 16384), ("docs", "q8_0", 32768), ("rag", "q4_0", None)])
def test_presets_set_the_controls(qtbot, open_model,
        window, model_file, key, type_k, n_ctx) -> None:
    open_model(window, model_file)
    window.ctl.apply_preset(key)
    window.ctl.flush()
    s = window.ctl.settings
    assert (s.type_k, s.type_v) == (type_k, type_k)
    if n_ctx is None:  # as long as fits (at most the trained context)
        n_ctx = min(max_context(window.ctl.model, s, window.ctl.plan.devices()), 131072)
    assert s.n_ctx == n_ctx
    assert window.ctx.spin.value() == n_ctx
    assert window.cache_controls.type_k.currentData() == type_k
    assert [r.current for r in window.table.rows].count(True) == 1


def test_clicking_a_cache_row_chooses_that_pair(qtbot, open_model, window, model_file) -> None:
    open_model(window, model_file)
    from kvgui.ui.cache_table import HEAD_H, ROW_H

    y = HEAD_H + 6 * ROW_H + ROW_H // 2  # the q4_0 row
    qtbot.mouseClick(window.table, Qt.MouseButton.LeftButton, pos=QPoint(40, y))
    window.ctl.flush()
    assert (window.ctl.settings.type_k, window.ctl.settings.type_v) == ("q4_0", "q4_0")


def test_dropping_a_gguf_opens_it(qtbot, window, model_file) -> None:
    md = QMimeData()
    md.setUrls([QUrl.fromLocalFile(str(model_file))])
    ev = QDropEvent(QPointF(200, 200), Qt.DropAction.CopyAction, md,
                    Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.ctl.modelChanged, timeout=20000):
        window.dropEvent(ev)
    assert ev.isAccepted()
    assert window.ctl.model_source == str(model_file)
    # anything but a .gguf is refused at the door
    md2 = QMimeData()
    md2.setUrls([QUrl.fromLocalFile("/tmp/notes.txt")])
    assert window._dropped_path(QDropEvent(QPointF(1, 1), Qt.DropAction.CopyAction, md2,
                                           Qt.MouseButton.LeftButton,
                                           Qt.KeyboardModifier.NoModifier)) is None
    # a model's link dragged from the Hub's page opens that model (header by range requests)
    md3 = QMimeData()
    link = "https://huggingface.co/org/Model-GGUF/blob/main/Model-Q4_K_M.gguf"
    md3.setUrls([QUrl(link)])
    assert window._dropped_path(QDropEvent(QPointF(1, 1), Qt.DropAction.CopyAction, md3,
                                           Qt.MouseButton.LeftButton,
                                           Qt.KeyboardModifier.NoModifier)) == link
    md3.setUrls([QUrl("https://example.com/page.html")])
    assert window._dropped_path(QDropEvent(QPointF(1, 1), Qt.DropAction.CopyAction, md3,
                                           Qt.MouseButton.LeftButton,
                                           Qt.KeyboardModifier.NoModifier)) is None


def test_a_bad_file_shows_an_error_and_the_window_lives_on(qtbot, open_model, window, model_file,
                                                           tmp_path) -> None:
    open_model(window, model_file)
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    with qtbot.waitSignal(window.ctl.loadFailed, timeout=20000) as blocker:
        window.open_path(str(bad))
    reason = blocker.args[1]
    assert reason and "\n" not in reason
    boxes = [b for b in window.findChildren(QMessageBox) if b.objectName() == "loadError"]
    assert boxes and boxes[0].informativeText() == reason
    boxes[0].close()
    assert "Could not open broken.gguf" in window.statusBar().currentMessage()
    # the previous model is still there and the window still computes
    assert window.ctl.model is not None and window.ctl.model_source == str(model_file)
    window.ctl.update_settings(n_ctx=12288)
    window.ctl.flush()
    bar_matches_estimate(window)


def test_catalog_model_opens_by_default(qtbot, make_config) -> None:
    from kvgui.ui.main_window import MainWindow

    win = MainWindow(make_config(), detect_hardware=False, persist=False)
    qtbot.addWidget(win)
    with qtbot.waitSignal(win.ctl.modelChanged, timeout=20000):
        win.open_initial(None)
    win.ctl.flush()
    assert win.ctl.model_source.startswith("catalog:")
    assert win.ctl.model is not None
    assert not win.act_verify.isEnabled()  # a catalog model has no file to dry-run
    bar_matches_estimate(win)


def test_auto_fit_layers_fits_the_budget(qtbot, open_model, window, model_file) -> None:
    from kvgui.core.memory.fit import max_gpu_layers
    from kvgui.ui.viewmodel import NGL_AUTO

    open_model(window, model_file)
    window.ctl.set_hardware_choice(HardwareChoice(mode=HW_CUSTOM, custom_bytes=5 * GiB))
    window.ctl.update_settings(n_ctx=32768)
    window.ctl.set_ngl_mode(NGL_AUTO)
    window.ctl.flush()
    s = window.ctl.settings
    expected = max_gpu_layers(window.ctl.model, s.replace(n_gpu_layers=-1),
                              window.ctl.plan.devices())
    assert s.n_gpu_layers == expected and 0 < expected < 33
    assert window.bar.rows[0].over == 0
    bar_matches_estimate(window)


def test_export_and_import_round_trip(qtbot, open_model, window, model_file) -> None:
    from kvgui.core.commandline.parse import parse_command
    from kvgui.ui.export_dialog import ExportDialog

    open_model(window, model_file)
    window.ctl.update_settings(n_ctx=20480, type_k="q8_0", type_v="q4_0")
    window.ctl.flush()
    dlg = ExportDialog(window.ctl.settings, str(model_file), True, window)
    qtbot.addWidget(dlg)
    text = dlg.text.toPlainText()
    assert "-c 20480" in text and "-ctk q8_0" in text and "-ctv q4_0" in text
    dlg.copy()
    from PySide6.QtGui import QGuiApplication

    assert QGuiApplication.clipboard().text() == text
    # import it into a window with other settings: the controls take its values
    window.ctl.update_settings(n_ctx=4096, type_k="f16", type_v="f16")
    window.apply_import(parse_command(text + " --some-future-flag 3"))
    window.ctl.flush()
    s = window.ctl.settings
    assert (s.n_ctx, s.type_k, s.type_v) == (20480, "q8_0", "q4_0")
    assert "--some-future-flag" in window.statusBar().currentMessage()


def test_detected_gpu_with_live_free_memory(qtbot, open_model, window, model_file) -> None:
    from kvgui.core.devices.budget import HW_DETECTED
    from kvgui.core.devices.hardware.types import GpuInfo, HardwareReport, SystemMemory

    # a report as kvgui.core.devices.hardware.detect gives it (the NVML boundary is not crossed)
    gpu = GpuInfo("nvidia", 0, "NVIDIA GeForce RTX 4060", total=8 * GiB, free=7 * GiB)
    report = HardwareReport(gpus=(gpu,), system=SystemMemory(32 * GiB, 20 * GiB))
    window.ctl.set_hardware_choice(HardwareChoice(mode=HW_DETECTED, detected_index=0))
    window.set_hardware_report(report)
    open_model(window, model_file)
    gpu_row = window.bar.rows[0]
    assert gpu_row.label == "NVIDIA GeForce RTX 4060"
    assert gpu_row.reserve == 1 * GiB + 1 * GiB  # in use now + the safety margin
    assert window.bar.rows[-1].capacity == 20 * GiB  # host RAM available
    assert "in use by other programs now" in window.hw_panel.live.text()
    window._poll.stop()
    # the once-a-second poll: another program takes 2 GiB more
    window.ctl.update_free([5 * GiB])
    window.ctl.flush()
    assert window.bar.rows[0].reserve == 3 * GiB + 1 * GiB
    bar_matches_estimate(window)


def test_beyond_the_trained_context_warns(qtbot, open_model, window, model_file) -> None:
    open_model(window, model_file)
    window.ctx.spin.setValue(196608)
    window.ctl.flush()
    assert window.ctl.settings.n_ctx == 196608
    assert window.ctx.warn_label.isVisible()
    assert "131,072" in window.ctx.warn_label.text()
    window.ctx.spin.setValue(8192)
    window.ctl.flush()
    assert not window.ctx.warn_label.isVisible()


def test_refusal_marks_only_the_half_that_causes_it(qtbot, open_model, window,
                                                    model_file) -> None:
    open_model(window, model_file)
    window.ctl.update_settings(flash_attn=FlashAttn.OFF, type_v="q4_0")
    window.ctl.flush()
    cc = window.cache_controls
    k_marked = [cc.type_k.itemData(i) for i in range(cc.type_k.count())
                if "⚠" in cc.type_k.itemText(i)]
    v_marked = [cc.type_v.itemData(i) for i in range(cc.type_v.count())
                if "⚠" in cc.type_v.itemText(i)]
    assert k_marked == []  # without flash attention a quantized K is fine, V is not
    assert set(v_marked) == {"q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"}


def test_measure_opens_for_the_current_model_and_budget(qtbot, open_model, window,
                                                        model_file: Path) -> None:
    window.act_measure.trigger()  # the catalog default has no file: only a status message
    assert getattr(window, "_measure_window", None) is None
    open_model(window, model_file)
    window.act_measure.trigger()
    win = window._measure_window
    assert win.isVisible()
    panel = win.centralWidget()
    assert panel.model_path == str(model_file)
    assert panel.settings == window.ctl.settings
    est = window.ctl.snapshot.estimate
    gpu = est.devices[0]
    assert panel._budget == gpu.budget - (gpu.total - gpu.kv)
    window.close()  # closing the main window ends any measuring worker
    assert not panel.process.is_running() and panel.process.pid is None


def test_preset_save_and_load_round_trip(qtbot, open_model, window, model_file: Path,
                                         tmp_path: Path) -> None:
    open_model(window, model_file)
    window.ctl.update_settings(n_ctx=24576, type_k="q8_0", type_v="q4_0", n_ubatch=256,
                               swa_full=True)
    window.ctl.flush()
    saved = window.ctl.settings
    path = tmp_path / "preset.json"
    window.save_preset_to(str(path))
    assert path.is_file()
    window.ctl.update_settings(n_ctx=4096, type_k="f16", type_v="f16")
    window.ctl.flush()
    assert window.ctl.settings != saved
    assert window.load_preset_from(str(path))
    window.ctl.flush()
    assert window.ctl.settings == saved
    bar_matches_estimate(window)
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "kvgui-preset", "version": 1, "settings": {"n_ctx": "big"}}')
    assert not window.load_preset_from(str(bad))
    assert "Not loaded" in window.statusBar().currentMessage()
    assert window.ctl.settings == saved  # nothing lost
