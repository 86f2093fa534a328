"""The largest context, or the most GPU layers, that fit a memory budget.

Memory grows monotonically with the context and with the layers offloaded, so a binary
search over the estimate finds the exact boundary (contexts in llama.cpp's 256 steps).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgui.core.config.settings import N_CTX_PAD, Settings
from kvgui.core.devices.device_budget import DeviceBudget
from kvgui.core.memory.estimate import Estimate, estimate
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model.info import ModelInfo

# The K/V pairs the window compares side by side (issue: f16 … q4_0, and mixed q8_0/q4_0).
COMMON_CACHE_PAIRS: tuple[tuple[str, str], ...] = (
    ("f16", "f16"), ("q8_0", "q8_0"), ("q5_1", "q5_1"), ("q5_0", "q5_0"),
    ("q4_1", "q4_1"), ("iq4_nl", "iq4_nl"), ("q4_0", "q4_0"), ("q8_0", "q4_0"),
)

# Far beyond any trained context; llama.cpp's n_ctx is a uint32.
MAX_CONTEXT = 1 << 24


def _fits(model: ModelInfo, settings: Settings, devices: Sequence[DeviceBudget],
          memo: ModelMemo | None = None) -> bool:
    est = estimate(model, settings, devices, memo)
    return not est.refused and all(d.fits is not False for d in est.devices)


def max_context(model: ModelInfo, settings: Settings, devices: Sequence[DeviceBudget],
                limit: int = MAX_CONTEXT, memo: ModelMemo | None = None) -> int:
    """The largest context (a multiple of 256) that fits every budget; 0 if none does (or
    llama.cpp would refuse the settings at any context)."""
    memo = ModelMemo(model) if memo is None else memo.for_model(model)
    if not any(d.budget is not None for d in devices):
        return limit
    lo, hi = 0, limit // N_CTX_PAD  # in units of 256 tokens
    if not _fits(model, settings.replace(n_ctx=N_CTX_PAD), devices, memo):
        return 0
    lo = 1
    if _fits(model, settings.replace(n_ctx=hi * N_CTX_PAD), devices, memo):
        return hi * N_CTX_PAD
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits(model, settings.replace(n_ctx=mid * N_CTX_PAD), devices, memo):
            lo = mid
        else:
            hi = mid
    return lo * N_CTX_PAD


def kv_room(est: Estimate) -> int | None:
    """What the KV cache may take on the main device once everything else is placed there
    (measure's budget: which cache types fit at all); None without a budget."""
    main = est.devices[0]
    return None if main.budget is None else main.budget - (main.total - main.kv)


def max_gpu_layers(model: ModelInfo, settings: Settings,
                   devices: Sequence[DeviceBudget], memo: ModelMemo | None = None) -> int:
    """The most layers (output layer included, as -ngl counts) that fit; -1 means all."""
    memo = ModelMemo(model) if memo is None else memo.for_model(model)
    n_all = len(model.layers) + 1
    if _fits(model, settings.replace(n_gpu_layers=-1), devices, memo):
        return -1
    lo, hi = 0, n_all
    if not _fits(model, settings.replace(n_gpu_layers=0), devices, memo):
        return 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _fits(model, settings.replace(n_gpu_layers=mid), devices, memo):
            lo = mid
        else:
            hi = mid
    return lo
