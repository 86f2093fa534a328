"""What the installed llama-cpp-python can use: GPU offload at all, and which ggml devices.

This imports llama_cpp (so it lives in the runtime, not the core); the advice drawn from its
answer is kvgui.core.devices.hardware.llama_advice.
"""

from __future__ import annotations

import ctypes
import importlib
from typing import Any

from kvgui.core.devices.hardware.types import BackendDevice, LlamaBackend

# enum ggml_backend_dev_type (ggml-backend.h)
DEVICE_KINDS = ("CPU", "GPU", "IGPU", "ACCEL", "META")


def _ggml_devices(llama_cpp: Any) -> tuple[BackendDevice, ...]:
    """ggml_backend_dev_* from libggml, which llama_cpp loads but does not wrap.

    A separate CDLL handle on the same file gives private function objects, so setting
    restype/argtypes here cannot disturb llama_cpp's own bindings."""
    ggml = importlib.import_module("llama_cpp._ggml")
    lib = ctypes.CDLL(ggml.libggml._name)
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in (lib.ggml_backend_dev_name, lib.ggml_backend_dev_description):
        fn.restype = ctypes.c_char_p
        fn.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.argtypes = [
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.POINTER(ctypes.c_size_t),
    ]
    devices = []
    for i in range(int(lib.ggml_backend_dev_count())):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = int(lib.ggml_backend_dev_type(dev))
        devices.append(
            BackendDevice(
                name=(lib.ggml_backend_dev_name(dev) or b"").decode("utf-8", "replace"),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(
                    "utf-8", "replace"
                ),
                kind=DEVICE_KINDS[kind] if 0 <= kind < len(DEVICE_KINDS) else str(kind),
                free=free.value or None,
                total=total.value or None,
            )
        )
    return tuple(devices)


def probe() -> LlamaBackend:
    """Never raises: a missing or broken llama-cpp-python is a reason, not an error."""
    try:
        llama_cpp = importlib.import_module("llama_cpp")
    except ImportError as exc:
        return LlamaBackend(installed=False, reason=f"llama-cpp-python is not installed ({exc})")
    except Exception as exc:  # OSError when libllama cannot load (missing CUDA runtime, ...)
        return LlamaBackend(
            installed=False, reason=f"llama-cpp-python failed to load: {type(exc).__name__}: {exc}"
        )
    version = getattr(llama_cpp, "__version__", None)
    try:
        # first: it also loads dynamically built backends (GGML_BACKEND_DL) before we list them
        offload = bool(llama_cpp.llama_supports_gpu_offload())
    except Exception as exc:
        return LlamaBackend(
            installed=True, version=version, reason=f"llama_supports_gpu_offload failed: {exc}"
        )
    try:
        devices = _ggml_devices(llama_cpp)
        reason = None
    except Exception as exc:  # a build whose libggml lacks the device registry
        devices, reason = (), f"cannot list ggml backend devices ({type(exc).__name__}: {exc})"
    return LlamaBackend(
        installed=True, version=version, gpu_offload=offload, devices=devices, reason=reason
    )


def detect_all() -> Any:
    """kvgui.core's hardware detection plus this llama.cpp's view (what `kvgui gpus` and the
    window show)."""
    from kvgui.core.devices.hardware.detect import detect

    return detect(llama_probe=probe)
