"""Measurement results: pair parsing, JSON round trip, Pareto front, recommendation, cache."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pytest

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.quality.results import (
    CacheKey,
    Evaluation,
    MeasureRun,
    ModelIdentity,
    PairFailure,
    PairResult,
    TextInfo,
    cache_dir,
    load_cached,
    measurement_settings,
    pair_label,
    pair_problem,
    pareto_front,
    parse_pair,
    parse_pairs,
    recommend,
    save_cached,
)


def result(k: str, v: str | None = None, *, kl: float, kv: int | None, ppl: float = 10.0,
           top1: float = 1.0) -> PairResult:
    return PairResult(
        type_k=k, type_v=v or k, ppl=ppl, ppl_stderr=0.1, kl_mean=kl, kl_stderr=kl / 10,
        kl_p99=kl * 5, kl_max=kl * 9, top1_agreement=top1, pp_tokens_per_s=1000.0,
        tg_tokens_per_s=50.0, kv_bytes=kv, kv_k_bytes=None if kv is None else kv // 2,
        kv_v_bytes=None if kv is None else kv - kv // 2, flash_attn=True, seconds=1.5,
    )


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    p = tmp_path / "m.gguf"
    p.write_bytes(b"GGUF" + b"\0" * 60)
    return p


def make_run(model: Path, results: tuple[PairResult, ...], *, settings: Settings | None = None,
             text: str = "some text", failures: tuple[PairFailure, ...] = ()) -> MeasureRun:
    return MeasureRun(
        model=ModelIdentity.of(model),
        settings=measurement_settings(settings or Settings(n_ctx=1024)),
        text=TextInfo.of(text, "t.txt"),
        evaluation=Evaluation(window=512, windows=3, tokens=3 * 255, text_tokens=1600,
                              max_windows=None, kl_method="full", reference_repeated=False),
        results=results, failures=failures, llama_cpp_version="0.3.36",
        created="2026-01-01T00:00:00+00:00",
    )


F16 = result("f16", kl=0.0, kv=400, ppl=10.0)
Q8 = result("q8_0", kl=0.001, kv=212, ppl=10.01)
Q4 = result("q4_0", kl=0.03, kv=112, ppl=10.3)
MIX = result("q8_0", "q4_0", kl=0.02, kv=162, ppl=10.2)
BAD = result("q4_1", kl=0.05, kv=125)  # more memory and more loss than q4_0: dominated


def test_pair_labels_and_parsing() -> None:
    assert pair_label("q8_0", "q8_0") == "q8_0"
    assert pair_label("q8_0", "q4_0") == "q8_0/q4_0"
    assert parse_pair("Q8_0") == ("q8_0", "q8_0")
    assert parse_pair("q8_0/q4_0") == ("q8_0", "q4_0")
    assert parse_pair("q8_0:q4_0") == ("q8_0", "q4_0")
    assert parse_pairs("f16, q8_0,q4_0,q8_0,f16/f16") == (
        ("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"))
    for bad in ("q9_0", "q8_0/", "a/b/c", "q8_0/q3_k"):
        with pytest.raises(ValueError):
            parse_pair(bad)
    with pytest.raises(ValueError, match="no cache types"):
        parse_pairs(" , ")


def test_measurement_settings_resolve_flash_attention_once() -> None:
    s = measurement_settings(Settings(flash_attn=FlashAttn.AUTO, type_k="q4_0", type_v="q4_0"))
    assert s.flash_attn is FlashAttn.ON and (s.type_k, s.type_v) == ("f16", "f16")
    off = measurement_settings(Settings(flash_attn=FlashAttn.OFF))
    assert off.flash_attn is FlashAttn.OFF
    assert pair_problem(off, "q8_0", "q4_0") is not None
    assert pair_problem(off, "q4_0", "f16") is None  # quantized K alone works without FA
    assert pair_problem(s, "q4_0", "q4_0") is None


def test_json_round_trip_and_shape(model_file: Path) -> None:
    nan_speed = replace(Q4, tg_tokens_per_s=math.nan)
    run = make_run(model_file, (F16, Q8, nan_speed),
                   failures=(PairFailure("q5_0", "q5_0", "refused"),))
    text = run.to_json()
    data = json.loads(text)  # strict JSON: NaN became null
    assert set(data) == {"version", "model", "settings", "text", "evaluation", "results",
                         "failures", "pareto", "llama_cpp_version", "created"}
    assert set(data["evaluation"]) == {"window", "windows", "tokens", "text_tokens",
                                       "max_windows", "kl_method", "reference",
                                       "reference_repeated", "score_from", "n_threads",
                                       "speed_repeats", "retrieval_ctx", "sweep"}
    assert data["evaluation"]["score_from"] == 256  # spelled out: the second half
    assert set(data["results"][0]) == {
        "type_k", "type_v", "label", "ppl", "ppl_stderr", "kl_mean", "kl_stderr", "kl_p99",
        "kl_max", "top1_agreement", "pp_tokens_per_s", "tg_tokens_per_s", "kv_bytes",
        "kv_k_bytes", "kv_v_bytes", "flash_attn", "seconds", "pp_samples", "tg_samples",
        "eval_tokens", "eval_seconds", "profile", "retrieval"}
    assert data["results"][2]["tg_tokens_per_s"] is None
    assert data["pareto"] == ["q4_0", "q8_0", "f16"]
    assert data["failures"] == [{"type_k": "q5_0", "type_v": "q5_0", "label": "q5_0",
                                 "error": "refused"}]
    back = MeasureRun.from_json(text)
    assert back.results[:2] == run.results[:2]
    assert math.isnan(back.results[2].tg_tokens_per_s)
    assert back.failures == run.failures and back.settings == run.settings
    assert back.reference == F16 and back.result("q8_0", "q8_0") == Q8
    with pytest.raises(ValueError, match="version"):
        MeasureRun.from_dict({**data, "version": 99})


def test_pareto_front() -> None:
    unmeasured = result("bf16", kl=0.0001, kv=None)
    front = pareto_front([BAD, F16, Q4, MIX, Q8, unmeasured])
    assert [r.label for r in front] == ["q4_0", "q8_0/q4_0", "q8_0", "f16"]
    f32 = result("f32", kl=0.0, kv=800)  # ties f16 on KL with more memory: not on the front
    assert [r.label for r in pareto_front([F16, f32])] == ["f16"]
    assert pareto_front([]) == []


def test_recommend_picks_most_faithful_that_fits() -> None:
    all_ = [F16, Q8, Q4, MIX, BAD]
    assert recommend(all_, None) is None
    assert recommend(all_, 10_000) == F16
    assert recommend(all_, 399) == Q8
    assert recommend(all_, 200) == MIX
    assert recommend(all_, 120) == Q4
    assert recommend(all_, 100) is None
    # a cost at another context: 10x the measured memory, q4_0 unknown there
    cost = {F16.label: 4000, Q8.label: 2120, MIX.label: 1620, BAD.label: 1250}
    assert recommend(all_, 2000, lambda r: cost.get(r.label)) == MIX
    assert recommend(all_, 1300, lambda r: cost.get(r.label)) == BAD


def test_cache_round_trip_and_merge(model_file: Path) -> None:
    assert cache_dir() == Path(os.environ["KVGUI_CONFIG_DIR"]) / "measure"
    first = make_run(model_file, (F16, Q8))
    key = CacheKey.of_run(first)
    assert load_cached(key) is None
    assert save_cached(first) == first
    assert load_cached(key) == first
    # a later run with other types merges in; the f16 reference is replaced by the newer one
    f16_again = replace(F16, pp_tokens_per_s=1234.0)
    second = make_run(model_file, (f16_again, Q4),
                      failures=(PairFailure("q8_0", "q8_0", "out of memory"),))
    merged = save_cached(second)
    assert {r.label for r in merged.results} == {"f16", "q4_0"}  # q8_0 now failed
    assert merged.reference == f16_again
    assert [f.label for f in merged.failures] == ["q8_0"]
    third = save_cached(make_run(model_file, (F16, Q8)))
    assert {r.label for r in third.results} == {"f16", "q8_0", "q4_0"} and not third.failures
    assert load_cached(key) == third


def test_cache_key_is_model_file_settings_text_and_windows(model_file: Path) -> None:
    run = make_run(model_file, (F16,))
    save_cached(run)
    key = CacheKey.of_run(run)
    # the K/V types and auto/on flash attention are not part of the key
    same = replace(key, settings=Settings(n_ctx=1024, type_k="q4_0", flash_attn=FlashAttn.AUTO))
    assert load_cached(same) == run
    for other in (replace(key, settings=Settings(n_ctx=2048)),
                  replace(key, text_sha256=TextInfo.of("other", "t").sha256),
                  replace(key, window=256), replace(key, max_windows=2),
                  replace(key, llama_cpp_version="0.4.0")):
        assert load_cached(other) is None
    # the file changed (new mtime): a different model, so no cached results
    st = model_file.stat()
    os.utime(model_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert load_cached(replace(key, model=ModelIdentity.of(model_file))) is None


def test_unreadable_cache_entry_is_a_miss(model_file: Path) -> None:
    run = make_run(model_file, (F16,))
    key = CacheKey.of_run(run)
    key.path().parent.mkdir(parents=True)
    key.path().write_text("{not json")
    assert load_cached(key) is None
    assert save_cached(run) == run  # and it is overwritten
    assert load_cached(key) == run
