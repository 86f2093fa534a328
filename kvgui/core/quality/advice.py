"""What a measurement means for the choice of cache type: the user's quality threshold, the
cheapest pair within it, and the sweep that finds it in the fewest runs. Qt- and llama-free:
the window's controller and ``kvgui measure`` both decide with these functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kvgui.core.quality.results import REFERENCE_PAIR, PairResult, pair_label

KL, TOP1 = "kl", "top1"
DEFAULT_KL = 0.01
DEFAULT_TOP1 = 0.98


@dataclass(frozen=True)
class QualityThreshold:
    """How much loss the user accepts: mean KL against f16 at most ``value`` (nats/token), or
    top-1 agreement with f16 at least ``value`` (a fraction). The f16 reference always passes.
    """

    metric: str = KL
    value: float = DEFAULT_KL

    def __post_init__(self) -> None:
        if self.metric not in (KL, TOP1):
            raise ValueError(f"unknown quality metric {self.metric!r} (kl or top1)")
        v = float(self.value)
        if not math.isfinite(v):
            raise ValueError("the quality threshold must be a number")
        if self.metric == KL and not 0 < v <= 10:
            raise ValueError(f"a KL threshold must be above 0 and at most 10, not {v:g}")
        if self.metric == TOP1 and not 0 < v <= 1:
            raise ValueError(f"a top-1 threshold is a fraction in (0, 1], not {v:g}")

    def accepts(self, r: PairResult) -> bool:
        if r.pair == REFERENCE_PAIR:
            return True
        if self.metric == KL:
            return math.isfinite(r.kl_mean) and r.kl_mean <= self.value
        return math.isfinite(r.top1_agreement) and r.top1_agreement >= self.value

    @property
    def text(self) -> str:
        """"KL ≤ 0.01" or "top-1 ≥ 98%"."""
        if self.metric == KL:
            return f"KL ≤ {self.value:g}"
        return f"top-1 ≥ {self.value * 100:g}%"

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "value": self.value}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QualityThreshold:
        return cls(str(d.get("metric", KL)), float(d.get("value", DEFAULT_KL)))


Cost = Callable[[PairResult], "int | None"]


def cheapest_within(results: Iterable[PairResult], threshold: QualityThreshold,
                    cost: Cost | None = None) -> PairResult | None:
    """The pair that needs the least memory among those within the threshold (then the lower
    KL). ``cost``: a pair's bytes (e.g. the estimate's KV at the user's context); by default
    the KV measured. None when no measured pair has a cost."""
    cost = cost or (lambda r: r.kv_bytes)
    ok = []
    for r in results:
        c = cost(r)
        if c is not None and threshold.accepts(r):
            ok.append((c, r.kl_mean if math.isfinite(r.kl_mean) else math.inf, r.label, r))
    return min(ok, key=lambda t: t[:3])[3] if ok else None


# --- the sweep --------------------------------------------------------------------------------

# The ladder a sweep walks, by decreasing memory. K keeps at least V's precision on every rung:
# K is the sensitive half (llama.cpp PR #7412: V alone quantized to q8_0 moved the output less
# than K alone), so for each memory level the pair with the better K is the one that can be on
# the memory-vs-KL Pareto front. Types with fast flash-attention kernels on every backend only.
LADDER: tuple[tuple[str, str], ...] = (
    ("f16", "f16"),      # 32 bits per K+V value pair
    ("f16", "q8_0"),     # 24.5
    ("q8_0", "q8_0"),    # 17
    ("q8_0", "q5_0"),    # 14
    ("q8_0", "q4_0"),    # 13
    ("q5_0", "q5_0"),    # 11
    ("q5_0", "q4_0"),    # 10
    ("q4_0", "q4_0"),    # 9
)
# Measured first: the reference and the two usual types bracket the ladder.
SWEEP_START: tuple[tuple[str, str], ...] = (("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"))


def next_sweep_pair(done: Mapping[tuple[str, str], PairResult],
                    failed: Collection[tuple[str, str]],
                    threshold: QualityThreshold) -> tuple[str, str] | None:
    """The next pair a sweep should measure, or None when the cheapest rung within the
    threshold is known: measured, and the next cheaper rung measured outside it.

    Quality is taken to fall monotonically down the ladder (fewer bits, more error), so the
    boundary is found by bisection: f16, q8_0 and q4_0 first, then the middle unmeasured rung
    between the cheapest pass and the dearest fail below it. That is at most 6 runs for the 8
    rungs, 3 when q4_0 already passes. A pair llama.cpp refused counts as outside.
    """
    for p in SWEEP_START:
        if p not in done and p not in failed:
            return p

    def passes(i: int) -> bool:
        p = LADDER[i]
        return p in done and threshold.accepts(done[p])

    def known(i: int) -> bool:
        return LADDER[i] in done or LADDER[i] in failed

    cheapest = max(i for i in range(len(LADDER)) if passes(i) or i == 0)
    below = [i for i in range(cheapest + 1, len(LADDER)) if known(i) and not passes(i)]
    if not below:
        return None  # the cheapest rung passes
    hi = min(below)
    gap = [i for i in range(cheapest + 1, hi) if not known(i)]
    if not gap:
        return None
    return LADDER[gap[len(gap) // 2]]


def sweep_label(threshold: QualityThreshold) -> str:
    return f"sweep to {threshold.text}"


def describe_choice(r: PairResult, threshold: QualityThreshold) -> str:
    """"q8_0/q4_0 (KL 0.0042, top-1 97.9%, within KL ≤ 0.01)"."""
    where = "within" if threshold.accepts(r) else "outside"
    return (f"{pair_label(*r.pair)} (KL {r.kl_mean:.4g}, top-1 {r.top1_agreement:.1%}, "
            f"{where} {threshold.text})")
