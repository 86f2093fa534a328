"""``kvgui gpus``: on this machine, and with a fake NVML underneath (the hardware boundary)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pynvml
import pytest

from kvgui.cli import main
from kvgui.core.devices.hardware import nvidia
from kvgui.core.devices.hardware.types import LlamaBackend
from kvgui.runtime import llama_backend

GiB = 1024**3
MiB = 1024**2
CUDA_CMD = (
    'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
)


@pytest.fixture
def one_nvidia_gpu(monkeypatch):
    """pynvml's functions answering for one RTX 4060 with a python process on it."""
    monkeypatch.setattr(nvidia, "_ready", False)
    mem = SimpleNamespace(
        total=8 * GiB, free=6 * GiB, used=2 * GiB - 300 * MiB, reserved=300 * MiB, version=1
    )
    calls = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlDeviceGetCount": lambda: 1,
        "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetName": lambda h: b"NVIDIA GeForce RTX 4060",
        "nvmlDeviceGetUUID": lambda h: "GPU-1",
        "nvmlDeviceGetMemoryInfo": lambda h, version=None: mem,
        "nvmlDeviceGetCudaComputeCapability": lambda h: (8, 9),
        "nvmlSystemGetDriverVersion": lambda: "560.35.03",
        "nvmlSystemGetCudaDriverVersion": lambda: 12060,
        "nvmlDeviceGetComputeRunningProcesses": lambda h: [
            SimpleNamespace(pid=4242, usedGpuMemory=1500 * MiB)
        ],
        "nvmlDeviceGetGraphicsRunningProcesses": lambda h: [],
        "nvmlSystemGetProcessName": lambda pid: "/opt/bin/ollama",
    }
    for name, fn in calls.items():
        monkeypatch.setattr(pynvml, name, fn)
    monkeypatch.setattr(
        llama_backend,
        "probe",
        lambda: LlamaBackend(installed=True, version="0.3.36", gpu_offload=False),
    )


def test_gpus_on_this_machine(capsys):
    assert main(["gpus"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("GPUs:\n")
    assert "System RAM:" in out
    if "  none found" in out:
        assert "NVIDIA: " in out and "Plan: CPU only" in out
    else:
        assert "  [0] " in out


def test_gpus_json_on_this_machine(capsys):
    assert main(["gpus", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"gpus", "system", "llama", "reasons", "advice", "cpu_only"}
    assert data["cpu_only"] == (data["gpus"] == [])
    assert data["system"]["total"] > 0
    if data["cpu_only"]:
        assert any(r.startswith("NVIDIA: ") for r in data["reasons"])


def test_gpus_lists_an_nvidia_gpu_and_the_cpu_build_advice(one_nvidia_gpu, capsys):
    assert main(["gpus"]) == 0
    out = capsys.readouterr().out
    assert "  [0] NVIDIA GeForce RTX 4060: 8.00 GiB total, 6.00 GiB free, 2.00 GiB in use" in out
    assert "driver 560.35.03, CUDA 12.6, compute capability 8.9, 300.00 MiB reserved" in out
    assert "processes: ollama (4242) 1.46 GiB" in out
    assert "llama-cpp-python 0.3.36, CPU-only build" in out
    assert out.rstrip().endswith(CUDA_CMD)
    assert "Plan: CPU only" not in out


def test_gpus_json_with_a_gpu(one_nvidia_gpu, capsys):
    assert main(["gpus", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    (gpu,) = data["gpus"]
    assert (gpu["name"], gpu["total"], gpu["free"], gpu["reserved"]) == (
        "NVIDIA GeForce RTX 4060",
        8 * GiB,
        6 * GiB,
        300 * MiB,
    )
    assert gpu["compute_capability"] == "8.9" and gpu["cuda_driver"] == "12.6"
    assert data["advice"][0].endswith(CUDA_CMD)


def test_nvml_driver_failure_is_printed_not_raised(monkeypatch, capsys):
    monkeypatch.setattr(nvidia, "_ready", False)

    def fail():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH)

    monkeypatch.setattr(pynvml, "nvmlInit", fail)
    assert main(["gpus"]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA: NVIDIA driver/library version mismatch (the driver was updated: reboot)" in out
