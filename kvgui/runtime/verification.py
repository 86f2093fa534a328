"""What a dry run verifies: kvgui's estimate for the devices llama.cpp used in it, and which
layout that is next to the one planned (the CLI's ``verify`` and the window's Verify).

A dry run can only use this machine's llama.cpp devices. When the plan is for other
hardware (a catalog GPU, a size), the dry run checks the same settings on this machine's
layout: weights and KV sizes are the same on any device, the compute buffer is not. Saying
so is the difference between three unexplained totals on one screen and one explained one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kvgui.core.config.settings import Settings
from kvgui.core.devices.device_budget import DeviceBudget, cpu
from kvgui.core.memory.estimate import Estimate, estimate
from kvgui.core.model.info import ModelInfo


def dry_run_gpus(result: Any) -> list[str]:
    """The GPU-like devices the dry run's llama.cpp has, by name."""
    return [d.name for d in getattr(result, "devices", []) if d.type in ("gpu", "igpu")]


def estimate_as_verified(model: ModelInfo, settings: Settings, result: Any) -> Estimate:
    """kvgui's estimate for exactly the devices the dry run placed memory on."""
    gpus = [DeviceBudget(name, None) for name in dry_run_gpus(result)]
    return estimate(model, settings, [*gpus, cpu()])


def layout_note(planned: Sequence[str], verified_gpus: Sequence[str]) -> str:
    """One line: what the dry run checked, and how it relates to the planned layout."""
    here = ", ".join(verified_gpus) if verified_gpus else "no GPU (CPU only)"
    if not planned or list(planned) == list(verified_gpus):
        return f"verified on this machine's llama.cpp devices: {here}"
    return (f"the dry run can only use this machine's llama.cpp devices ({here}), not the "
            f"planned {', '.join(planned)}: it checks the same settings on the CPU layout; "
            "weights and KV sizes are the same on any device, the compute buffer is not")
