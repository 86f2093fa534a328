"""The one translation of Settings into llama.cpp's parameter structs, as llama-cli makes it.

llama-cli fills ``llama_model_params`` and ``llama_context_params`` in common/common.cpp
(``common_model_params_to_llama`` / ``common_context_params_to_llama``) from its parsed
``common_params``; this module does the same from a kvgui ``Settings``, field for field, with
llama.h's C field names and enum values. Everything that starts llama.cpp is generated from it:
the dry run (``kvgui.runtime.dryrun``), the chat worker and the measure worker (which write
these fields onto the structs), and the llama-cpp-python snippet of the export
(``llama_cpp_python_kwargs``). A field added to Settings that reaches none of them fails
``tests/core/test_llama_params.py``.

Fields llama-cli sets from flags kvgui does not model (rope/YaRN overrides, embeddings, MTP)
carry llama-cli's defaults, which are not llama-cpp-python's: its ``Llama()`` writes
yarn_attn_factor 1, yarn_beta_fast 32, yarn_beta_slow 1 where llama-cli leaves -1 ("from the
model"), swa_full on, n_batch 512, flash attention off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from kvgui.core.config.settings import (
    ALL_LAYERS,
    AUTO_THREADS,
    FlashAttn,
    Settings,
    tensor_overrides,
)
from kvgui.core.gguf.ggml_types import by_name

# arg.cpp: `-ngl all` stores -2 (llama.h: a negative n_gpu_layers means every layer). The one
# spelling of "all layers" in the structs; kvgui's Settings spells it ALL_LAYERS (-1).
LLAMA_ALL_GPU_LAYERS = -2

# llama.h enum llama_load_mode
LOAD_MODE_AUTO, LOAD_MODE_NONE, LOAD_MODE_MMAP, LOAD_MODE_MLOCK, LOAD_MODE_MMAP_MLOCK = (
    -1, 0, 1, 2, 3)
# llama.h enum llama_lazy_mode; common.h's default
LAZY_MODE_AUTO = 1
# llama.h: LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED, LLAMA_POOLING_TYPE_UNSPECIFIED,
# LLAMA_ATTENTION_TYPE_UNSPECIFIED, LLAMA_CONTEXT_TYPE_DEFAULT
UNSPECIFIED = -1
CONTEXT_TYPE_DEFAULT = 0


def load_mode(settings: Settings) -> int:
    """``-lm``: (mmap, mlock) as llama_load_mode. mmap without mlock is llama-cli's default
    ``auto`` ("mmap, unless a device does not support it"), which export leaves unsaid."""
    if settings.mlock:
        return LOAD_MODE_MMAP_MLOCK if settings.mmap else LOAD_MODE_MLOCK
    return LOAD_MODE_AUTO if settings.mmap else LOAD_MODE_NONE


def load_mode_arg(settings: Settings) -> str | None:
    """The ``-lm`` value for the Settings, None for llama-cli's default (auto)."""
    return {LOAD_MODE_AUTO: None, LOAD_MODE_NONE: "none", LOAD_MODE_MLOCK: "mlock",
            LOAD_MODE_MMAP_MLOCK: "mmap+mlock"}[load_mode(settings)]


def default_threads() -> int:
    """llama-cli's thread count without ``-t``: common_cpu_get_num_math, i.e. the physical
    cores (hybrid Intel CPUs: the performance cores, which psutil cannot tell apart)."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing a platform query: fall back to the logical count
        physical = None
    return int(physical or os.cpu_count() or 1)


def resolved_threads(settings: Settings) -> int:
    return default_threads() if settings.n_threads == AUTO_THREADS else settings.n_threads


@dataclass(frozen=True)
class LlamaParams:
    """``model``: llama_model_params fields; ``context``: llama_context_params fields.

    Values are plain Python (ints for enums and ggml types, a tuple for tensor_split, which
    the caller turns into a ``float[llama_max_devices()]``, and for tensor_buft_overrides,
    (pattern, buffer type name) pairs the caller turns into the NULL-terminated
    ``llama_model_tensor_buft_override`` array with each name's buffer type); other pointers
    and callbacks are the caller's (progress callback, devices list).

    ``rpc_servers``: not a struct field in this llama.cpp: llama-cli registers each server as
    a backend before loading (arg.cpp add_rpc_devices: ggml_backend_rpc_add_server, then
    ggml_backend_register), and llama_model_load_from_file then puts its devices first.
    """

    model: Mapping[str, Any]
    context: Mapping[str, Any]
    rpc_servers: tuple[str, ...] = ()


def server_settings(settings: Settings) -> Settings:
    """The Settings as llama-server runs them: it sets n_outputs_max to one output per slot
    (tools/server/server-context.cpp server_output_limits, no speculative decoding), where
    llama-cli leaves n_batch; the logits of its reserved graph are that much smaller."""
    return settings.replace(n_outputs_max=min(settings.n_batch, settings.n_parallel))


def llama_params(settings: Settings) -> LlamaParams:
    """The llama_model_params and llama_context_params llama-cli builds for these Settings."""
    s = settings
    threads = resolved_threads(s)
    model = {
        "n_gpu_layers": LLAMA_ALL_GPU_LAYERS if s.n_gpu_layers == ALL_LAYERS
        else s.n_gpu_layers,
        "split_mode": s.split_mode.llama_value,
        "main_gpu": s.main_gpu,
        "load_mode": load_mode(s),
        "lazy_mode": LAZY_MODE_AUTO,
        "tensor_split": tuple(float(x) for x in s.tensor_split),
        # -ot, then --cpu-moe / --n-cpu-moe: arg.cpp appends them in this order when kvgui's
        # export writes them so (Settings.n_cpu_moe)
        "tensor_buft_overrides": tensor_overrides(s),
        "vocab_only": False,
        "check_tensors": False,
        "use_extra_bufts": s.repack,  # !no_extra_bufts (-nr)
        "no_host": False,
        "no_alloc": False,
        "load_mtp": False,
    }
    context = {
        "n_ctx": s.n_ctx,
        "n_batch": s.n_batch,
        "n_ubatch": s.n_ubatch,
        "n_seq_max": s.n_parallel,
        "n_rs_seq": 0,
        "n_outputs_max": s.n_outputs_max,
        "n_outputs_max_per_seq": 1,
        "n_threads": threads,
        "n_threads_batch": threads,  # -tb defaults to -t
        "ctx_type": CONTEXT_TYPE_DEFAULT,
        "rope_scaling_type": UNSPECIFIED,
        "pooling_type": UNSPECIFIED,
        "attention_type": UNSPECIFIED,
        "flash_attn_type": s.flash_attn.llama_value,
        "rope_freq_base": 0.0,
        "rope_freq_scale": 0.0,
        "yarn_ext_factor": -1.0,
        "yarn_attn_factor": -1.0,
        "yarn_beta_fast": -1.0,
        "yarn_beta_slow": -1.0,
        "yarn_orig_ctx": 0,
        "type_k": by_name(s.type_k).id,
        "type_v": by_name(s.type_v).id,
        "embeddings": False,
        "offload_kqv": s.kv_offload,
        "no_perf": False,
        "op_offload": True,
        "swa_full": s.swa_full,
        "kv_unified": s.kv_unified,
    }
    return LlamaParams(MappingProxyType(model), MappingProxyType(context), s.rpc_servers)


# --- llama-cpp-python's Llama() -------------------------------------------------------------

# What llama-cpp-python 0.3.36's Llama() ends up with when a keyword is left out (llama.py,
# and the struct defaults where it passes None). Its keywords cannot say flash attention
# "auto", n_seq_max, kv_unified, lazy_mode or YaRN's "-1 = from the model": the chat worker
# writes those on the structs itself; the exported snippet notes what it cannot carry.
LLAMA_CPP_PYTHON_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "n_gpu_layers": 0,
    "split_mode": 1,
    "main_gpu": 0,
    "tensor_split": None,
    "use_mmap": True,
    "use_mlock": False,
    "n_ctx": 512,
    "n_batch": 512,
    "n_ubatch": 512,
    "n_threads": None,  # cpu_count() // 2
    "n_threads_batch": None,  # cpu_count()
    "offload_kqv": True,
    "flash_attn": False,
    "op_offload": True,
    "swa_full": True,
    "type_k": 1,  # f16
    "type_v": 1,
    "no_perf": False,
})


def llama_cpp_python_kwargs(params: LlamaParams, *,
                            flash_attn_resolved: bool | None = None) -> dict[str, Any]:
    """``Llama()`` keywords that come closest to ``params`` (every keyword above).

    ``flash_attn`` is a bool there: "auto" is written as ``flash_attn_resolved`` (what the
    estimate resolved it to) or, unknown, True: what llama.cpp's auto picks wherever the
    backend supports flash attention. ``n_gpu_layers`` -1 is llama-cpp-python's "all".
    """
    m, c = params.model, params.context
    fa_type = c["flash_attn_type"]
    if fa_type == FlashAttn.AUTO.llama_value:
        fa = True if flash_attn_resolved is None else flash_attn_resolved
    else:
        fa = fa_type == FlashAttn.ON.llama_value
    mode = m["load_mode"]
    return {
        "n_gpu_layers": -1 if m["n_gpu_layers"] < 0 else m["n_gpu_layers"],
        "split_mode": m["split_mode"],
        "main_gpu": m["main_gpu"],
        "tensor_split": list(m["tensor_split"]) or None,
        "use_mmap": mode in (LOAD_MODE_AUTO, LOAD_MODE_MMAP, LOAD_MODE_MMAP_MLOCK),
        "use_mlock": mode in (LOAD_MODE_MLOCK, LOAD_MODE_MMAP_MLOCK),
        "n_ctx": c["n_ctx"],
        "n_batch": c["n_batch"],
        "n_ubatch": c["n_ubatch"],
        "n_threads": c["n_threads"],
        "n_threads_batch": c["n_threads_batch"],
        "offload_kqv": c["offload_kqv"],
        "flash_attn": fa,
        "op_offload": c["op_offload"],
        "swa_full": c["swa_full"],
        "type_k": c["type_k"],
        "type_v": c["type_v"],
        "no_perf": c["no_perf"],
    }
