"""Pieces of the window that need no model: slider maths, quality notes, plan, gui entry."""

from __future__ import annotations

import pytest

from kvgui.commands import gui
from kvgui.core.devices.budget import (
    ALL_GPUS,
    HW_CUSTOM,
    HW_DETECTED,
    HardwareChoice,
    plan_hardware,
)
from kvgui.core.devices.hardware.types import GpuInfo
from kvgui.core.memory.fit import COMMON_CACHE_PAIRS
from kvgui.core.quality.notes import K_CACHE_PPL_6183, quality_note
from kvgui.core.sizes import GiB, format_tokens
from kvgui.ui.context_slider import ctx_of, pages, pos_of
from kvgui.ui.viewmodel import snap


def test_slider_positions_snap_to_llama_cpp_padding() -> None:
    for pos in range(0, pos_of(1 << 20), 137):
        n = ctx_of(pos)
        assert n % 256 == 0 and n >= 512
    for n in (512, 4096, 32768, 131072):
        assert ctx_of(pos_of(n)) == n
    assert snap(1000) == 1024 and snap(100) == 256
    assert format_tokens(32768) == "32K" and format_tokens(1 << 20) == "1M"
    assert format_tokens(28160) == "27.5K" and format_tokens(1766144) == "1.7M"
    assert pages(6670) == "≈ 10 pages"


def test_quality_notes_cite_their_source() -> None:
    for pair in COMMON_CACHE_PAIRS:
        note = quality_note(*pair)
        assert note.text and note.source
    q4 = quality_note("q4_0", "q4_0")
    assert "+1.91%" in q4.text and "6183" in q4.source and q4.url.endswith("/6183")
    q8 = quality_note("q8_0", "q8_0")
    assert "≈ f16" in q8.text and "7412" in q8.source
    # the published ordering: more bits, less perplexity lost
    ppl = [K_CACHE_PPL_6183[t] for t in ("f16", "q8_0", "q5_1", "q5_0", "q4_1", "iq4_nl",
                                         "q4_0")]
    assert ppl == sorted(ppl)
    assert "no published" in quality_note("q5_0", "q8_0").text


def test_plan_reserve_comes_off_the_budget() -> None:
    choice = HardwareChoice(mode=HW_CUSTOM, custom_bytes=8 * GiB, embedding=GiB,
                            mmproj=GiB // 2, margin=GiB)
    plan = plan_hardware(choice, [], None)
    gpu = plan.primary
    assert gpu.total == 8 * GiB and gpu.reserved == int(2.5 * GiB)
    assert plan.devices()[0].budget == int(5.5 * GiB)
    assert plan.devices()[-1].is_gpu is False and plan.devices()[-1].budget is None


def _gpu(name: str, total: int, used: int) -> GpuInfo:
    return GpuInfo("nvidia", 0, name, total, total - used)


def test_detected_gpus_reserve_what_is_in_use_now() -> None:
    gpus = [_gpu("RTX A", 24 * GiB, 2 * GiB), _gpu("RTX A", 24 * GiB, 0)]
    one = plan_hardware(HardwareChoice(mode=HW_DETECTED, detected_index=0, margin=0), gpus,
                        64 * GiB)
    assert one.primary.reserved == 2 * GiB and len(one.views) == 2
    both = plan_hardware(HardwareChoice(mode=HW_DETECTED, detected_index=ALL_GPUS, margin=0),
                         gpus, 64 * GiB)
    assert [v.name for v in both.views] == ["RTX A #0", "RTX A #1", "CPU"]
    assert both.views[-1].total == 64 * GiB
    cpu_only = plan_hardware(HardwareChoice(mode=HW_DETECTED), [], 32 * GiB)
    assert [v.is_gpu for v in cpu_only.views] == [False]
    assert cpu_only.primary.budget == 31 * GiB  # llama.cpp's --fit margin, on the host


@pytest.mark.parametrize(("soname", "package"), [
    ("libxcb-cursor.so.0", "libxcb-cursor0"), ("libxkbcommon-x11.so.0", "libxkbcommon-x11-0"),
    ("libEGL.so.1", "libegl1"), ("libxcb-icccm.so.4", "libxcb-icccm4")])
def test_missing_libraries_name_their_debian_package(soname, package) -> None:
    assert gui.debian_package(soname) == package


def test_qt_plugin_failure_becomes_one_line() -> None:
    stderr = ("qt.qpa.plugin: From 6.5.0, xcb-cursor0 or libxcb-cursor0 is needed to load the "
              "Qt xcb platform plugin.\nqt.qpa.plugin: Could not load the Qt platform plugin "
              "\"xcb\" in \"\" even though it was found.\n")
    line = gui.explain_probe_failure(stderr)
    assert "sudo apt install libxcb-cursor0" in line and "\n" not in line
    stderr2 = ("Cannot load library libqxcb.so: (libxcb-icccm.so.4: cannot open shared object "
               "file: No such file or directory)\n")
    assert "libxcb-icccm4" in gui.explain_probe_failure(stderr2)


def test_gui_entry_rejects_a_missing_model(capsys) -> None:
    assert gui.main(["/no/such/model.gguf"]) == gui.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


def test_gui_entry_without_display_says_so(monkeypatch, capsys) -> None:
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(gui.sys, "platform", "linux")
    assert gui.main([]) == gui.EXIT_NO_GUI
    err = capsys.readouterr().err
    assert err.startswith("kvgui: no display") and err.count("\n") == 1


def test_export_dialog_shows_why_a_shell_cannot_take_the_command() -> None:
    from kvgui.core.config.settings import Settings
    from kvgui.ui.export_dialog import render_export

    text, _ = render_export(Settings(), "C:\\m\\a\nb.gguf", "llama-cli", "cmd", False)
    assert text.startswith("# cannot be written for cmd:") and "line break" in text


def test_the_bars_legend_is_drawn_once_and_follows_the_parts(qtbot) -> None:
    """The legend goes into a pixmap (a slider step repaints only the bars): its hover areas
    sit in the legend strip on every paint, and a part that appears redraws it."""
    from kvgui.ui.memory_bar import LEGEND_H, MemoryBar
    from kvgui.ui.viewmodel import BarRow

    bar = MemoryBar([BarRow("GPU", (("weights", 4 * GiB), ("kv_k", GiB)), 0, 8 * GiB)])
    qtbot.addWidget(bar)
    bar.resize(900, bar.height())
    bar.grab()
    strip = bar.height() - LEGEND_H

    def legend() -> list[str]:
        return [h.tip.split("</b>")[0].removeprefix("<b>") for h in bar._hits
                if h.rect.top() >= strip]

    first = legend()
    assert "Budget" in first and "Weights" in first and len(first) > 3
    pixmap = bar._legend.cacheKey()
    bar.set_rows([BarRow("GPU", (("weights", 5 * GiB), ("kv_k", GiB)), 0, 8 * GiB)])
    bar.grab()
    assert legend() == first and bar._legend.cacheKey() == pixmap  # (the same pixmap)
    bar.set_rows([BarRow("GPU", (("weights", 5 * GiB), ("kv_k", GiB), ("state", GiB)), 0,
                         8 * GiB)])
    bar.grab()
    assert len(legend()) == len(first) + 1 and bar._legend.cacheKey() != pixmap
