"""Hardware detection: GPUs (NVIDIA, AMD, Apple), system RAM, and llama.cpp's backend.

Qt-free and llama_cpp-free at import time; see detect.detect() for the entry point.
"""

from kvgui.core.devices.hardware.detect import detect, free_memory
from kvgui.core.devices.hardware.types import (
    BackendDevice,
    GpuInfo,
    GpuProcess,
    HardwareReport,
    LlamaBackend,
    SystemMemory,
)

__all__ = [
    "BackendDevice",
    "GpuInfo",
    "GpuProcess",
    "HardwareReport",
    "LlamaBackend",
    "SystemMemory",
    "detect",
    "free_memory",
]
