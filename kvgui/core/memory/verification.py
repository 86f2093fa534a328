"""How far the compute-buffer figure can be trusted, per architecture: shown beside it.

KV cache, recurrent state, padded context and weights follow llama.cpp's constructors and are
checked to the byte for every family (tests/core/test_architectures.py). The compute buffer
is exact only where compute.py replays ggml-alloc over the architecture's own graph
(compute.simulates: a builder in builders/) and one backend -- the CPU -- computes
everything; elsewhere it is the stage model, whose error against llama.cpp's no_alloc dry
run was measured per family over benchmarks/accuracy.py's full settings matrix (bundled
llama.cpp 0c1e570). That measured range is the expected error the window, the CLI table and
the JSON show ("±X%, not verified for <arch>"); an architecture kvgui has no fixture for
shows only that it is not verified, with the widest error seen on any family as a guide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvgui.core.memory.compute import simulates

if TYPE_CHECKING:
    from kvgui.core.model.info import ModelInfo

EXACT = "exact"  # ggml-alloc replayed over the architecture's graph, checked on the CPU
REPLAYED = "replayed"  # the same replay with a GPU's alignment: not checked on a GPU
MEASURED = "measured"  # the stage model, its error measured against llama.cpp for this family
UNVERIFIED = "unverified"  # an architecture kvgui has no fixture for

# Compute-buffer error of the stage model against llama.cpp (our figure / llama.cpp's - 1),
# min and max over benchmarks/accuracy.py's 43 settings (cache f16 / q8_0 / q4_0, flash
# attention on and off, 4096 / 10000 / 32768 tokens, -np 4 with and without -kvu,
# --swa-full, -ub 1024), CPU-only, BF16 fixtures. Replayed families are not listed: exact.
# Re-measure with `python benchmarks/accuracy.py --json out.json` after changing compute.py.
MEASURED_ERROR: dict[str, tuple[float, float]] = {
    "deepseek2": (-0.2589, 0.0300),
}
# Replayed architectures whose replay still misses some settings (same measurement): none
# since the graphs are rebuilt by builders/ (all 645 runs of the replayed families exact).
REPLAY_MISSES: dict[str, tuple[float, float]] = {}


@dataclass(frozen=True)
class ComputeCheck:
    """The compute buffer's standing for one model and placement."""

    arch: str
    status: str  # EXACT, REPLAYED, MEASURED or UNVERIFIED
    low: float = 0.0  # the measured error range (relative; negative: kvgui reserves less)
    high: float = 0.0

    @property
    def error(self) -> float:
        """The expected error bound, as a fraction (0.25 = ±25%)."""
        return max(abs(self.low), abs(self.high))

    @property
    def percent(self) -> int:
        """The bound rounded up to a whole percent, at least 1 (what the window shows)."""
        return max(1, math.ceil(self.error * 100 - 1e-9))

    @property
    def verified(self) -> bool:
        return self.status == EXACT

    @property
    def label(self) -> str:
        if self.status == EXACT:
            return "exact (llama.cpp's allocator replayed)"
        if self.status == REPLAYED:
            return "replayed for the GPU's alignment, not verified on a GPU"
        if self.status == MEASURED:
            return f"±{self.percent}%, not verified for {self.arch}"
        return f"±{self.percent}%?, not verified for {self.arch} (no kvgui fixture)"

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "expected_error": round(self.error, 4),
                "measured_range": [round(self.low, 4), round(self.high, 4)],
                "label": self.label}


def compute_check(model: ModelInfo, on_gpu: bool = False) -> ComputeCheck:
    """What kvgui can say about its compute buffer for ``model`` (``on_gpu``: a GPU computes
    part of the graph)."""
    if simulates(model):
        missed = REPLAY_MISSES.get(model.arch)
        if missed is not None:
            return ComputeCheck(model.arch, MEASURED, *missed)
        return ComputeCheck(model.arch, REPLAYED if on_gpu else EXACT)
    measured = MEASURED_ERROR.get(model.arch)
    if measured is not None:
        return ComputeCheck(model.arch, MEASURED, *measured)
    widest = max((max(abs(lo), abs(hi)) for lo, hi in MEASURED_ERROR.values()), default=0.5)
    return ComputeCheck(model.arch, UNVERIFIED, -widest, widest)
