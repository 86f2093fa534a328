"""NVML probe: every path through pynvml, with its functions replaced (no GPU needed)."""

from __future__ import annotations

import sys

import psutil
import pynvml
import pytest

from kvgui.core.devices.hardware import nvidia

GiB = 1024**3
MiB = 1024**2


def test_reads_every_gpu_with_the_v2_memory_query(fake_nvml):
    fake_nvml.add(
        name="NVIDIA GeForce RTX 4060",
        total=8 * GiB,
        free=6 * GiB,
        reserved=300 * MiB,
        uuid="GPU-a",
        compute=[(111, 1 * GiB)],
        graphics=[(111, 1 * GiB), (222, 200 * MiB)],
    )
    fake_nvml.add(name="NVIDIA RTX A6000", total=48 * GiB, free=47 * GiB, uuid="GPU-b", cc=(8, 6))
    fake_nvml.process_names = {111: "/usr/bin/python3", 222: b"Xorg\x00"}

    gpus, reasons = nvidia.probe()

    assert reasons == []
    a, b = gpus
    assert (a.index, a.name, a.total, a.free) == (0, "NVIDIA GeForce RTX 4060", 8 * GiB, 6 * GiB)
    assert a.reserved == 300 * MiB
    assert a.used == 8 * GiB - 6 * GiB - 300 * MiB  # v2: used excludes driver-reserved memory
    assert a.in_use == 2 * GiB
    assert (a.driver, a.cuda_driver, a.compute_capability) == ("550.54.14", "12.4", (8, 9))
    assert a.key == "GPU-a"
    # pid 111 is in both lists: counted once
    assert [(p.pid, p.used, p.name) for p in a.processes] == [
        (111, 1 * GiB, "python3"),
        (222, 200 * MiB, "Xorg"),
    ]
    assert a.processes_bytes == 1 * GiB + 200 * MiB
    assert (b.index, b.name, b.compute_capability, b.processes) == (
        1,
        "NVIDIA RTX A6000",
        (8, 6),
        (),
    )


def test_old_bindings_return_bytes(fake_nvml):
    fake_nvml.add(name=b"NVIDIA GeForce RTX 3090\x00\x00", uuid=b"GPU-bytes")
    fake_nvml.driver = b"470.256.02"
    fake_nvml.cuda = 11040
    (gpu,), _ = nvidia.probe()
    assert gpu.name == "NVIDIA GeForce RTX 3090"
    assert gpu.key == "GPU-bytes"
    assert (gpu.driver, gpu.cuda_driver) == ("470.256.02", "11.4")


def test_binding_without_v2_struct_uses_v1(fake_nvml, monkeypatch):
    monkeypatch.delattr(pynvml, "nvmlMemory_v2")
    fake_nvml.add(total=8 * GiB, free=5 * GiB, reserved=300 * MiB)
    (gpu,), _ = nvidia.probe()
    assert (gpu.total, gpu.free, gpu.reserved) == (8 * GiB, 5 * GiB, 0)
    assert gpu.used == 3 * GiB  # v1: used includes the reserved memory


def test_driver_without_v2_function_uses_v1(fake_nvml):
    fake_nvml.v2 = False
    fake_nvml.add(total=8 * GiB, free=5 * GiB)
    (gpu,), reasons = nvidia.probe()
    assert reasons == []
    assert (gpu.free, gpu.reserved, gpu.used) == (5 * GiB, 0, 3 * GiB)


def test_binding_without_version_argument_uses_v1(fake_nvml):
    fake_nvml.old_binding = True
    fake_nvml.add(total=12 * GiB, free=11 * GiB)
    (gpu,), _ = nvidia.probe()
    assert (gpu.total, gpu.free, gpu.reserved) == (12 * GiB, 11 * GiB, 0)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "no NVIDIA driver installed"),
        (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "driver is not loaded"),
        (pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, "version mismatch"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "no permission"),
        (pynvml.NVML_ERROR_UNKNOWN, "NVML error: Unknown Error"),
    ],
)
def test_init_failures_become_reasons(fake_nvml, code, words):
    fake_nvml.init_error = code
    fake_nvml.add()
    gpus, reasons = nvidia.probe()
    assert gpus == []
    assert len(reasons) == 1
    assert reasons[0].startswith("NVIDIA: ")
    assert words in reasons[0]


def test_failed_init_is_retried_on_the_next_probe(fake_nvml):
    fake_nvml.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    fake_nvml.add()
    assert nvidia.probe()[0] == []
    fake_nvml.init_error = None
    assert len(nvidia.probe()[0]) == 1
    nvidia.probe()
    assert fake_nvml.init_calls == 2  # initialised once, then kept open


def test_missing_nvidia_ml_py(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)
    gpus, reasons = nvidia.probe()
    assert gpus == []
    assert reasons == ["NVIDIA: nvidia-ml-py is not installed (pip install nvidia-ml-py)"]


def test_no_gpu_visible(fake_nvml):
    gpus, reasons = nvidia.probe()
    assert gpus == []
    assert reasons == ["NVIDIA: the driver is loaded but NVML sees no GPU"]


def test_one_broken_gpu_does_not_hide_the_others(fake_nvml):
    fake_nvml.add(name="good")
    fake_nvml.add(name="lost", errors={"handle": pynvml.NVML_ERROR_GPU_IS_LOST})
    gpus, reasons = nvidia.probe()
    assert [g.name for g in gpus] == ["good"]
    assert reasons == ["NVIDIA: GPU 1: the GPU has fallen off the bus (GPU is lost): reboot"]


def test_unsupported_queries_are_left_empty(fake_nvml):
    fake_nvml.add(
        compute=[(5, None)],  # WDDM: no per-process figure
        errors={"graphics": pynvml.NVML_ERROR_NOT_SUPPORTED, "cc": pynvml.NVML_ERROR_NOT_SUPPORTED},
    )
    (gpu,), reasons = nvidia.probe()
    assert reasons == []
    assert gpu.compute_capability is None
    assert [(p.pid, p.used, p.name) for p in gpu.processes] == [(5, None, "")]
    assert gpu.processes_bytes is None


def test_gpu_without_dedicated_memory_uses_system_ram(fake_nvml):
    fake_nvml.add(name="NVIDIA GB10", errors={"memory": pynvml.NVML_ERROR_NOT_SUPPORTED})
    (gpu,), _ = nvidia.probe()
    assert gpu.unified
    assert gpu.total == psutil.virtual_memory().total
    assert "unified memory" in gpu.notes[0]


def test_memory_error_other_than_unsupported_is_a_reason(fake_nvml):
    fake_nvml.add(errors={"memory": pynvml.NVML_ERROR_NO_PERMISSION})
    gpus, reasons = nvidia.probe()
    assert gpus == []
    assert "no permission" in reasons[0]


def test_free_memory_polls_the_same_gpu(fake_nvml):
    fake_nvml.add(uuid="GPU-a", free=6 * GiB)
    second = fake_nvml.add(uuid="GPU-b", free=3 * GiB)
    _, gpu = nvidia.probe()[0]
    second.free = 2 * GiB
    assert nvidia.free_memory(gpu) == 2 * GiB
    fake_nvml.gpus.reverse()  # found by UUID, not by index
    assert nvidia.free_memory(gpu) == 2 * GiB
    second.errors["memory_v1"] = pynvml.NVML_ERROR_GPU_IS_LOST
    second.errors["memory"] = pynvml.NVML_ERROR_GPU_IS_LOST
    assert nvidia.free_memory(gpu) is None


def test_cuda_version_format():
    assert [nvidia.cuda_version(v) for v in (12040, 12080, 13000, 11020)] == [
        "12.4",
        "12.8",
        "13.0",
        "11.2",
    ]


def test_real_nvml_never_raises():
    """Whatever this machine has (here: no driver), the real library gives GPUs or reasons."""
    nvidia.shutdown()
    try:
        gpus, reasons = nvidia.probe()
    finally:
        nvidia.shutdown()
    assert gpus or any(r.startswith("NVIDIA: ") for r in reasons)
