"""NVIDIA GPUs through NVML (``pynvml`` from nvidia-ml-py), the library nvidia-smi uses.

NVML is initialised once per process and left open: nvmlInit can take a second on a machine
without persistence mode, too slow for the GUI's once-a-second free-memory poll.
Every NVML failure becomes a reason string; nothing here raises to the caller.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

from kvgui.core.devices.hardware import system
from kvgui.core.devices.hardware.types import GpuInfo, GpuProcess

log = logging.getLogger(__name__)

VENDOR = "nvidia"
_ready = False

# NVML error codes (nvml.h); pynvml defines the same names.
_LIBRARY_NOT_FOUND = 12
_DRIVER_NOT_LOADED = 9
_NO_PERMISSION = 4
_NOT_SUPPORTED = 3
_FUNCTION_NOT_FOUND = 13
_LIB_RM_VERSION_MISMATCH = 18
_ARGUMENT_VERSION_MISMATCH = 25
_GPU_IS_LOST = 15

_WSL_LIB = "/usr/lib/wsl/lib/libnvidia-ml.so.1"


def _pynvml() -> ModuleType:
    return importlib.import_module("pynvml")


def text(value: object) -> str:
    """NVML strings: str in new bindings, bytes (NUL-padded) in old ones."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return str(value).strip()


def cuda_version(value: int) -> str:
    """NVML's 12040 -> "12.4" (major * 1000 + minor * 10)."""
    return f"{value // 1000}.{(value % 1000) // 10}"


def explain(exc: BaseException) -> str:
    """A one-line, actionable reason for an NVML failure."""
    code = getattr(exc, "value", None)
    if code == _LIBRARY_NOT_FOUND:
        msg = "NVML library not found (libnvidia-ml.so.1 / nvml.dll): no NVIDIA driver installed"
        if os.path.exists(_WSL_LIB):
            msg += f"; on WSL add {os.path.dirname(_WSL_LIB)} to LD_LIBRARY_PATH"
        return msg
    if code == _DRIVER_NOT_LOADED:
        return "the NVIDIA driver is not loaded (is the kernel module installed? try nvidia-smi)"
    if code == _LIB_RM_VERSION_MISMATCH:
        return "NVIDIA driver/library version mismatch (the driver was updated: reboot)"
    if code == _NO_PERMISSION:
        return "no permission to open the NVIDIA device (/dev/nvidia*)"
    if code == _FUNCTION_NOT_FOUND:
        return "the NVIDIA driver is too old for this NVML query"
    if code == _GPU_IS_LOST:
        return "the GPU has fallen off the bus (GPU is lost): reboot"
    try:
        detail = str(exc)
    except Exception:  # pynvml's __str__ calls into the library, which may be gone
        detail = repr(exc)
    return f"NVML error: {detail}" if code is not None else f"{type(exc).__name__}: {detail}"


def _init(nv: ModuleType) -> None:
    global _ready
    if not _ready:
        nv.nvmlInit()
        _ready = True


def shutdown() -> None:
    """Close NVML (tests, or an app that wants the handle gone)."""
    global _ready
    if _ready:
        _ready = False
        with contextlib.suppress(Exception):
            _pynvml().nvmlShutdown()


def _optional(nv: ModuleType, call: Callable[[], Any]) -> Any:
    """A query some drivers or GPUs do not support: None instead of an error."""
    try:
        return call()
    except nv.NVMLError:
        return None


def memory(nv: ModuleType, handle: object) -> tuple[int, int, int, int]:
    """(total, free, used, reserved): the v2 query splits driver-reserved memory out of
    ``used``; drivers or bindings without it get v1, where ``used`` includes it."""
    v2 = getattr(nv, "nvmlMemory_v2", None)
    if v2 is not None:
        try:
            m = nv.nvmlDeviceGetMemoryInfo(handle, version=v2)
            return int(m.total), int(m.free), int(m.used), int(getattr(m, "reserved", 0))
        except TypeError:  # an old binding without the version argument
            pass
        except nv.NVMLError as exc:
            if getattr(exc, "value", None) not in (
                _FUNCTION_NOT_FOUND,
                _NOT_SUPPORTED,
                _ARGUMENT_VERSION_MISMATCH,
            ):
                raise
    m = nv.nvmlDeviceGetMemoryInfo(handle)
    return int(m.total), int(m.free), int(m.used), 0


def _processes(nv: ModuleType, handle: object) -> tuple[GpuProcess, ...]:
    """Compute and graphics processes, merged by pid (one process may be in both lists)."""
    found: dict[int, int | None] = {}
    for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        query = getattr(nv, fn, None)
        if query is None:
            continue
        procs = _optional(nv, lambda q=query: q(handle)) or []  # type: ignore[misc]
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            pid = int(p.pid)
            prev = found.get(pid)
            found[pid] = used if prev is None else max(prev, used or 0)
    result = []
    for pid, used in sorted(found.items()):
        name = _optional(nv, lambda pid=pid: nv.nvmlSystemGetProcessName(pid))  # type: ignore[misc]
        name = os.path.basename(text(name)) if name else ""
        result.append(GpuProcess(pid, None if used is None else int(used), name))
    return tuple(result)


def _read_gpu(nv: ModuleType, index: int, driver: str | None, cuda: str | None) -> GpuInfo:
    handle = nv.nvmlDeviceGetHandleByIndex(index)
    name = text(nv.nvmlDeviceGetName(handle)) or f"NVIDIA GPU {index}"
    uuid = _optional(nv, lambda: nv.nvmlDeviceGetUUID(handle))
    cc = _optional(nv, lambda: nv.nvmlDeviceGetCudaComputeCapability(handle))
    notes: list[str] = []
    try:
        total, free, used, reserved = memory(nv, handle)
        unified = False
    except nv.NVMLError as exc:
        if getattr(exc, "value", None) != _NOT_SUPPORTED:
            raise
        # GB10 (DGX Spark) and Jetson have no dedicated memory: NVML reports none.
        ram = system.read()
        total, free, used, reserved = ram.total, ram.available, ram.total - ram.available, 0
        unified = True
        notes.append("NVML reports no dedicated memory (unified memory): using system RAM")
    return GpuInfo(
        vendor=VENDOR,
        index=index,
        name=name,
        total=total,
        free=free,
        used=used,
        reserved=reserved,
        unified=unified,
        key=text(uuid) if uuid else "",
        driver=driver,
        cuda_driver=cuda,
        compute_capability=(int(cc[0]), int(cc[1])) if cc else None,
        processes=_processes(nv, handle),
        notes=tuple(notes),
    )


def probe() -> tuple[list[GpuInfo], list[str]]:
    """Every NVIDIA GPU NVML sees, and a reason for each thing that failed."""
    try:
        nv = _pynvml()
    except ImportError:
        return [], ["NVIDIA: nvidia-ml-py is not installed (pip install nvidia-ml-py)"]
    try:
        _init(nv)
        count = int(nv.nvmlDeviceGetCount())
    except nv.NVMLError as exc:
        return [], [f"NVIDIA: {explain(exc)}"]
    except OSError as exc:
        return [], [f"NVIDIA: cannot load NVML: {exc}"]
    if count == 0:
        return [], ["NVIDIA: the driver is loaded but NVML sees no GPU"]
    raw_driver = _optional(nv, nv.nvmlSystemGetDriverVersion)
    raw_cuda = _optional(nv, nv.nvmlSystemGetCudaDriverVersion)
    driver = text(raw_driver) if raw_driver else None
    cuda = cuda_version(int(raw_cuda)) if raw_cuda else None
    gpus: list[GpuInfo] = []
    reasons: list[str] = []
    for i in range(count):
        try:
            gpus.append(_read_gpu(nv, i, driver, cuda))
        except nv.NVMLError as exc:
            reasons.append(f"NVIDIA: GPU {i}: {explain(exc)}")
    return gpus, reasons


def free_memory(gpu: GpuInfo) -> int | None:
    """Free bytes on this GPU now (one NVML call), or None if it cannot be read."""
    try:
        nv = _pynvml()
        _init(nv)
        if gpu.key:
            handle = nv.nvmlDeviceGetHandleByUUID(gpu.key)
        else:
            handle = nv.nvmlDeviceGetHandleByIndex(gpu.index)
        if gpu.unified:
            return system.read().available
        return memory(nv, handle)[1]
    except Exception:  # the poll must never fail: no figure this second
        log.debug("NVML free-memory poll failed", exc_info=True)
        return None
