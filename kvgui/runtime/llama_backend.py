"""What the installed llama-cpp-python can use: GPU offload at all, and which ggml devices.

This imports llama_cpp (so it lives in the runtime, not the core); the advice drawn from its
answer is kvgui.core.devices.hardware.llama_advice.
"""

from __future__ import annotations

import ctypes
import functools
import importlib
import importlib.util
import logging
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvgui.core.devices.hardware import cpu
from kvgui.core.devices.hardware.cpu import HostCpu
from kvgui.core.devices.hardware.types import BackendDevice, LlamaBackend

log = logging.getLogger(__name__)

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
        installed=True, version=version, gpu_offload=offload, devices=devices, reason=reason,
        host_cpu=probe_host_cpu(),
    )


# --- the CPU backend's extra buffer types (no llama_cpp import: its libraries, by ctypes) ----

GGML_BACKEND_DEVICE_TYPE_CPU = 0


class _Feature(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", ctypes.c_char_p)]


def _lib_dir() -> Path | None:
    """llama-cpp-python's lib folder, found without importing the package (0.1 s+)."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def _lib_path(folder: Path, base: str) -> Path:
    names = {"win32": [f"{base}.dll", f"lib{base}.dll"],
             "darwin": [f"lib{base}.dylib", f"lib{base}.so"]}.get(sys.platform,
                                                                 [f"lib{base}.so"])
    for name in names:
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"no {base} library in {folder}")


def read_cpu_backend(folder: Path) -> tuple[list[str], dict[str, str]]:
    """The CPU backend's extra buffer types (in llama.cpp's order) and its features, through
    the two entry points llama.cpp itself uses: ``ggml_backend_dev_get_extra_bufts`` and
    ``ggml_backend_get_features`` (ggml-cpu.cpp ggml_backend_cpu_get_proc_address)."""
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    base = ctypes.CDLL(str(_lib_path(folder, "ggml-base")))
    reg_lib = ctypes.CDLL(str(_lib_path(folder, "ggml")))
    reg_lib.ggml_backend_dev_by_type.restype = vp
    reg_lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    base.ggml_backend_dev_backend_reg.restype = vp
    base.ggml_backend_dev_backend_reg.argtypes = [vp]
    base.ggml_backend_reg_get_proc_address.restype = vp
    base.ggml_backend_reg_get_proc_address.argtypes = [vp, cp]
    base.ggml_backend_buft_name.restype = cp
    base.ggml_backend_buft_name.argtypes = [vp]
    dev = reg_lib.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    if not dev and hasattr(reg_lib, "ggml_backend_load_all"):  # GGML_BACKEND_DL builds
        reg_lib.ggml_backend_load_all()
        dev = reg_lib.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    if not dev:
        raise RuntimeError("the ggml build has no CPU backend")
    reg = base.ggml_backend_dev_backend_reg(dev)
    extra: list[str] = []
    fn = base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_dev_get_extra_bufts")
    if fn:
        bufts = ctypes.CFUNCTYPE(ctypes.POINTER(vp), vp)(fn)(dev)
        i = 0
        while bufts and bufts[i]:
            extra.append((base.ggml_backend_buft_name(bufts[i]) or b"?").decode())
            i += 1
    features: dict[str, str] = {}
    fn = base.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_get_features")
    if fn:
        feats = ctypes.CFUNCTYPE(ctypes.POINTER(_Feature), vp)(fn)(reg)
        i = 0
        while feats and feats[i].name:
            features[feats[i].name.decode()] = (feats[i].value or b"").decode()
            i += 1
    return extra, features


def _version(folder: Path) -> str | None:
    try:
        from importlib.metadata import version

        return version("llama_cpp_python")
    except Exception:  # not installed as a distribution (a source checkout)
        return None


@functools.lru_cache(maxsize=1)
def probe_host_cpu() -> HostCpu:
    """This machine's CPU as the installed llama.cpp will use it; never raises.

    Without a usable llama-cpp-python, what a native build for this CPU's flags would have
    (that is how pip builds it), said so in ``source``."""
    flags = cpu.read_cpu_flags()
    try:
        folder = _lib_dir()
        if folder is not None:
            extra, features = read_cpu_backend(folder)
            host = cpu.from_backend(extra, features, flags, _version(folder))
            if host.extra_buffers:
                from kvgui.runtime.cpu_kernels import check_kernels

                kernels = check_kernels()  # a decode through them, once per build
                if not kernels.ok:
                    host = replace(host, kernels_crash=kernels.advice)
            return host
    except Exception as exc:  # a broken install: plan as for a native build
        log.warning("cannot read llama.cpp's CPU backend: %s: %s", type(exc).__name__, exc)
    return cpu.native_build(flags, cpu.machine())


def detect_all() -> Any:
    """kvgui.core's hardware detection plus this llama.cpp's view (what `kvgui gpus` and the
    window show)."""
    from kvgui.core.devices.hardware.detect import detect

    return detect(llama_probe=probe)
