"""The measurement worker on the tiny generated model: real llama.cpp, real numbers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.quality.results import MeasureRun
from kvgui.runtime.llama_log import matches_logged
from kvgui.runtime.measure import (
    MeasureCancelled,
    MeasureError,
    MeasureRequest,
    Progress,
    run_measure,
    sample_text,
)

pytest.importorskip("llama_cpp")
pytestmark = [pytest.mark.llama, pytest.mark.slow]

PAIRS = (("f16", "f16"), ("f32", "f32"), ("q8_0", "q8_0"), ("q4_0", "q4_0"), ("q8_0", "q4_0"))
N_CTX, WINDOW, WINDOWS = 256, 128, 4
# tiny model: 2 layers, 1 KV head of 32 -> K (and V) f16 = 2 * 256 cells * 32 * 2 bytes
F16_K_BYTES = 2 * N_CTX * 32 * 2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kvgui.testing.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def request(model: Path, **kw: object) -> MeasureRequest:
    args: dict[str, object] = dict(
        model=str(model), settings=Settings(n_ctx=N_CTX), pairs=PAIRS, text=sample_text(),
        window=WINDOW, max_windows=WINDOWS, n_threads=2, repeat_reference=True,
        speed_repeats=2)
    args.update(kw)
    return MeasureRequest(**args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def measured(tiny: Path) -> tuple[MeasureRun, list[Progress]]:
    progress: list[Progress] = []
    return run_measure(request(tiny), on_progress=progress.append), progress


def test_every_type_is_scored_on_the_same_tokens(measured: tuple[MeasureRun, list[Progress]]):
    run, _ = measured
    e = run.evaluation
    assert (e.window, e.windows) == (WINDOW, WINDOWS)
    assert e.tokens == WINDOWS * (WINDOW - WINDOW // 2 - 1)  # second half of each window
    assert e.text_tokens > WINDOW * WINDOWS and e.kl_method == "full"
    assert [r.label for r in run.results] == ["f16", "f32", "q8_0", "q4_0", "q8_0/q4_0"]
    assert not run.failures
    assert run.settings.flash_attn is FlashAttn.ON  # auto measured as on, for every type
    assert all(r.flash_attn is True for r in run.results)


def test_f16_against_f16_is_identical(measured: tuple[MeasureRun, list[Progress]]) -> None:
    f16 = measured[0].reference
    assert f16 is not None and measured[0].evaluation.reference_repeated
    # a second, independent f16 run: deterministic, so exactly the same distributions
    assert (f16.kl_mean, f16.kl_p99, f16.kl_max, f16.top1_agreement) == (0.0, 0.0, 0.0, 1.0)
    assert 1.0 < f16.ppl < 640 * 4  # random weights: about the vocabulary size, and finite


def test_f32_is_close_and_quantized_types_lose_quality(measured) -> None:
    run: MeasureRun = measured[0]
    f16, f32 = run.result("f16", "f16"), run.result("f32", "f32")
    q8, q4, mix = run.result("q8_0", "q8_0"), run.result("q4_0", "q4_0"), \
        run.result("q8_0", "q4_0")
    assert f16 and f32 and q8 and q4 and mix
    assert 0.0 <= f32.kl_mean < 1e-4 and f32.top1_agreement > 0.99
    assert abs(f32.ppl / f16.ppl - 1) < 1e-3
    for r in (q8, q4, mix):
        assert r.kl_mean > 0 and r.kl_max >= r.kl_p99 >= 0 and r.top1_agreement < 1
    assert q4.kl_mean > q8.kl_mean * 5  # 4-bit loses far more than 8-bit
    assert q8.kl_mean < mix.kl_mean <= q4.kl_mean * 1.2  # 8-bit K spares some of it


def test_kv_memory_is_what_llama_cpp_allocated(measured) -> None:
    run: MeasureRun = measured[0]
    f16, f32, q8, q4 = (run.result(t, t) for t in ("f16", "f32", "q8_0", "q4_0"))
    assert f16 and f32 and q8 and q4
    assert f16.kv_k_bytes is not None and f16.kv_bytes is not None
    assert matches_logged(F16_K_BYTES, f16.kv_k_bytes / 2**20)
    assert matches_logged(2 * F16_K_BYTES, f32.kv_k_bytes / 2**20)  # type: ignore[operator]
    assert matches_logged(F16_K_BYTES * 34 // 64, q8.kv_k_bytes / 2**20)  # type: ignore[operator]
    assert f32.kv_bytes > f16.kv_bytes > q8.kv_bytes > q4.kv_bytes  # type: ignore[operator]


def test_speeds_and_progress(measured: tuple[MeasureRun, list[Progress]]) -> None:
    run, progress = measured
    reps = run.evaluation.speed_repeats
    assert reps == 2 and run.evaluation.n_threads == 2
    for r in run.results:
        assert r.pp_tokens_per_s > 0 and r.tg_tokens_per_s > 0 and r.seconds > 0
        # warm-up, then the repeats: the median of the samples, and their spread
        assert len(r.pp_samples) == len(r.tg_samples) == reps
        assert r.pp_spread == (min(r.pp_samples), max(r.pp_samples))
        assert min(r.tg_samples) <= r.tg_tokens_per_s <= max(r.tg_samples)
        assert r.eval_tokens == WINDOWS * WINDOW and r.eval_tokens_per_s > 0
    work = [p for p in progress if p.stage in ("eval", "speed", "retrieval")]
    fractions = [p.fraction for p in work]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # one event per window per run: the reference twice (it is repeated), then the others
    evals = [p for p in work if p.stage == "eval"]
    assert len(evals) == WINDOWS * (len(PAIRS) + 1)
    assert {p.stage for p in work} == {"eval", "speed"}  # no retrieval asked
    assert all(p.pairs == len(PAIRS) + 1 for p in work)
    assert any(p.eta_s is not None for p in work) and work[-1].eta_s == pytest.approx(0, abs=1)


def test_position_profile(measured: tuple[MeasureRun, list[Progress]]) -> None:
    run, _ = measured
    q4 = run.result("q4_0", "q4_0")
    assert q4 is not None and len(q4.profile) == 8
    first = WINDOW // 2
    assert q4.profile[0].start == first and q4.profile[-1].end == WINDOW - 1
    assert sum(b.n for b in q4.profile) == run.evaluation.tokens  # every scored prediction
    pooled = sum(b.kl_mean * b.n for b in q4.profile) / run.evaluation.tokens
    assert pooled == pytest.approx(q4.kl_mean, rel=1e-9)
    assert all(b.kl_mean == 0.0 for b in run.reference.profile)  # type: ignore[union-attr]


def test_long_context_scores_every_position_and_retrieval_runs(tiny: Path) -> None:
    from kvgui.runtime.measure import Retrieval

    run = run_measure(request(tiny, pairs=(("f16", "f16"), ("q4_0", "q4_0")), window=N_CTX,
                              max_windows=1, score_from=0, repeat_reference=False,
                              speed_repeats=0, retrieval=Retrieval(depths=(0.5,))))
    e = run.evaluation
    assert (e.window, e.score_from, e.tokens) == (N_CTX, 0, N_CTX - 1)
    q4 = run.result("q4_0", "q4_0")
    assert q4 is not None and q4.profile[0].start == 0 and q4.pp_samples == ()
    probe = q4.retrieval[0]
    # the prompt fills the context; random weights cannot answer, and say so
    assert N_CTX - 16 <= probe.context_tokens <= N_CTX - 9 and not probe.passed
    assert 0 < probe.position < probe.context_tokens and len(probe.expected) == 5


def test_sweep_bisects_the_ladder_to_the_threshold(tiny: Path) -> None:
    from kvgui.core.quality.advice import LADDER, QualityThreshold, cheapest_within

    t = QualityThreshold("kl", 0.002)
    run = run_measure(request(tiny, pairs=(("f16", "f16"),), sweep=t, repeat_reference=False,
                              speed_repeats=0, max_windows=2))
    measured = [r.pair for r in run.results]
    assert measured[:3] == [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")]
    assert 3 <= len(measured) <= 6 and set(measured) <= set(LADDER)
    pick = cheapest_within(run.results, t)
    assert pick is not None and t.accepts(pick)
    # the next cheaper rung was measured and is outside the threshold
    below = LADDER[LADDER.index(pick.pair) + 1]
    nxt = run.result(*below)
    assert nxt is not None and not t.accepts(nxt)
    assert run.evaluation.sweep == "KL ≤ 0.002"


@pytest.mark.parametrize("k", [16, 640])
def test_top_k_reference(tiny: Path, measured, k: int) -> None:
    """Big vocabularies keep only the reference's top k: a lower bound of the KL, exact when
    k is the whole vocabulary (640 here)."""
    exact: MeasureRun = measured[0]
    pairs = (("f16", "f16"), ("q4_0", "q4_0"))
    run = run_measure(request(tiny, pairs=pairs, kl_topk=k, kl_full_max_bytes=0,
                              repeat_reference=False))
    assert run.evaluation.kl_method == f"top{k}"
    q4, q4_exact = run.result("q4_0", "q4_0"), exact.result("q4_0", "q4_0")
    assert q4 and q4_exact and run.reference
    assert run.reference.kl_mean == 0.0 and run.reference.top1_agreement == 1.0
    # the same tokens and windows: the same perplexity and top-1 agreement
    assert q4.ppl == pytest.approx(q4_exact.ppl, rel=1e-9)
    assert q4.top1_agreement == q4_exact.top1_agreement
    if k == 640:
        # the same up to float32 rounding of the stored log-probs (the rest-of-mass term)
        assert q4.kl_mean == pytest.approx(q4_exact.kl_mean, rel=5e-4)
    else:
        assert 0.0 < q4.kl_mean < q4_exact.kl_mean


def _worker_children() -> list[psutil.Process]:
    return [c for c in psutil.Process().children(recursive=True)
            if "kvgui.runtime.measure_worker" in " ".join(c.cmdline())]


def test_cancel_kills_the_worker_promptly(tiny: Path) -> None:
    cancel = threading.Event()
    seen: list[float] = []

    def on_progress(p: Progress) -> None:
        if p.stage == "eval":
            seen.append(time.monotonic())
            cancel.set()

    req = request(tiny, max_windows=None, pairs=PAIRS * 1)  # ~every window of the sample
    with pytest.raises(MeasureCancelled) as info:
        run_measure(req, on_progress=on_progress, cancel=cancel)
    assert seen and time.monotonic() - seen[0] < 2.0
    assert info.value.partial is not None  # the plan had arrived
    assert info.value.partial.results == ()
    assert _worker_children() == []


def test_a_worker_that_dies_is_reported_with_the_finished_types(tiny: Path) -> None:
    """As when llama.cpp aborts its process mid-run (GGML_ASSERT, out of memory)."""

    def kill_worker(_result: object) -> None:
        for child in _worker_children():
            child.kill()

    with pytest.raises(MeasureError, match=r"worker was killed by SIGKILL") as info:
        run_measure(request(tiny, repeat_reference=False, max_windows=30),
                    on_result=kill_worker)
    assert not isinstance(info.value, MeasureCancelled)
    partial = info.value.partial  # what finished before the kill (f16, perhaps one more)
    assert partial is not None and 1 <= len(partial.results) < len(PAIRS)
    assert partial.results[0].label == "f16"
    assert _worker_children() == []


def test_failures_are_one_clear_message(tiny: Path, tmp_path: Path) -> None:
    not_a_model = tmp_path / "bad.gguf"
    not_a_model.write_bytes(b"GGUF" + b"\x03\0\0\0" + b"\xff" * 64)
    with pytest.raises(MeasureError, match="could not load"):
        run_measure(request(not_a_model))
    with pytest.raises(MeasureError, match="shorter than one window"):
        run_measure(request(tiny, text="just a few words"))
    # refused before any process starts
    off = Settings(n_ctx=N_CTX, flash_attn=FlashAttn.OFF)
    with pytest.raises(MeasureError, match="needs flash attention"):
        run_measure(request(tiny, settings=off))
    with pytest.raises(MeasureError, match="larger than the context"):
        run_measure(request(tiny, window=512))
    with pytest.raises(MeasureError, match="no such file"):
        run_measure(request(tmp_path / "missing.gguf"))
    assert _worker_children() == []
