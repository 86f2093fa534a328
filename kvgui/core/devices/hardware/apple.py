"""Apple silicon: one pool of unified memory, of which Metal lets the GPU wire only a share.

llama.cpp's Metal backend reports ``recommendedMaxWorkingSetSize`` as the device's memory.
An admin can raise it with ``sudo sysctl iogpu.wired_limit_mb=N``; otherwise macOS allows about
two thirds of RAM up to 36 GiB and three quarters above (what Metal reports on M1–M4 Macs).
"""

from __future__ import annotations

import logging
import platform
import subprocess
import sys
from collections.abc import Callable

from kvgui.core.devices.hardware import system
from kvgui.core.devices.hardware.types import GpuInfo
from kvgui.core.sizes import GiB, MiB, format_bytes

log = logging.getLogger(__name__)

VENDOR = "apple"
Sysctl = Callable[[str], str | None]


def default_working_set(total: int) -> int:
    """Metal's default GPU share of unified memory when iogpu.wired_limit_mb is not set."""
    return total * 2 // 3 if total <= 36 * GiB else total * 3 // 4


def sysctl(name: str) -> str | None:
    """``sysctl -n NAME`` or None (unknown key, or not macOS)."""
    try:
        out = subprocess.run(
            ["sysctl", "-n", name], capture_output=True, text=True, timeout=2, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    value = out.stdout.strip()
    return value if out.returncode == 0 and value else None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def working_set_limit(total: int, read: Sysctl = sysctl) -> tuple[int, str]:
    """(bytes the GPU may wire, where that figure comes from)."""
    for key in ("iogpu.wired_limit_mb", "debug.iogpu.wired_limit"):
        mb = _int(read(key))
        if mb:  # 0 means "the default"
            return mb * MiB, f"{key}={mb}"
    return default_working_set(total), "macOS default share"


def probe(
    read: Sysctl = sysctl,
    os_name: str = sys.platform,
    machine: str = platform.machine(),
    available: Callable[[], int] | None = None,
) -> tuple[list[GpuInfo], list[str]]:
    """The Apple GPU on an Apple-silicon Mac; a reason on anything else."""
    if os_name != "darwin":
        return [], ["Apple: not macOS"]
    if machine != "arm64":
        return [], ["Apple: an Intel Mac (no unified memory); plan with --gpu-model or --vram"]
    total = _int(read("hw.memsize"))
    if not total:
        return [], ["Apple: sysctl hw.memsize did not answer"]
    name = read("machdep.cpu.brand_string") or "Apple silicon"
    limit, source = working_set_limit(total, read)
    avail = (available or (lambda: system.read().available))()
    free = min(limit, avail)
    note = (
        f"unified memory: {format_bytes(total)} RAM, the GPU may use {format_bytes(limit)} "
        f"({source}); free is capped by the RAM available now"
    )
    gpu = GpuInfo(
        vendor=VENDOR,
        index=0,
        name=f"{name} GPU" if not name.endswith("GPU") else name,
        total=limit,
        free=free,
        used=limit - free,
        unified=True,
        key="metal",
        notes=(note,),
    )
    return [gpu], []


def free_memory(gpu: GpuInfo) -> int | None:
    try:
        return min(gpu.total, system.read().available)
    except Exception:  # the poll must never fail: no figure this second
        log.debug("Apple free-memory poll failed", exc_info=True)
        return None
