"""Per K/V cache pair: does the model fit at this context, with what headroom, and the longest
context that fits -- one row of the quant table (a repo's quants x cache types)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kvgui.core.config.settings import Settings
from kvgui.core.devices.device_budget import DeviceBudget
from kvgui.core.memory.estimate import estimate
from kvgui.core.memory.fit import MAX_CONTEXT, max_context
from kvgui.core.model.info import ModelInfo


@dataclass(frozen=True)
class FitCell:
    type_k: str
    type_v: str
    fits: bool | None  # at the settings' context; None: no budget to judge
    headroom: int | None  # the tightest budgeted device's headroom there (negative: over)
    max_ctx: int | None  # the longest context that fits; None when llama.cpp refuses the pair
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type_k": self.type_k, "type_v": self.type_v, "fits": self.fits,
                "headroom": self.headroom, "max_ctx": self.max_ctx, "error": self.error}


def fit_row(model: ModelInfo, settings: Settings, devices: Sequence[DeviceBudget],
            pairs: Sequence[tuple[str, str]]) -> list[FitCell]:
    cells = []
    for tk, tv in pairs:
        s = settings.replace(type_k=tk, type_v=tv)
        est = estimate(model, s, devices)
        if est.errors:
            cells.append(FitCell(tk, tv, False, None, None, est.errors[0]))
            continue
        rooms = [d.headroom for d in est.devices if d.budget is not None and
                 d.headroom is not None]
        headroom = min(rooms) if rooms else None
        n = max_context(model, s, devices)
        cells.append(FitCell(tk, tv, est.fits, headroom, min(n, MAX_CONTEXT)))
    return cells
