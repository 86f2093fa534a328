"""detect(): every GPU, the system RAM and llama.cpp's view, with a reason for each miss.

It never raises: the GUI calls it at start-up on machines with broken drivers, missing
libraries and odd containers, and must still open with a CPU-only plan.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from kvgui.core.devices.hardware import amd, apple, drm, llama_backend, nvidia, system
from kvgui.core.devices.hardware.types import GpuInfo, HardwareReport, LlamaBackend

Probe = Callable[[], tuple[list[GpuInfo], list[str]]]

PROBES: dict[str, Probe] = {
    "NVIDIA": nvidia.probe,
    "AMD": amd.probe,
    "Apple": apple.probe,
}


def _pci_hints(gpus: list[GpuInfo], root: Path) -> list[str]:
    """GPUs on the PCI bus that no probe could read: say they exist, and how to plan for them."""
    hints = []
    have = {g.vendor for g in gpus}
    for card in drm.scan(root):
        if card.vendor == "NVIDIA" and "nvidia" not in have:
            hints.append(
                f"NVIDIA: card{card.number} is an NVIDIA GPU (PCI 10de:{card.device_id[2:]}) but "
                "NVML cannot reach it; use --gpu-model or --vram to plan for it"
            )
        elif card.vendor == "Intel":
            hints.append(
                f"Intel: card{card.number} (PCI 8086:{card.device_id[2:]}): kvgui does not read "
                'Intel GPU memory; use --gpu-model (e.g. "Arc B580") or --vram to plan for it'
            )
    return hints


def detect(*, llama: bool = True, drm_root: Path = drm.DRM_ROOT) -> HardwareReport:
    """Probe everything. ``llama=False`` skips importing llama_cpp (the CLI's budget path)."""
    gpus: list[GpuInfo] = []
    reasons: list[str] = []
    for label, probe in PROBES.items():
        try:
            found, why = probe()
        except Exception as exc:  # a probe bug must not take the app down
            found, why = [], [f"{label}: detection failed ({type(exc).__name__}: {exc})"]
        gpus += found
        reasons += why
    with contextlib.suppress(Exception):
        reasons += _pci_hints(gpus, drm_root)
    ram, why = system.probe()
    reasons += why
    backend: LlamaBackend | None = None
    if llama:
        try:
            backend = llama_backend.probe()
        except Exception as exc:
            backend = LlamaBackend(installed=False, reason=f"{type(exc).__name__}: {exc}")
    return HardwareReport(
        gpus=tuple(gpus),
        system=ram,
        llama=backend,
        reasons=tuple(reasons),
        advice=tuple(llama_backend.offload_advice(gpus, backend)),
        host_cpu=llama_backend.probe_host_cpu(),  # its libraries by ctypes: ~40 ms, once
    )


_FREE: dict[str, Callable[[GpuInfo], int | None]] = {
    nvidia.VENDOR: nvidia.free_memory,
    amd.VENDOR: amd.free_memory,
    apple.VENDOR: apple.free_memory,
}


def free_memory(gpu: GpuInfo) -> int | None:
    """Free bytes on ``gpu`` now; cheap enough to poll once a second. None if unreadable."""
    reader = _FREE.get(gpu.vendor)
    if reader is None:
        return gpu.free
    try:
        return reader(gpu)
    except Exception:
        return None
