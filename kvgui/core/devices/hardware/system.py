"""Host RAM via psutil: the budget for CPU layers and for a CPU-only plan."""

from __future__ import annotations

import logging

import psutil

from kvgui.core.devices.hardware.types import SystemMemory

log = logging.getLogger(__name__)


def read() -> SystemMemory:
    """Total and available RAM now (available = what a new process can take without swap)."""
    vm = psutil.virtual_memory()
    return SystemMemory(total=int(vm.total), available=int(vm.available))


def probe() -> tuple[SystemMemory | None, list[str]]:
    try:
        return read(), []
    except Exception as exc:  # psutil raises OSError subclasses on odd kernels/containers
        log.warning("cannot read the system RAM", exc_info=True)
        return None, [f"System RAM: cannot read it ({type(exc).__name__}: {exc})"]
