"""The translation (kvgui.core.commandline.llama_params) written onto llama.cpp's ctypes structs.

Every process that starts llama.cpp (the dry run, the chat worker, the measure worker) fills
its ``llama_model_params`` / ``llama_context_params`` here, from the same LlamaParams, so none
of them can drift from llama-cli's values. ``llama_cpp`` is imported by the callers (the child
processes), never at this module's import.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kvgui.core.commandline.llama_params import LlamaParams

# Fields that are pointers in C, made here: tensor_split becomes a float array,
# tensor_buft_overrides a NULL-terminated llama_model_tensor_buft_override array.
POINTER_FIELDS = ("tensor_split", "tensor_buft_overrides")


class LaunchRefused(RuntimeError):
    """llama.cpp cannot be started in this process with these settings (one line: why, and
    what to do instead)."""


class BuftOverride(ctypes.Structure):
    """llama.h struct llama_model_tensor_buft_override (llama-cpp-python declares the field
    as a void pointer and has no class for it)."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def ggml_api(lc: Any) -> Any:
    """The ggml functions kvgui calls (libggml-base: devices and buffer types; libggml: the
    registry), from the libraries llama-cpp-python loaded, with their C prototypes."""
    return _ggml_api(str(Path(lc.__file__).parent / "lib"))


@functools.lru_cache(maxsize=2)
def _ggml_api(lib_dir: str) -> Any:
    from llama_cpp._ctypes_extensions import load_shared_library

    base = load_shared_library("ggml-base", Path(lib_dir))
    reg = load_shared_library("ggml", Path(lib_dir))
    vp, cp = ctypes.c_void_p, ctypes.c_char_p
    table: list[tuple[Any, str, Any, list[Any]]] = [
        (base, "ggml_backend_buft_name", cp, [vp]),
        (base, "ggml_backend_buft_is_host", ctypes.c_bool, [vp]),
        (base, "ggml_backend_buft_get_device", vp, [vp]),
        (base, "ggml_backend_dev_name", cp, [vp]),
        (base, "ggml_backend_dev_description", cp, [vp]),
        (base, "ggml_backend_dev_type", ctypes.c_int, [vp]),
        (base, "ggml_backend_dev_memory", None, [vp, ctypes.POINTER(ctypes.c_size_t),
                                                  ctypes.POINTER(ctypes.c_size_t)]),
        (base, "ggml_backend_dev_buffer_type", vp, [vp]),
        (base, "ggml_backend_reg_get_proc_address", vp, [vp, cp]),
        (reg, "ggml_backend_dev_count", ctypes.c_size_t, []),
        (reg, "ggml_backend_dev_get", vp, [ctypes.c_size_t]),
        (reg, "ggml_backend_reg_by_name", vp, [cp]),
        (reg, "ggml_backend_register", None, [vp]),
    ]
    for lib, name, res, args in table:
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return SimpleNamespace(**{name: getattr(lib, name) for lib, name, _, _ in table})


def register_rpc_servers(lc: Any, servers: Sequence[str]) -> None:
    """arg.cpp add_rpc_devices: each server's devices registered as a backend (ggml-rpc's
    ggml_backend_rpc_add_server, then ggml_backend_register), before the model is loaded;
    llama_model_load_from_file then puts them before the local GPUs. llama-cpp-python 0.3.36
    has no keyword or struct field for it (llama_model_params lost rpc_servers), and its
    wheels are built without GGML_RPC: then this is a refusal, not a silent local load."""
    if not servers:
        return
    if not lc.llama_supports_rpc():
        raise LaunchRefused(
            f"this llama-cpp-python was built without RPC support, so it cannot use "
            f"{', '.join(servers)}: run llama-cli / llama-server with --rpc (kvgui's export), "
            "or reinstall it with CMAKE_ARGS=\"-DGGML_RPC=on\"")
    g = ggml_api(lc)
    reg = g.ggml_backend_reg_by_name(b"RPC")
    fn = g.ggml_backend_reg_get_proc_address(reg, b"ggml_backend_rpc_add_server") \
        if reg else None
    if not fn:
        raise LaunchRefused("llama.cpp's RPC backend has no ggml_backend_rpc_add_server")
    add_server = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)(fn)
    for endpoint in servers:
        server = add_server(endpoint.encode())
        if not server:
            raise LaunchRefused(f"the RPC server {endpoint} offers no device")
        g.ggml_backend_register(server)


def buffer_types(lc: Any) -> dict[str, int]:
    """Every device's buffer type by name, as arg.cpp's parse_tensor_buffer_overrides lists
    them (ggml_backend_dev_buffer_type of each registered device: "CPU", "CUDA0",
    "RPC0[host:port]" ...; no host or extra buffer types)."""
    g = ggml_api(lc)
    out: dict[str, int] = {}
    for i in range(g.ggml_backend_dev_count()):
        buft = g.ggml_backend_dev_buffer_type(g.ggml_backend_dev_get(i))
        if buft:
            out[(g.ggml_backend_buft_name(buft) or b"").decode()] = buft
    return out


def buft_overrides_array(lc: Any, overrides: Sequence[Sequence[str]],
                         keep: list[Any]) -> Any:
    """The NULL-terminated ``llama_model_tensor_buft_override[]`` for (pattern, buffer type
    name) pairs, or None for none; a name no device has is refused as arg.cpp refuses it
    ("unknown buffer type"). ``keep`` holds the array and its strings for the load."""
    if not overrides:
        return None
    bufts = buffer_types(lc)
    arr = (BuftOverride * (len(overrides) + 1))()
    for i, (pattern, name) in enumerate(overrides):
        if name not in bufts:
            raise LaunchRefused(f"-ot {pattern}={name}: unknown buffer type {name!r}; this "
                                f"llama.cpp has {', '.join(sorted(bufts))}")
        text = ctypes.create_string_buffer(pattern.encode())
        keep.append(text)
        arr[i].pattern = ctypes.cast(text, ctypes.c_char_p)
        arr[i].buft = bufts[name]
    keep.append(arr)
    return ctypes.cast(arr, ctypes.c_void_p)


def pointer_model_fields(lc: Any, params: LlamaParams, keep: list[Any]) -> dict[str, Any]:
    """The pointer fields of llama_model_params for ``params``, after registering its RPC
    servers (an -ot may name their buffer types): only those that are set."""
    register_rpc_servers(lc, params.rpc_servers)
    out: dict[str, Any] = {}
    split = tensor_split_array(lc, tuple(params.model["tensor_split"]), keep)
    if split is not None:
        out["tensor_split"] = split
    overrides = buft_overrides_array(lc, params.model["tensor_buft_overrides"], keep)
    if overrides is not None:
        out["tensor_buft_overrides"] = overrides
    return out


def set_fields(struct: Any, fields: Mapping[str, Any]) -> None:
    """Write ``fields`` onto a ctypes struct; a name the struct lacks is an error, not a no-op
    (ctypes would silently add a Python attribute)."""
    known = {name for name, *_ in type(struct)._fields_}
    for name, value in fields.items():
        if name not in known:
            raise AttributeError(f"{type(struct).__name__} has no field {name!r}")
        setattr(struct, name, value)


def scalar_model_fields(params: LlamaParams) -> dict[str, Any]:
    """The model fields that are plain values (everything but the pointers)."""
    return {k: v for k, v in params.model.items() if k not in POINTER_FIELDS}


def tensor_split_array(lc: Any, split: tuple[float, ...], keep: list[Any]) -> Any:
    """``float[llama_max_devices()]`` for tensor_split, or None for "llama.cpp decides".

    ``keep`` holds the array for as long as llama.cpp may read it (the model load)."""
    if not split:
        return None
    n = int(lc.llama_max_devices())
    if len(split) > n:
        raise ValueError(f"-ts has {len(split)} proportions; this llama.cpp takes at most {n}")
    arr = (ctypes.c_float * n)(*split)
    keep.append(arr)
    return arr


def model_params(lc: Any, params: LlamaParams, keep: list[Any], **overrides: Any) -> Any:
    """A llama_model_params for ``params``; ``overrides`` are the caller's own fields (the dry
    run's no_alloc, a progress callback)."""
    mp = lc.llama_model_default_params()
    set_fields(mp, scalar_model_fields(params))
    set_fields(mp, pointer_model_fields(lc, params, keep))
    set_fields(mp, overrides)
    return mp


def context_params(lc: Any, params: LlamaParams, **overrides: Any) -> Any:
    """A llama_context_params for ``params`` plus the caller's ``overrides``."""
    cp = lc.llama_context_default_params()
    set_fields(cp, params.context)
    set_fields(cp, overrides)
    return cp


def read_fields(struct: Any, names: Any) -> dict[str, Any]:
    """The struct's values for ``names`` (tests compare them with the translation)."""
    return {name: getattr(struct, name) for name in names}
