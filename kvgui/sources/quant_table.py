"""A repo's quants x K/V cache pairs for one machine: fits, headroom, longest context.

Each quant's header is read (range requests, or the header cache; a few at a time, since
each is two short requests) and planned with the same estimate as a file on disk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kvgui.core.config.settings import Settings
from kvgui.core.devices.device_budget import DeviceBudget
from kvgui.core.gguf.reader import GGUFError
from kvgui.core.memory.fit_table import FitCell, fit_row
from kvgui.sources.hub import HubConfig, RepoListing
from kvgui.sources.hub_errors import HubError
from kvgui.sources.quants import QuantGroup
from kvgui.sources.resolve import OpenedModel, open_listed

log = logging.getLogger(__name__)

TABLE_PAIRS: tuple[tuple[str, str], ...] = (
    ("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "q4_0"), ("q4_0", "q4_0"))


@dataclass
class QuantRow:
    group: QuantGroup
    opened: OpenedModel | None = None
    error: str | None = None
    cells: list[FitCell] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        g = self.group
        out: dict[str, Any] = {
            "quant": g.tag or None, "files": [f.path for f in g.files], "size": g.size,
            "downloaded": bool(self.opened and self.opened.local_path),
            "hf": " ".join(self.opened.hf_args[1:]) if self.opened else None,
            "error": self.error, "pairs": [c.to_json() for c in self.cells]}
        if self.opened is not None:
            out["model"] = self.opened.info.name
        return out


def read_quants(listing: RepoListing, groups: Sequence[QuantGroup], *,
                config: HubConfig | None = None, workers: int = 4,
                on_row: Callable[[QuantRow], None] | None = None) -> list[QuantRow]:
    """Every group's header (in listing order); a failure is that row's error, not the table's."""
    cfg = config or HubConfig.from_env()

    def one(g: QuantGroup) -> QuantRow:
        try:
            row = QuantRow(g, open_listed(listing, g, config=cfg))
        except (HubError, GGUFError) as exc:
            log.info("quant %s of %s: %s", g.label, listing.repo, exc)
            row = QuantRow(g, error=str(exc))
        if on_row is not None:
            on_row(row)
        return row

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, groups))


def plan_rows(rows: Sequence[QuantRow], settings: Settings, devices: Sequence[DeviceBudget],
              pairs: Sequence[tuple[str, str]] = TABLE_PAIRS) -> None:
    """Fill each readable row's cells for these settings and budgets."""
    for row in rows:
        if row.opened is not None:
            row.cells = fit_row(row.opened.info, settings, devices, pairs)
