"""What detection found: plain frozen records the GUI, the CLI and the budget read.

Every field that a driver may not report is Optional, so a partial answer is still an answer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kvgui.core.devices.hardware.cpu import HostCpu


def _plain(value: Any) -> Any:
    """asdict() keeps tuples; JSON and its readers want lists."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class GpuProcess:
    """A process holding GPU memory; ``used`` is None where the driver hides it (WDDM)."""

    pid: int
    used: int | None
    name: str = ""


@dataclass(frozen=True)
class GpuInfo:
    """One GPU and its memory in bytes.

    ``total``/``free`` are what llama.cpp can allocate from: dedicated VRAM on a discrete card,
    the Metal working-set limit on Apple silicon, VRAM + GTT on an AMD APU (``unified``).
    ``reserved`` is memory the driver keeps for itself (NVML's v2 query; 0 when unknown).
    ``key`` finds the same GPU again for a cheap free-memory poll (NVML UUID, sysfs dir).
    """

    vendor: str
    index: int
    name: str
    total: int
    free: int | None
    used: int | None = None
    reserved: int = 0
    unified: bool = False
    key: str = ""
    driver: str | None = None
    cuda_driver: str | None = None
    compute_capability: tuple[int, int] | None = None
    processes: tuple[GpuProcess, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def in_use(self) -> int:
        """Bytes not available to a new process now: desktop, other apps, driver."""
        if self.free is not None:
            return max(0, self.total - self.free)
        return self.used or 0

    @property
    def processes_bytes(self) -> int | None:
        """Memory the listed processes hold, or None when no process reports a figure."""
        known = [p.used for p in self.processes if p.used is not None]
        return sum(known) if known else None

    def to_dict(self) -> dict[str, Any]:
        d = _plain(asdict(self))
        d["in_use"] = self.in_use
        d["compute_capability"] = (
            None if self.compute_capability is None else ".".join(map(str, self.compute_capability))
        )
        return d


@dataclass(frozen=True)
class SystemMemory:
    """Host RAM: where CPU layers, the CPU KV cache and mmap'd weights live."""

    total: int
    available: int


@dataclass(frozen=True)
class BackendDevice:
    """A device as llama.cpp's ggml backend registry sees it (``kind``: CPU, GPU, IGPU, ...)."""

    name: str
    description: str
    kind: str
    free: int | None = None
    total: int | None = None


@dataclass(frozen=True)
class LlamaBackend:
    """What the installed llama-cpp-python can do; ``reason`` says why something is unknown."""

    installed: bool
    version: str | None = None
    gpu_offload: bool | None = None
    devices: tuple[BackendDevice, ...] = ()
    reason: str | None = None
    host_cpu: HostCpu | None = None  # its CPU backend's extra buffer types and features


@dataclass(frozen=True)
class HardwareReport:
    """Everything detect() found. ``reasons`` explain what was not found or failed, one line
    each ("NVIDIA: ..."); ``advice`` says what the user can do about it."""

    gpus: tuple[GpuInfo, ...] = ()
    system: SystemMemory | None = None
    llama: LlamaBackend | None = None
    reasons: tuple[str, ...] = ()
    advice: tuple[str, ...] = field(default=())
    host_cpu: HostCpu | None = None  # llama.cpp's CPU backend here (extra buffer types)

    @property
    def cpu_only(self) -> bool:
        return not self.gpus

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpus": [g.to_dict() for g in self.gpus],
            "system": None if self.system is None else asdict(self.system),
            "llama": None if self.llama is None else _plain(asdict(self.llama)),
            "reasons": list(self.reasons),
            "advice": list(self.advice),
            "cpu_only": self.cpu_only,
            "host_cpu": None if self.host_cpu is None else self.host_cpu.to_dict(),
        }
