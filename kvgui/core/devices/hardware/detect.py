"""detect(): every GPU, the system RAM and llama.cpp's view, with a reason for each miss.

It never raises: the GUI calls it at start-up on machines with broken drivers, missing
libraries and odd containers, and must still open with a CPU-only plan.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from kvgui.core.devices.hardware import amd, apple, drm, nvidia, system
from kvgui.core.devices.hardware.llama_advice import offload_advice
from kvgui.core.devices.hardware.types import GpuInfo, HardwareReport, LlamaBackend

log = logging.getLogger(__name__)

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


def detect(*, llama_probe: Callable[[], LlamaBackend] | None = None,
           drm_root: Path = drm.DRM_ROOT) -> HardwareReport:
    """Probe every GPU and the RAM; ``llama_probe`` (kvgui.runtime.llama_backend.probe, which
    imports llama_cpp) adds what the installed llama.cpp can use. Without it, no llama view:
    the CLI's budget path and the core never load llama.cpp."""
    gpus: list[GpuInfo] = []
    reasons: list[str] = []
    for label, probe in PROBES.items():
        try:
            found, why = probe()
        except Exception as exc:  # a probe bug must not take the app down
            log.warning("%s detection failed", label, exc_info=True)
            found, why = [], [f"{label}: detection failed ({type(exc).__name__}: {exc})"]
        gpus += found
        reasons += why
    try:
        reasons += _pci_hints(gpus, drm_root)
    except Exception:  # hints are extras: a sysfs oddity must not stop detection
        log.info("PCI scan for unreadable GPUs failed", exc_info=True)
    ram, why = system.probe()
    reasons += why
    backend: LlamaBackend | None = None
    if llama_probe is not None:
        try:
            backend = llama_probe()
        except Exception as exc:  # the probe never raises; a bug in it must not either
            log.warning("llama.cpp backend probe failed", exc_info=True)
            backend = LlamaBackend(installed=False, reason=f"{type(exc).__name__}: {exc}")
    return HardwareReport(
        gpus=tuple(gpus),
        system=ram,
        llama=backend,
        reasons=tuple(reasons),
        advice=tuple(offload_advice(gpus, backend)),
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
    except Exception:  # the poll must never fail: no figure this second
        log.debug("free-memory poll of %s failed", gpu.name, exc_info=True)
        return None
