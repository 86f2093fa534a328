"""The quality rules the window and the CLI share: the threshold, the cheapest pair within it,
the sweep's bisection of the K-first ladder, the retrieval prompt, the notes' wording."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from kvgui.core.config.settings import Settings
from kvgui.core.quality.advice import (
    LADDER,
    SWEEP_START,
    QualityThreshold,
    cheapest_within,
    next_sweep_pair,
)
from kvgui.core.quality.needle import (
    QUESTION,
    answer_matches,
    build_prompt,
    prompts,
    secret_for,
)
from kvgui.core.quality.notes import measured_note, note_for
from kvgui.core.quality.results import (
    Evaluation,
    MeasureRun,
    ModelIdentity,
    NeedleProbe,
    PairResult,
    ProfileBin,
    TextInfo,
    find_cached,
    format_speed,
    measurement_settings,
    save_cached,
)

BITS = {"f16": 16, "q8_0": 8.5, "q5_0": 5.5, "q4_0": 4.5}


def res(k: str, v: str, kl: float, top1: float = 0.9, ppl: float = 10.0) -> PairResult:
    kv = int((BITS[k] + BITS[v]) * 1000)
    return PairResult(type_k=k, type_v=v, ppl=ppl, ppl_stderr=0.1, kl_mean=kl, kl_stderr=0.0,
                      kl_p99=kl, kl_max=kl, top1_agreement=top1, pp_tokens_per_s=100.0,
                      tg_tokens_per_s=10.0, kv_bytes=kv)


def test_threshold_rules_and_text() -> None:
    kl = QualityThreshold("kl", 0.01)
    top = QualityThreshold("top1", 0.98)
    assert kl.text == "KL ≤ 0.01" and top.text == "top-1 ≥ 98%"
    assert kl.accepts(res("q8_0", "q8_0", 0.01)) and not kl.accepts(res("q4_0", "q4_0", 0.02))
    assert top.accepts(res("q8_0", "q8_0", 1.0, top1=0.985))
    assert not top.accepts(res("q8_0", "q8_0", 0.0, top1=math.nan))
    assert kl.accepts(res("f16", "f16", math.nan))  # the reference always passes
    assert QualityThreshold.from_dict(top.to_dict()) == top
    for bad in (("kl", 0), ("kl", 11), ("top1", 1.5), ("ppl", 0.1), ("kl", math.nan)):
        with pytest.raises(ValueError):
            QualityThreshold(*bad)


def test_cheapest_within_uses_the_given_cost() -> None:
    rs = [res("f16", "f16", 0), res("q8_0", "q8_0", 0.004), res("q8_0", "q4_0", 0.009),
          res("q4_0", "q4_0", 0.05)]
    t = QualityThreshold("kl", 0.01)
    assert cheapest_within(rs, t).label == "q8_0/q4_0"  # type: ignore[union-attr]
    assert cheapest_within(rs, QualityThreshold("kl", 0.001)).label == "f16"  # type: ignore
    # a cost that makes the mixed pair dear: the next cheapest within wins
    cost = {"q8_0/q4_0": 10**9}
    pick = cheapest_within(rs, t, lambda r: cost.get(r.label, r.kv_bytes))
    assert pick is not None and pick.label == "q8_0"


def _simulate(kl_of: dict[tuple[str, str], float], t: QualityThreshold) -> list[tuple[str, str]]:
    done: dict[tuple[str, str], PairResult] = {}
    order = []
    while (p := next_sweep_pair(done, set(), t)) is not None:
        order.append(p)
        done[p] = res(*p, kl_of[p])
    return order


@pytest.mark.parametrize("boundary", range(len(LADDER)))
def test_the_sweep_finds_the_boundary_in_few_runs(boundary: int) -> None:
    """Quality falling down the ladder, the first ``boundary`` rungs within: the sweep ends
    at the cheapest rung within, having measured the next one, in at most 6 runs."""
    kl_of = {p: (0.001 if i <= boundary else 0.1) * (i + 1) for i, p in enumerate(LADDER)}
    kl_of[LADDER[0]] = 0.0
    t = QualityThreshold("kl", 0.0095)
    order = _simulate(kl_of, t)
    assert order[:3] == list(SWEEP_START) and len(order) <= 6 and len(set(order)) == len(order)
    done = {p: res(*p, kl_of[p]) for p in order}
    pick = cheapest_within(done.values(), t)
    assert pick is not None and pick.pair == LADDER[boundary]
    if boundary + 1 < len(LADDER):
        assert LADDER[boundary + 1] in done


def test_a_refused_pair_counts_as_outside() -> None:
    t = QualityThreshold("kl", 0.01)
    done = {LADDER[0]: res("f16", "f16", 0.0), LADDER[2]: res("q8_0", "q8_0", 0.001)}
    # q4_0 refused: the bisection goes on between q8_0 (within) and q4_0 (outside)
    assert next_sweep_pair(done, {("q4_0", "q4_0")}, t) == ("q5_0", "q5_0")


def test_retrieval_prompts_fill_the_budget_and_are_seeded() -> None:
    filler = "The quick brown fox jumps over the lazy dog. " * 40
    count = lambda s: len(s.split())  # noqa: E731 - a stand-in tokenizer: words
    made = prompts(filler, 300, count, (0.1, 0.5, 0.9), seed=7)
    assert [p.depth for p in made] == [0.1, 0.5, 0.9]
    assert [p.secret for p in made] == [secret_for(7, i) for i in range(3)]
    assert len({p.secret for p in made}) == 3 and made == prompts(filler, 300, count,
                                                                   (0.1, 0.5, 0.9), seed=7)
    for p in made:
        assert 290 <= count(p.text) <= 300 and p.text.endswith(QUESTION)
        assert p.text[p.fact_at:].startswith(f"The secret number is {p.secret}.")
    shares = [made[i].fact_at / len(made[i].text) for i in range(3)]
    assert shares[0] < 0.2 and 0.4 < shares[1] < 0.6 and shares[2] > 0.8
    # a filler shorter than the context is repeated
    assert count(build_prompt("Short text.", 0.5, "12345", 200, count).text) > 150
    with pytest.raises(ValueError):
        build_prompt(filler, 1.5, "12345", 300, count)


def test_answers_are_read_leniently_but_exactly() -> None:
    assert answer_matches(" 48213.", "48213")
    assert answer_matches(" 4 8 2 1 3", "48213") and answer_matches("48,213", "48213")
    assert not answer_matches(" 48214.", "48213") and not answer_matches(" unknown", "48213")
    assert not answer_matches(" 4821", "48213")


def _run(model: Path, results: tuple[PairResult, ...], created: str = "2026-01-02T00:00:00",
         text: str = "t") -> MeasureRun:
    return MeasureRun(
        model=ModelIdentity.of(model), settings=measurement_settings(Settings(n_ctx=1024)),
        text=TextInfo.of(text, "t.txt"),
        evaluation=Evaluation(window=512, windows=2, tokens=510, text_tokens=1100,
                              max_windows=None, kl_method="full", reference_repeated=False),
        results=results, llama_cpp_version=_version(), created=created)


def _version() -> str:
    from importlib import metadata

    return metadata.version("llama_cpp_python")


def test_measured_notes_say_what_was_measured(tmp_path: Path) -> None:
    m = tmp_path / "m.gguf"
    m.write_bytes(b"GGUF" + b"\0" * 60)
    probes = (NeedleProbe(0.1, 40, 1000, "12345", "12345.", True),
              NeedleProbe(0.9, 900, 1000, "54321", "5432", False))
    q4 = replace(res("q4_0", "q4_0", 0.43, top1=0.745, ppl=14.85), retrieval=probes,
                 profile=(ProfileBin(256, 320, 0.3, 0.8, 100), ProfileBin(448, 511, 0.5, 0.7,
                                                                          100)))
    run = _run(m, (res("f16", "f16", 0.0, top1=1.0), q4))
    t = QualityThreshold("kl", 0.01)
    n = measured_note(run, "q4_0", "q4_0", t)
    assert n is not None and n.measured and n.within is False
    assert n.text == ("measured on this model (510 tokens): +48.5% PPL, KL 0.43, top-1 74.5% "
                      "— outside KL ≤ 0.01; retrieval 1/2")
    assert "KL 0.3 at positions 256–320, 0.5 at 448–511" in n.source
    assert "retrieval at 1000 tokens: 10% found, 90% missed" in n.source
    assert measured_note(run, "q8_0", "q8_0", t) is None
    # not measured: the published figure, labelled with its model
    assert note_for("q8_0", "q8_0", run, "", t).text.startswith("published, LLaMA-2-7B")


def test_find_cached_is_per_file_and_newest(tmp_path: Path) -> None:
    m, other = tmp_path / "m.gguf", tmp_path / "o.gguf"
    for p in (m, other):
        p.write_bytes(b"GGUF" + b"\0" * 60)
    old = _run(m, (res("f16", "f16", 0.0),), created="2026-01-01T00:00:00")
    new = replace(_run(m, (res("f16", "f16", 0.0), res("q8_0", "q8_0", 0.001)),
                       created="2026-02-01T00:00:00"),
                  evaluation=replace(old.evaluation, window=256, tokens=254))
    save_cached(old)
    save_cached(new)
    save_cached(_run(other, (res("f16", "f16", 0.0),), created="2026-03-01T00:00:00"))
    ident = ModelIdentity.of(m)
    hit = find_cached(ident, Settings())
    assert hit is not None and hit.created == "2026-02-01T00:00:00"
    assert find_cached(ident, Settings(), TextInfo.of("another text", "x").sha256) is None
    assert find_cached(ident, Settings(flash_attn="off")) is None  # type: ignore[arg-type]
    m.write_bytes(b"GGUF" + b"\1" * 61)  # a changed file is another model
    assert find_cached(ModelIdentity.of(m), Settings()) is None


def test_speed_is_written_with_its_spread() -> None:
    assert format_speed(1234.4, (1200.0, 1250.6), ".0f") == "1234 (1200–1251)"
    assert format_speed(12.0, None, ".1f") == "12.0" and format_speed(math.nan, None, ".1f") \
        == "n/a"
