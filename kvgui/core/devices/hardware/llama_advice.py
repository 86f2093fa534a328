"""What to tell a user whose GPU the installed llama-cpp-python cannot use.

A CPU-only build of llama-cpp-python accepts -ngl and silently keeps every layer on the CPU,
so when the machine has a GPU the build cannot use, kvgui says so and gives the reinstall
command. The probe that finds out (it imports llama_cpp) is kvgui.runtime.llama_backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgui.core.devices.hardware.types import GpuInfo, LlamaBackend

REINSTALL = {
    "nvidia": 'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
    "llama-cpp-python",
    "amd": 'CMAKE_ARGS="-DGGML_HIP=on" pip install --force-reinstall --no-cache-dir '
    "llama-cpp-python (needs ROCm; or -DGGML_VULKAN=on)",
    "intel": 'CMAKE_ARGS="-DGGML_VULKAN=on" pip install --force-reinstall --no-cache-dir '
    "llama-cpp-python",
    "apple": 'CMAKE_ARGS="-DGGML_METAL=on" pip install --force-reinstall --no-cache-dir '
    "llama-cpp-python",
}
CUDA_REINSTALL = REINSTALL["nvidia"]
VENDOR_NAMES = {"nvidia": "NVIDIA", "amd": "AMD", "apple": "Apple", "intel": "Intel"}


def offload_advice(gpus: Sequence[GpuInfo], backend: LlamaBackend | None) -> list[str]:
    """What to tell a user whose GPU llama-cpp-python cannot use."""
    if backend is None or not gpus:
        return []
    if not backend.installed:
        return [
            "llama-cpp-python is not installed: kvgui can still estimate, but cannot verify or "
            "chat. Install it with GPU support: " + REINSTALL.get(gpus[0].vendor, CUDA_REINSTALL)
        ]
    if backend.gpu_offload is False:
        vendor = gpus[0].vendor
        version = f" {backend.version}" if backend.version else ""
        return [
            f"llama-cpp-python{version} is a CPU-only build: it cannot offload layers to your "
            f"{VENDOR_NAMES.get(vendor, vendor)} GPU, so -ngl does nothing. "
            f"Reinstall it with GPU support: {REINSTALL.get(vendor, CUDA_REINSTALL)}"
        ]
    return []
