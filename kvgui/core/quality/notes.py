"""One-line quality notes per KV cache type, from published llama.cpp measurements.

Every figure here is quoted from a public llama.cpp pull request, with its source, so the
window can say where it comes from. They are perplexity (PPL) changes on wikitext-2 for
one model each; they are a guide to the ordering, not a promise for every model (kvgui's
``measure`` command measures the user's own model).

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

from dataclasses import dataclass

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


def quality_note(type_k: str, type_v: str) -> QualityNote:
    """The note for a K/V pair; pairs with no published figure say so rather than guess."""
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
