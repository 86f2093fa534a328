"""What one stacked bar shows, as plain data: the widgets only draw these.

A row is one device: the estimate's parts placed on it, the reserve the user set aside
there, and the device's memory. ``budget`` (memory less reserve) is the line the bar is
judged against; over budget is ``used - budget`` > 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PART_KEYS = ("weights", "kv_k", "kv_v", "compute", "output")


@dataclass(frozen=True)
class BarRow:
    label: str
    parts: tuple[tuple[str, int], ...]  # (segment key, bytes), in PART_KEYS order
    reserve: int = 0
    capacity: int | None = None  # the device's memory; None = unknown (no verdict)
    is_gpu: bool = True

    @property
    def used(self) -> int:
        return sum(b for _, b in self.parts)

    @property
    def budget(self) -> int | None:
        return None if self.capacity is None else self.capacity - self.reserve

    @property
    def over(self) -> int:
        """Bytes over the budget (0 when it fits or the budget is unknown)."""
        b = self.budget
        return 0 if b is None else max(0, self.used - b)

    @property
    def headroom(self) -> int:
        b = self.budget
        return 0 if b is None else max(0, b - self.used)

    def part(self, key: str) -> int:
        return dict(self.parts).get(key, 0)


@dataclass(frozen=True)
class DeviceView:
    """A device as the window plans for it: name, memory, and the reserve set aside there."""

    name: str
    capacity: int | None
    reserve: int = 0
    is_gpu: bool = True

    @property
    def budget(self) -> int | None:
        return None if self.capacity is None else max(0, self.capacity - self.reserve)


def row_from_device_memory(dm: object, view: DeviceView | None) -> BarRow:
    """A BarRow from one of the estimate's DeviceMemory entries and the window's view of it."""
    parts = tuple((k, int(getattr(dm, k))) for k in PART_KEYS)
    name = str(getattr(dm, "name", view.name if view else "?"))
    is_gpu = bool(getattr(dm, "is_gpu", True))
    if view is not None:
        return BarRow(name, parts, view.reserve, view.capacity, is_gpu)
    budget = getattr(dm, "budget", None)
    return BarRow(name, parts, 0, None if budget is None else int(budget), is_gpu)


def rows_from_estimate(est: object, views: Sequence[DeviceView]) -> list[BarRow]:
    """One row per device of the estimate, matched to the window's views by name.

    Devices with nothing placed on them and no budget (an idle host) are left out.
    """
    by_name = {v.name: v for v in views}
    rows = []
    for dm in getattr(est, "devices", ()):
        row = row_from_device_memory(dm, by_name.get(str(getattr(dm, "name", ""))))
        if row.used == 0 and row.capacity is None:
            continue
        rows.append(row)
    return rows
