"""detect(): never raises, explains every miss; llama-cpp-python's side; the live poll."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pynvml
import pytest

from kvgui.core.devices.hardware import GpuInfo, LlamaBackend, detect, free_memory, llama_advice
from kvgui.runtime import llama_backend

# the package re-exports the function detect(), which shadows the module's name
detect_mod = importlib.import_module("kvgui.core.devices.hardware.detect")

GiB = 1024**3
CUDA_CMD = (
    'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir llama-cpp-python'
)


def _nvidia_gpu() -> GpuInfo:
    return GpuInfo("nvidia", 0, "NVIDIA GeForce RTX 4060", 8 * GiB, 7 * GiB)


def test_cpu_only_build_with_an_nvidia_gpu_gives_the_reinstall_command():
    backend = LlamaBackend(installed=True, version="0.3.36", gpu_offload=False)
    (advice,) = llama_advice.offload_advice([_nvidia_gpu()], backend)
    assert "CPU-only build" in advice and "NVIDIA" in advice
    assert advice.endswith(CUDA_CMD)
    assert llama_advice.CUDA_REINSTALL == CUDA_CMD


def test_no_advice_when_the_build_offloads_or_there_is_no_gpu():
    gpu_build = LlamaBackend(installed=True, gpu_offload=True)
    cpu_build = LlamaBackend(installed=True, gpu_offload=False)
    assert llama_advice.offload_advice([_nvidia_gpu()], gpu_build) == []
    assert llama_advice.offload_advice([], cpu_build) == []
    assert llama_advice.offload_advice([_nvidia_gpu()], None) == []


def test_advice_names_the_right_backend_per_vendor():
    cpu_build = LlamaBackend(installed=True, gpu_offload=False)
    amd_gpu = GpuInfo("amd", 0, "AMD Radeon RX 7900 XTX", 24 * GiB, 23 * GiB)
    (advice,) = llama_advice.offload_advice([amd_gpu], cpu_build)
    assert "-DGGML_HIP=on" in advice
    missing = LlamaBackend(installed=False, reason="x")
    (advice,) = llama_advice.offload_advice([_nvidia_gpu()], missing)
    assert "not installed" in advice and CUDA_CMD in advice


def test_missing_llama_cpp_is_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    backend = llama_backend.probe()
    assert not backend.installed
    assert backend.reason is not None and "not installed" in backend.reason


@pytest.mark.llama
def test_real_llama_cpp_backend():
    pytest.importorskip("llama_cpp")
    backend = llama_backend.probe()
    assert backend.installed and backend.reason is None
    assert isinstance(backend.gpu_offload, bool)
    kinds = [d.kind for d in backend.devices]
    assert "CPU" in kinds
    cpu = backend.devices[kinds.index("CPU")]
    assert cpu.name == "CPU" and cpu.total and cpu.total > 0
    # llama_supports_gpu_offload is true exactly when ggml has a GPU device (or RPC)
    if not backend.gpu_offload:
        assert not any(k in ("GPU", "IGPU") for k in kinds)


def test_detect_on_this_machine_never_raises():
    report = detect()
    assert report.system is not None and report.system.total > 0
    if report.cpu_only:
        assert any(r.startswith("NVIDIA: ") for r in report.reasons)
    assert report.llama is None


def test_a_probe_that_crashes_becomes_a_reason(monkeypatch, tmp_path):
    def boom():
        raise RuntimeError("driver exploded")

    monkeypatch.setitem(detect_mod.PROBES, "NVIDIA", boom)
    report = detect(drm_root=tmp_path)
    assert "NVIDIA: detection failed (RuntimeError: driver exploded)" in report.reasons


def test_nvidia_card_on_the_bus_without_nvml_is_explained(fake_nvml, sysfs, monkeypatch):
    fake_nvml.init_error = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    sysfs.card(1, vendor="0x10de", device="0x2882")
    sysfs.card(0, vendor="0x8086", device="0x46a6")
    monkeypatch.setitem(detect_mod.PROBES, "AMD", lambda: ([], []))
    report = detect(drm_root=sysfs.root)
    assert report.cpu_only
    text = "\n".join(report.reasons)
    assert "NVIDIA: the NVIDIA driver is not loaded" in text
    assert "NVIDIA: card1 is an NVIDIA GPU (PCI 10de:2882) but NVML cannot reach it" in text
    assert "Intel: card0" in text


def test_report_carries_advice_and_serialises(fake_nvml, monkeypatch, tmp_path):
    fake_nvml.add(name="NVIDIA GeForce RTX 4060", compute=[(7, 100)])
    cpu_build = LlamaBackend(installed=True, version="0.3.36", gpu_offload=False)
    report = detect(llama_probe=lambda: cpu_build, drm_root=tmp_path)
    assert [g.name for g in report.gpus] == ["NVIDIA GeForce RTX 4060"]
    assert report.advice and report.advice[0].endswith(CUDA_CMD)
    d = report.to_dict()
    assert d["cpu_only"] is False
    assert d["gpus"][0]["compute_capability"] == "8.9"
    assert d["gpus"][0]["processes"] == [{"pid": 7, "used": 100, "name": ""}]
    assert d["llama"]["gpu_offload"] is False


def test_free_memory_dispatch(fake_nvml, monkeypatch):
    fake_nvml.add(uuid="GPU-x", free=5 * GiB)
    (gpu,), _ = detect_mod.nvidia.probe()
    assert free_memory(gpu) == 5 * GiB
    other = GpuInfo("intel", 0, "Arc", 8 * GiB, 3 * GiB)
    assert free_memory(other) == 3 * GiB  # no live reader: the detected figure

    def broken(gpu):
        raise OSError("gone")

    monkeypatch.setitem(detect_mod._FREE, "nvidia", broken)
    assert free_memory(gpu) is None


def test_core_imports_without_qt_or_llama_cpp():
    code = (
        "import sys\n"
        "sys.modules['PySide6'] = None\n"
        "sys.modules['llama_cpp'] = None\n"
        "import kvgui.core.devices.hardware, kvgui.core.devices.budget\n"
        "import kvgui.core.devices.gpu_catalog\n"
        "r = kvgui.core.devices.hardware.detect()\n"
        "assert r.llama is None, r.llama\n"
        "from kvgui.runtime.llama_backend import probe\n"
        "r = kvgui.core.devices.hardware.detect(llama_probe=probe)\n"
        "assert r.llama is not None and not r.llama.installed, r.llama\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
