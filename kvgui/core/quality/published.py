"""Published KV-cache measurements on models newer than LLaMA-2-7B, each with its source.

Used only for a model nobody has measured here: a note quotes the entry of the same
architecture when there is one (a Gemma 3 user sees Gemma 3's figures, not LLaMA-2's). Every
figure is copied from the public page named in ``url``, none is derived beyond the ratio of two
quoted perplexities; pages that only show charts are not used.

Why these matter: since llama.cpp PR #21038 (2026-04) the K and V caches are rotated (a
Hadamard transform) before quantizing, which the bundled llama.cpp does too (its log prints
``attn_rot_k``/``attn_rot_v``); older tables (PR #6183, #7412) were measured without it and
overstate what 4-bit caches cost. And the cost depends on the model: Gemma 4 loses much more
than Qwen 3.6 at the same cache type.
"""

from __future__ import annotations

from dataclasses import dataclass

PR_21551 = "https://github.com/ggml-org/llama.cpp/pull/21551"
LOCALBENCH = "https://localbench.substack.com/p/kv-cache-quantization-benchmark"
LOCALBENCH_SUMMARY = ("https://theagenttimes.com/articles/"
                      "kv-cache-benchmarks-reveal-gemma-4-fragility-that-qwen-3-6-a-fba55fac")


@dataclass(frozen=True)
class Published:
    """One published figure for a K/V pair on one model."""

    model: str  # as the source names it
    arches: tuple[str, ...]  # GGUF general.architecture values it stands for
    type_k: str
    type_v: str
    setup: str  # text, context, llama.cpp version/rotation, as the source says
    source: str  # who and where, one line
    url: str
    ppl: float | None = None
    ppl_f16: float | None = None  # the same source's f16/f16 figure
    kl_mean: float | None = None
    kl_max_of_range: float | None = None  # a source that gives a range "0.087–0.117"
    top1: float | None = None

    @property
    def ppl_ratio(self) -> float | None:
        if self.ppl is None or not self.ppl_f16:
            return None
        return self.ppl / self.ppl_f16

    def figures(self) -> str:
        """"+1.21% PPL", "KL 0.108", "KL 1.088, top-1 68.0%" — only what the source gives."""
        parts = []
        if (r := self.ppl_ratio) is not None:
            parts.append(f"{(r - 1) * 100:+.2f}% PPL")
        if self.kl_mean is not None:
            hi = f"–{self.kl_max_of_range:g}" if self.kl_max_of_range is not None else ""
            parts.append(f"KL {self.kl_mean:g}{hi}")
        if self.top1 is not None:
            parts.append(f"top-1 {self.top1:.1%}")
        return ", ".join(parts)


_GEMMA3_SETUP = ("wikitext-2 test, 512-token windows, llama.cpp with K/V rotation, "
                 "Gemma-3-4B pt Q4_0 weights")
_LOCALBENCH_SETUP = ("about 250k tokens of coding, chat, tool calling, science and long "
                     "documents; BF16 weights (Unsloth GGUF); llama.cpp with K/V rotation")
_LB_SOURCE = ("localbench (oobabooga), KV cache quantization benchmark; figures as quoted in "
              "a summary of it")

PUBLISHED: tuple[Published, ...] = (
    # llama.cpp PR #21551 (Green-Sky, 2026-04), "gemma3 4b pt q4_0", wikitext2-test 512
    Published("Gemma-3-4B", ("gemma3",), "q8_0", "q8_0", _GEMMA3_SETUP,
              "llama.cpp PR #21551 (Green-Sky, 2026-04)", PR_21551, ppl=7.8569, ppl_f16=7.8551),
    Published("Gemma-3-4B", ("gemma3",), "q4_0", "q4_0", _GEMMA3_SETUP,
              "llama.cpp PR #21551 (Green-Sky, 2026-04)", PR_21551, ppl=7.9506, ppl_f16=7.8551),
    # the same PR: LLaMA-2-7B Q4_K_M, first 8 wikitext-2 chunks, with rotation
    Published("LLaMA-2-7B", ("llama",), "q4_0", "q4_0",
              "wikitext-2 test, first 8 windows of 512, llama.cpp with K/V rotation, Q4_K_M "
              "weights", "llama.cpp PR #21551 (Green-Sky, 2026-04)", PR_21551, ppl=6.3243,
              ppl_f16=6.3123),
    # localbench: Gemma 4 and Qwen 3.6, KL against the f16 cache
    Published("Gemma-4-31B", ("gemma4",), "q8_0", "q8_0", _LOCALBENCH_SETUP, _LB_SOURCE,
              LOCALBENCH, kl_mean=0.108),
    Published("Gemma-4-26B-A4B", ("gemma4",), "q8_0", "q8_0", _LOCALBENCH_SETUP, _LB_SOURCE,
              LOCALBENCH, kl_mean=0.377),
    Published("Gemma-4-26B-A4B", ("gemma4",), "q4_0", "q4_0", _LOCALBENCH_SETUP, _LB_SOURCE,
              LOCALBENCH, kl_mean=1.088, top1=0.680),
    Published("Qwen3.6-27B / 35B-A3B", ("qwen35", "qwen35moe"), "q4_0",
              "q4_0", _LOCALBENCH_SETUP, _LB_SOURCE, LOCALBENCH, kl_mean=0.087,
              kl_max_of_range=0.117),
)


def published_for(type_k: str, type_v: str, arch: str) -> Published | None:
    """The published figure for this pair on a model of the same architecture, if any (the
    first listed: the most directly measured)."""
    a = arch.lower()
    for p in PUBLISHED:
        if (p.type_k, p.type_v) == (type_k, type_v) and a in p.arches:
            return p
    return None
