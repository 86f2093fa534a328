"""Fakes at the hardware boundary only: pynvml's functions, and sysfs trees in tmp dirs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pynvml
import pytest

from kvgui.core.devices.hardware import nvidia

GiB = 1024**3
MiB = 1024**2


@dataclass
class FakeGpu:
    """One GPU as the NVML C library would describe it."""

    name: str | bytes = "NVIDIA GeForce RTX 4060"
    total: int = 8 * GiB
    free: int = 7 * GiB
    reserved: int = 300 * MiB
    uuid: str | bytes = "GPU-0000"
    cc: tuple[int, int] = (8, 9)
    compute: list[tuple[int, int | None]] = field(default_factory=list)
    graphics: list[tuple[int, int | None]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # NVML function -> error code


class FakeNvml:
    """Installs fake pynvml.nvml* functions over the real module (restored by monkeypatch).

    ``init_error`` fails nvmlInit; ``v2`` False makes nvmlDeviceGetMemoryInfo_v2 missing in
    the driver (FUNCTION_NOT_FOUND); ``old_binding`` drops the ``version`` argument."""

    def __init__(self, mp: pytest.MonkeyPatch) -> None:
        self.mp = mp
        self.gpus: list[FakeGpu] = []
        self.init_error: int | None = None
        self.v2 = True
        self.old_binding = False
        self.driver: str | bytes = "550.54.14"
        self.cuda = 12040
        self.process_names: dict[int, str | bytes] = {}
        self.init_calls = 0
        mp.setattr(nvidia, "_ready", False)
        for name in dir(self):
            if name.startswith("nvml"):
                mp.setattr(pynvml, name, getattr(self, name))
        mp.setattr(pynvml, "nvmlDeviceGetMemoryInfo", self._memory_entry())

    def add(self, **kwargs: Any) -> FakeGpu:
        gpu = FakeGpu(**kwargs)
        self.gpus.append(gpu)
        return gpu

    def _check(self, gpu: FakeGpu, fn: str) -> None:
        if fn in gpu.errors:
            raise pynvml.NVMLError(gpu.errors[fn])

    def _gpu(self, handle: Any) -> FakeGpu:
        return self.gpus[handle]

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise pynvml.NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._check(self.gpus[index], "handle")
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> int:
        for i, g in enumerate(self.gpus):
            if nvidia.text(g.uuid) == uuid:
                return i
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetName(self, h: int) -> str | bytes:
        return self._gpu(h).name

    def nvmlDeviceGetUUID(self, h: int) -> str | bytes:
        return self._gpu(h).uuid

    def nvmlDeviceGetCudaComputeCapability(self, h: int) -> tuple[int, int]:
        self._check(self._gpu(h), "cc")
        return self._gpu(h).cc

    def nvmlSystemGetDriverVersion(self) -> str | bytes:
        return self.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return self.cuda

    def nvmlSystemGetProcessName(self, pid: int) -> str | bytes:
        if pid not in self.process_names:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)
        return self.process_names[pid]

    def _procs(self, gpu: FakeGpu, which: str) -> list[SimpleNamespace]:
        self._check(gpu, which)
        rows = gpu.compute if which == "compute" else gpu.graphics
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in rows]

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> list[SimpleNamespace]:
        return self._procs(self._gpu(h), "compute")

    def nvmlDeviceGetGraphicsRunningProcesses(self, h: int) -> list[SimpleNamespace]:
        return self._procs(self._gpu(h), "graphics")

    def _memory(self, h: int, version: int | None) -> SimpleNamespace:
        gpu = self._gpu(h)
        self._check(gpu, "memory")
        if version:
            if not self.v2:
                raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
            used = gpu.total - gpu.free - gpu.reserved
            return SimpleNamespace(
                version=version, total=gpu.total, reserved=gpu.reserved, free=gpu.free, used=used
            )
        self._check(gpu, "memory_v1")
        return SimpleNamespace(total=gpu.total, free=gpu.free, used=gpu.total - gpu.free)

    def _memory_entry(self) -> Callable[..., SimpleNamespace]:
        def with_version(handle: int, version: int | None = None) -> SimpleNamespace:
            if self.old_binding and version is not None:
                raise TypeError("nvmlDeviceGetMemoryInfo() got an unexpected keyword argument")
            return self._memory(handle, version)

        return with_version


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    return FakeNvml(monkeypatch)


def make_card(
    root: Path,
    number: int,
    vendor: str = "0x1002",
    device: str = "0x744c",
    revision: str = "0xc8",
    **files: str | int,
) -> Path:
    """A /sys/class/drm/cardN/device directory; ``files`` become its attribute files."""
    dev = root / f"card{number}" / "device"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text(vendor + "\n")
    (dev / "device").write_text(device + "\n")
    (dev / "revision").write_text(revision + "\n")
    for name, value in files.items():
        (dev / name).write_text(f"{value}\n")
    return dev


class Sysfs:
    """A fake /sys/class/drm under a tmp dir."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def card(self, number: int, **kwargs: Any) -> Path:
        return make_card(self.root, number, **kwargs)


@pytest.fixture
def sysfs(tmp_path: Path) -> Sysfs:
    root = tmp_path / "drm"
    root.mkdir()
    return Sysfs(root)
