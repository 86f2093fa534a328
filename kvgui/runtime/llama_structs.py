"""The translation (kvgui.core.commandline.llama_params) written onto llama.cpp's ctypes structs.

Every process that starts llama.cpp (the dry run, the chat worker, the measure worker) fills
its ``llama_model_params`` / ``llama_context_params`` here, from the same LlamaParams, so none
of them can drift from llama-cli's values. ``llama_cpp`` is imported by the callers (the child
processes), never at this module's import.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from typing import Any

from kvgui.core.commandline.llama_params import LlamaParams

# Fields that are pointers in C: the caller's (tensor_split becomes a float array here).
POINTER_FIELDS = ("tensor_split",)


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
    split = tensor_split_array(lc, tuple(params.model["tensor_split"]), keep)
    if split is not None:
        mp.tensor_split = split
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
