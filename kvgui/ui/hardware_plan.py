"""From the user's hardware choice to the devices the estimate plans for (Qt-free).

A choice is a detected GPU (or all of them), a GPU from the catalog, or a custom size, plus
the reserve: desktop/other apps (on a detected GPU, by default what is in use now), an
embedding model, a vision projector, and a safety margin (llama.cpp's --fit keeps 1 GiB).
The reserve comes off the budget of the first GPU (the margin and desktop off every GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from kvgui.core.config.appconfig import HW_CATALOG, HW_CUSTOM, HW_DETECTED, HardwareChoice
from kvgui.core.devices.budget import Reserve
from kvgui.core.devices.device_budget import CPU_NAME, DeviceBudget
from kvgui.ui.barmodel import DeviceView

ALL_GPUS = -1  # HardwareChoice.detected_index meaning "every detected GPU"


@dataclass(frozen=True)
class GpuSource:
    """A GPU the plan can use: from detection (with live free memory) or from the catalog."""

    name: str
    total: int
    in_use: int = 0  # desktop/other apps now (detected GPUs only)
    detected: bool = False


@dataclass(frozen=True)
class Plan:
    views: tuple[DeviceView, ...]  # GPUs then the CPU
    title: str  # "RTX 4060 (8 GiB)" for the headline
    planned: bool  # True for hardware the user may not own (catalog/custom)

    @property
    def budgets(self) -> list[DeviceBudget]:
        return [DeviceBudget(v.name, v.budget, is_gpu=v.is_gpu) for v in self.views]

    @property
    def primary(self) -> DeviceView:
        return self.views[0]


def reserve_for(choice: HardwareChoice, gpu: GpuSource, first: bool) -> int:
    """The window's reserve, by the same rules as the CLI's (kvgui.core.devices.budget.Reserve)."""
    reserve = Reserve(other_apps=choice.desktop, embedding=choice.embedding,
                      mmproj=choice.mmproj, margin=choice.margin)
    return sum(item.bytes for item in reserve.items(in_use=gpu.in_use, first=first))


def make_plan(choice: HardwareChoice, detected: Sequence[GpuSource],
              catalog_gpu: GpuSource | None, ram_available: int | None) -> Plan:
    """The devices for ``choice``; with no GPU at all, a CPU-only plan against RAM."""
    gpus: list[GpuSource] = []
    if choice.mode == HW_DETECTED and detected:
        if choice.detected_index == ALL_GPUS:
            gpus = list(detected)
        else:
            gpus = [detected[min(max(choice.detected_index, 0), len(detected) - 1)]]
    elif choice.mode == HW_CATALOG and catalog_gpu is not None:
        gpus = [catalog_gpu]
    elif choice.mode == HW_CUSTOM:
        gpus = [GpuSource("Custom GPU", choice.custom_bytes)]
    planned = choice.mode != HW_DETECTED
    views: list[DeviceView] = []
    names: set[str] = set()
    for i, g in enumerate(gpus):
        name = g.name if g.name not in names else f"{g.name} #{i}"
        names.add(name)
        views.append(DeviceView(name, g.total, reserve_for(choice, g, i == 0), True))
    if gpus:
        # host RAM holds the token embeddings and the output buffer; judged only when known
        views.append(DeviceView(CPU_NAME, None if planned else ram_available, 0, False))
        total = sum(g.total for g in gpus)
        gib = total / 1024**3
        what = gpus[0].name if len(gpus) == 1 else f"{len(gpus)} GPUs"
        title = f"{what} ({gib:.0f} GiB)" if abs(gib - round(gib)) < 0.05 else \
            f"{what} ({gib:.1f} GiB)"
    else:
        reserve = choice.embedding + choice.mmproj + choice.margin
        views.append(DeviceView(CPU_NAME, ram_available, reserve if ram_available else 0,
                                False))
        title = "CPU only (no GPU found)" if choice.mode == HW_DETECTED else "CPU only"
    return Plan(tuple(views), title, planned)
