"""``kvgui measure`` on real weights (Gemma-3-270M, the ``realmodel`` extra) against llama.cpp's
own ``llama-perplexity --kl-divergence`` on the same text and settings, and the retrieval test
on a model that can actually retrieve.

Short on purpose (2 windows of 256 tokens, a 512-token retrieval prompt): enough to show that
the two agree to the token, not a quality study. Both sides run with ``-nr`` (no repacked
weight buffers): the same for both, and it keeps the test off llama.cpp's AMX repack path,
which crashes on some AMX CPUs this project's CI has run on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgui.core.config.settings import Settings
from kvgui.core.quality.results import MeasureRun
from kvgui.runtime.measure import MeasureRequest, Retrieval, run_measure, sample_text

pytest.importorskip("llama_cpp")
pytestmark = [pytest.mark.llama, pytest.mark.slow]

WINDOW, CHUNKS = 256, 2
SETTINGS = Settings(n_ctx=512, n_threads=2, repack=False)
PAIRS = (("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"))


@pytest.fixture(scope="module")
def measured(real_model: Path) -> MeasureRun:
    req = MeasureRequest(model=str(real_model), settings=SETTINGS, pairs=PAIRS,
                         text=sample_text(), window=WINDOW, max_windows=CHUNKS,
                         speed_repeats=0)
    return run_measure(req)


@pytest.fixture(scope="module")
def llama_perplexity(real_model: Path, llama_tools, tmp_path_factory: pytest.TempPathFactory):
    from kvgui.testing.llama_perplexity import kl_divergence

    text = tmp_path_factory.mktemp("text") / "sample.txt"
    text.write_text(sample_text(), encoding="utf-8")
    return kl_divergence(llama_tools, real_model, text, SETTINGS, WINDOW, CHUNKS, list(PAIRS))


def test_the_same_tokens_are_scored(measured: MeasureRun) -> None:
    e = measured.evaluation
    assert (e.window, e.windows, e.tokens) == (WINDOW, CHUNKS, CHUNKS * (WINDOW // 2 - 1))
    assert e.kl_method == "full"  # exact KL: 254 x 262144 log-probs fit the default bound
    assert [r.label for r in measured.results] == ["f16", "q8_0", "q4_0"]


@pytest.mark.parametrize("type_", ["q8_0", "q4_0"])
def test_ppl_ratio_and_top1_agree_with_llama_perplexity(measured: MeasureRun,
                                                        llama_perplexity, type_: str) -> None:
    ref = measured.reference
    mine = measured.result(type_, type_)
    theirs = llama_perplexity[(type_, type_)]
    assert ref is not None and mine is not None
    base = llama_perplexity[("f16", "f16")]
    assert abs(ref.ppl / base.ppl - 1) < 1e-3, (ref.ppl, base.ppl)
    ratio = mine.ppl / ref.ppl
    assert theirs.ppl_ratio is not None and theirs.same_top is not None
    # within 0.5 percentage points, as the issue asks (here they agree to ~0.01)
    assert abs(ratio - theirs.ppl_ratio) * 100 <= 0.5, (ratio, theirs.ppl_ratio)
    assert abs(mine.top1_agreement - theirs.same_top) * 100 <= 0.5, (
        mine.top1_agreement, theirs.same_top)
    # the quantized cache really does cost something on this model: the check is not vacuous
    assert mine.kl_mean > 0.01 and mine.top1_agreement < 0.97
    assert theirs.kl_mean is not None and abs(mine.kl_mean - theirs.kl_mean) < 0.05 * theirs.kl_mean


def _retrieval(real_model: Path) -> MeasureRun:
    req = MeasureRequest(model=str(real_model), settings=SETTINGS, pairs=(("f16", "f16"),),
                         text=sample_text(), window=128, max_windows=1, speed_repeats=0,
                         retrieval=Retrieval(n_ctx=512))
    return run_measure(req)


def test_retrieval_passes_with_f16_and_is_reproducible(real_model: Path) -> None:
    first, again = _retrieval(real_model), _retrieval(real_model)
    probes = first.results[0].retrieval
    assert [p.depth for p in probes] == [0.1, 0.5, 0.9]
    assert all(p.context_tokens > 480 for p in probes)  # the prompt fills the context
    assert all(p.passed for p in probes), probes
    assert again.results[0].retrieval == probes  # same secrets, same answers
