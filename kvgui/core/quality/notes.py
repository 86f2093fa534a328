"""One-line quality notes per KV cache type: measured on the user's model when it has been,
else published (with the source), else "not measured".

``measured_note`` words a ``kvgui measure`` result ("measured on this model (1020 tokens):
+30.9% PPL, KL 0.36, top-1 74.7% — outside KL ≤ 0.01"). ``quality_note`` is the published
fallback: a figure for a model of the same architecture from ``published`` when there is one,
else LLaMA-2-7B's from the llama.cpp PRs below, always labelled with the model it was measured
on. Published figures are a guide to the ordering, not a promise for another model.

Sources:
- llama.cpp PR #6183 (ikawrakow, 2024-03): K cache type only (V f16), LLaMA-v2-7B Q4_K_S,
  PPL: f16 5.8671, q8_0 5.8681, q5_1 5.8802, q5_0 5.8920, q4_1 5.9233, iq4_nl 5.9323,
  q4_0 5.9790.
- llama.cpp PR #7412 (JohannesGaessler, 2024-05): K and V on an f16 model, PPL: f16/f16
  6.232196, q8_0/q8_0 6.234369; quantizing V alone to q8_0 moved the token distribution
  less (KLD 0.00074) than K alone (KLD 0.00094): K is the more sensitive half.
- llama.cpp PR #7527 (JohannesGaessler, 2024-05): from #7412's results, the combinations
  worth compiling keep K at or above V's precision, e.g. K q8_0 with V q4_0 (6.5 bits/value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvgui.core.quality.advice import QualityThreshold
from kvgui.core.quality.published import published_for
from kvgui.core.quality.results import REFERENCE_PAIR, MeasureRun

PR_6183 = "https://github.com/ggml-org/llama.cpp/pull/6183"
PR_7412 = "https://github.com/ggml-org/llama.cpp/pull/7412"
PR_7527 = "https://github.com/ggml-org/llama.cpp/pull/7527"

# PR #6183's table: PPL of LLaMA-v2-7B Q4_K_S with the K cache in each type (V in f16).
K_CACHE_PPL_6183: dict[str, float] = {
    "f16": 5.8671,
    "q8_0": 5.8681,
    "q5_1": 5.8802,
    "q5_0": 5.8920,
    "q4_1": 5.9233,
    "iq4_nl": 5.9323,
    "q4_0": 5.9790,
}
# PR #7412's table: f16 model, K/V both f16 vs both q8_0.
KV_PPL_7412: dict[str, float] = {"f16": 6.232196, "q8_0": 6.234369}


@dataclass(frozen=True)
class QualityNote:
    text: str  # one line for the table
    source: str  # where the figure comes from, for the tooltip
    url: str = ""
    measured: bool = False  # measured on this model (kvgui measure), not published
    within: bool | None = None  # within the user's quality threshold (measured notes only)


def _pct(ppl: float, base: float) -> str:
    return f"{(ppl / base - 1) * 100:+.2f}%"


def _k_delta(type_k: str) -> str:
    return _pct(K_CACHE_PPL_6183[type_k], K_CACHE_PPL_6183["f16"])


_SRC_6183 = (
    "llama.cpp PR #6183: perplexity of LLaMA-v2-7B (Q4_K_S) on wikitext-2 with the K cache "
    "in each type and V in f16"
)
_SRC_7412 = (
    "llama.cpp PR #7412: perplexity of an f16 model with K and V quantized; V alone changes "
    "the output less than K alone"
)


PUBLISHED_L2 = "published, LLaMA-2-7B"


def quality_note(type_k: str, type_v: str, arch: str = "") -> QualityNote:
    """The published note for a K/V pair: the same architecture's figure when one is
    published (``arch``: the GGUF's general.architecture), else LLaMA-2-7B's; pairs with no
    published figure say so rather than guess."""
    if arch and (p := published_for(type_k, type_v, arch)) is not None:
        return QualityNote(
            f"published, {p.model}: {p.figures()}",
            f"{p.source}: {p.model}, {p.setup}. Not measured on this model: "
            "Measure to see what it loses", p.url)
    note = _llama2_note(type_k, type_v)
    if note.url:  # a figure measured on LLaMA-2-7B: say so first
        text = note.text.replace(" on LLaMA-2-7B", "")
        return QualityNote(f"{PUBLISHED_L2}: {text}", note.source + ". Not measured on this "
                           "model: Measure to see what it loses", note.url)
    return note


def _llama2_note(type_k: str, type_v: str) -> QualityNote:
    if type_k == type_v == "f16":
        return QualityNote("reference: what llama.cpp uses by default", "llama.cpp default", "")
    if type_k == type_v == "f32":
        return QualityNote("no better than f16 in practice, at twice the memory",
                           "f16 is llama.cpp's default and the baseline of every table", "")
    if type_k == type_v == "bf16":
        return QualityNote("same size as f16; no published llama.cpp perplexity table",
                           "no published measurement; run kvgui measure on your model", "")
    if type_k == type_v == "q8_0":
        return QualityNote(
            f"≈ f16: K+V q8_0 {_pct(KV_PPL_7412['q8_0'], KV_PPL_7412['f16'])} PPL "
            f"(K alone {_k_delta('q8_0')})",
            f"{_SRC_7412}; {_SRC_6183}", PR_7412)
    if type_k == type_v and type_k in K_CACHE_PPL_6183:
        return QualityNote(
            f"K {type_k}: {_k_delta(type_k)} PPL on LLaMA-2-7B; V costs less than K",
            f"{_SRC_6183}; {_SRC_7412}", PR_6183)
    if type_k == "q8_0" and type_v in K_CACHE_PPL_6183:
        return QualityNote(
            f"K q8_0 {_k_delta('q8_0')} PPL; V {type_v} costs less than K {type_v} would "
            f"({_k_delta(type_v)})",
            f"{_SRC_6183}; {_SRC_7412}; combination recommended in llama.cpp PR #7527",
            PR_7527)
    if type_k in K_CACHE_PPL_6183 and type_v in ("f16", "bf16", "f32"):
        return QualityNote(f"K {type_k}: {_k_delta(type_k)} PPL on LLaMA-2-7B", _SRC_6183,
                           PR_6183)
    return QualityNote(
        f"K {type_k} / V {type_v}: no published figure for this pair",
        "no published llama.cpp measurement; run kvgui measure on your model", "")


def measured_note(run: MeasureRun, type_k: str, type_v: str,
                  threshold: QualityThreshold | None = None) -> QualityNote | None:
    """The note for a pair measured in ``run`` (None when it was not): the PPL change, KL and
    top-1 against f16 on this model, whether that is within ``threshold``, the retrieval
    result; the tooltip says how it was measured."""
    r = run.result(type_k, type_v)
    ref = run.reference
    if r is None or ref is None:
        return None
    e = run.evaluation
    head = f"measured on this model ({e.tokens} tokens)"
    if r.pair == REFERENCE_PAIR:
        text = f"{head}: reference, PPL {r.ppl:.3f}"
        within: bool | None = True
    else:
        d = (r.ppl / ref.ppl - 1) * 100 if ref.ppl and math.isfinite(r.ppl) else math.nan
        text = f"{head}: {d:+.1f}% PPL, KL {r.kl_mean:.3g}, top-1 {r.top1_agreement:.1%}"
        within = threshold.accepts(r) if threshold is not None else None
        if threshold is not None:
            text += f" — {'within' if within else 'outside'} {threshold.text}"
    if r.retrieval:
        text += f"; retrieval {r.retrieval_passed}/{len(r.retrieval)}"
    fa = run.settings.flash_attn.value
    src = (f"kvgui measure on {run.model.path}: {e.tokens} tokens scored per type "
           f"({e.windows} windows of {e.window} from {run.text.name}), flash attention {fa}, "
           f"llama.cpp (llama-cpp-python {run.llama_cpp_version}), {run.created}")
    if r.profile and len(r.profile) > 1 and r.pair != REFERENCE_PAIR:
        a, b = r.profile[0], r.profile[-1]
        src += (f"; KL {a.kl_mean:.3g} at positions {a.start}–{a.end}, {b.kl_mean:.3g} at "
                f"{b.start}–{b.end}")
    if r.retrieval:
        probes = ", ".join(f"{p.depth:.0%} {'found' if p.passed else 'missed'}"
                           for p in r.retrieval)
        src += f"; retrieval at {r.retrieval[0].context_tokens} tokens: {probes}"
    return QualityNote(text, src, "", measured=True, within=within)


def note_for(type_k: str, type_v: str, run: MeasureRun | None, arch: str = "",
             threshold: QualityThreshold | None = None) -> QualityNote:
    """Measured when ``run`` has the pair, else published: the one rule the table uses."""
    if run is not None and (m := measured_note(run, type_k, type_v, threshold)) is not None:
        return m
    return quality_note(type_k, type_v, arch)

