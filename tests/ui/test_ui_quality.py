"""Measured quality drives the window: the table's notes and tooltips, the advice line, the
presets, and the quality threshold the user sets; unmeasured models say so."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgui.core.config.settings import Settings
from kvgui.core.quality.advice import KL, TOP1, QualityThreshold
from kvgui.core.quality.results import MeasureRun, save_cached

pytest.importorskip("llama_cpp")
pytestmark = [pytest.mark.llama, pytest.mark.slow]

PAIRS = (("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "q4_0"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kvgui.testing.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_run(tiny: Path) -> MeasureRun:
    """A real measurement of the tiny model on the sample (the window's default text)."""
    from kvgui.runtime.measure import MeasureRequest, run_measure, sample_text

    req = MeasureRequest(model=str(tiny), settings=Settings(n_ctx=256, n_threads=2),
                         pairs=PAIRS, text=sample_text(), window=128, max_windows=3,
                         speed_repeats=1)
    return run_measure(req)


def rows(win) -> dict[tuple[str, str], object]:
    return {(r.type_k, r.type_v): r for r in win.table.rows}


def test_measured_figures_replace_the_published_ones(qtbot, window, open_model, tiny,
                                                     tiny_run: MeasureRun) -> None:
    save_cached(tiny_run)  # as the Measure window (or kvgui measure) leaves it
    window.ctl.set_quality_threshold(QualityThreshold(KL, 0.001))
    open_model(window, tiny)
    assert window.ctl.measured is not None and window.ctl.measured.model == tiny_run.model
    by_pair = rows(window)
    q8, q4, mix = by_pair[("q8_0", "q8_0")], by_pair[("q4_0", "q4_0")], \
        by_pair[("q8_0", "q4_0")]
    tokens = tiny_run.evaluation.tokens
    for r in (q8, q4, mix):
        assert r.note.measured and r.note.text.startswith(f"measured on this model ({tokens} "
                                                           "tokens)")
        assert "kvgui measure on" in r.note.source  # the tooltip: how it was measured
    assert q8.note.within is True and "within KL ≤ 0.001" in q8.note.text
    assert q4.note.within is False and "outside KL ≤ 0.001" in q4.note.text
    # a type nobody measured here keeps the published figure, labelled with its model
    q5 = by_pair[("q5_0", "q5_0")]
    assert not q5.note.measured and q5.note.text.startswith("published, LLaMA-2-7B")
    assert "6183" in q5.note.url

    advice = window.ctl.snapshot.quality
    assert advice.measured and advice.pick == ("q8_0", "q8_0")
    assert "cheapest cache within KL ≤ 0.001 is q8_0" in window.quality_bar.advice.text()
    assert "q4_0" in advice.text  # named as outside

    # Heavy RAG: the cheapest measured pair within the threshold, not the published q4_0
    window.ctl.apply_preset("rag")
    window.ctl.flush()
    s = window.ctl.settings
    assert (s.type_k, s.type_v) == ("q8_0", "q8_0")

    # a looser threshold, set where the user sees it: the pick follows
    window.quality_bar.metric_box.setCurrentIndex(0)
    window.quality_bar.value_box.setValue(0.05)
    window.ctl.flush()
    assert window.ctl.threshold == QualityThreshold(KL, 0.05)
    assert window.config.quality_threshold == QualityThreshold(KL, 0.05)
    assert window.ctl.snapshot.quality.pick == ("q4_0", "q4_0")
    window.ctl.apply_preset("rag")
    window.ctl.flush()
    assert (window.ctl.settings.type_k, window.ctl.settings.type_v) == ("q4_0", "q4_0")

    # top-1 as the criterion: 99% keeps only q8_0 of the quantized ones
    window.ctl.set_quality_threshold(QualityThreshold(TOP1, 0.99))
    window.ctl.flush()
    assert window.ctl.snapshot.quality.pick in (("q8_0", "q8_0"), ("f16", "f16"))


def test_a_run_of_another_model_is_refused(qtbot, window, open_model, model_file, tiny,
                                           tiny_run: MeasureRun) -> None:
    open_model(window, model_file)  # a sparse Llama-3.1-8B: never measured
    messages: list[str] = []
    window.ctl.message.connect(messages.append)
    assert window.ctl.set_measured(tiny_run) is False
    assert window.ctl.measured is None and "not the model open here" in messages[-1]
    advice = window.ctl.snapshot.quality
    assert not advice.measured and advice.text.startswith("Not measured on this model")
    # the presets say so too, and keep the published default
    window.ctl.apply_preset("rag")
    window.ctl.flush()
    assert (window.ctl.settings.type_k, window.ctl.settings.type_v) == ("q4_0", "q4_0")
    assert "not measured on this model" in messages[-1]
    notes = {r.label: r.note for r in window.table.rows}
    assert notes["q4_0"].text.startswith("published, LLaMA-2-7B")


def test_published_figures_of_the_same_architecture_come_first() -> None:
    from kvgui.core.quality.notes import quality_note

    g3 = quality_note("q4_0", "q4_0", "gemma3")
    assert g3.text == "published, Gemma-3-4B: +1.22% PPL" and g3.url.endswith("/21551")
    g4 = quality_note("q4_0", "q4_0", "gemma4")
    assert "KL 1.088" in g4.text and "top-1 68.0%" in g4.text and "localbench" in g4.url
    assert quality_note("q4_0", "q4_0", "llama").text.startswith("published, Gemma") is False
