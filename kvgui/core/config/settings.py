"""The one Settings object: it feeds the estimate, the launch and the exported command line.

Defaults are llama-cli's (common/common.h of the bundled llama.cpp), not llama-cpp-python's
constructor defaults, which differ (flash_attn False, swa_full True, n_batch 512).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from kvgui.core.config import limits
from kvgui.core.gguf.ggml_types import CACHE_TYPE_NAMES

# kvgui's spelling of "every layer on the GPU" (llama-cli's `-ngl all`, llama-cpp-python's -1).
ALL_LAYERS = -1

# kvgui's spelling of --cpu-moe: the experts of every layer on the CPU (n_cpu_moe). llama.cpp
# adds one override whose regex names no layer (common.h llm_ffn_exps_cpu_override); any
# --n-cpu-moe N at or above the model's layer count places the same tensors.
ALL_MOE_LAYERS = -1

# llama.cpp pads the context to this (llama-context.cpp: GGML_PAD(n_ctx, 256)).
N_CTX_PAD = 256


class FlashAttn(str, Enum):
    ON = "on"
    OFF = "off"
    AUTO = "auto"

    # llama.h enum llama_flash_attn_type
    @property
    def llama_value(self) -> int:
        return {"auto": -1, "off": 0, "on": 1}[self.value]


class SplitMode(str, Enum):
    """``-sm``: how the model is split across GPUs (llama.h enum llama_split_mode)."""

    NONE = "none"
    LAYER = "layer"
    ROW = "row"
    TENSOR = "tensor"

    @property
    def llama_value(self) -> int:
        return {"none": 0, "layer": 1, "row": 2, "tensor": 3}[self.value]


# kvgui's spelling of "llama.cpp picks the thread count" (llama-cli without -t: its CPU's
# math cores, common_cpu_get_num_math)
AUTO_THREADS = -1


@dataclass(frozen=True)
class Settings:
    n_ctx: int = 4096
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: FlashAttn = FlashAttn.AUTO
    n_gpu_layers: int = ALL_LAYERS
    n_batch: int = 2048
    n_ubatch: int = 512
    n_parallel: int = 1
    kv_offload: bool = True
    swa_full: bool = False
    kv_unified: bool = False
    mmap: bool = True
    tensor_split: tuple[float, ...] = field(default=())
    split_mode: SplitMode = SplitMode.LAYER
    main_gpu: int = 0
    # --n-cpu-moe N: the expert weights of layers 0..N-1 in host memory (ALL_MOE_LAYERS:
    # --cpu-moe). Applied after override_tensor: llama.cpp takes the first matching override,
    # and kvgui exports -ot before --n-cpu-moe (an import that had them the other way round
    # keeps its order by spelling the earlier experts' overrides out in override_tensor).
    n_cpu_moe: int = 0
    # -ot PATTERN=BUFT,...: (regex searched in each weight's name, llama.cpp's buffer type name:
    # "CPU", "CUDA0", "RPC0[host:port]" ...), in order, the first match winning
    override_tensor: tuple[tuple[str, str], ...] = field(default=())
    # --rpc host:port,...: ggml-rpc-server endpoints, devices before the local GPUs
    rpc_servers: tuple[str, ...] = field(default=())
    n_threads: int = AUTO_THREADS
    mlock: bool = False
    repack: bool = True  # -nr/--no-repack turns off the CPU's repacked (AMX, …) weight buffers
    # llama_context_params.n_outputs_max: 0 = n_batch (llama-cli). No flag: llama-server sets
    # it to -np (one output per slot), which shrinks its compute buffer (see server_settings).
    n_outputs_max: int = 0
    # flags kvgui does not model, as the user gave them (an imported command's -t 8, --jinja,
    # --host …): kept in order and passed on to each tool that accepts them
    extra_args: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        for name in ("type_k", "type_v"):
            value = getattr(self, name)
            if value not in CACHE_TYPE_NAMES:
                raise ValueError(
                    f"{name} must be one of {', '.join(CACHE_TYPE_NAMES)}, not {value!r}"
                )
        if not isinstance(self.flash_attn, FlashAttn):
            object.__setattr__(self, "flash_attn", FlashAttn(self.flash_attn))
        # every number within what llama.cpp can hold (limits.py says why each bound)
        for name in _CHECKED_INTS:
            limits.check(name, getattr(self, name))
        for name in _BOOLS:
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, not {getattr(self, name)!r}")
        object.__setattr__(self, "tensor_split", limits.check_tensor_split(self.tensor_split))
        if not isinstance(self.split_mode, SplitMode):
            object.__setattr__(self, "split_mode", SplitMode(self.split_mode))
        if self.n_outputs_max < 0:
            raise ValueError(f"n_outputs_max must be 0 (n_batch) or more, not "
                             f"{self.n_outputs_max}")
        limits.check("main_gpu", self.main_gpu)
        limits.check("n_cpu_moe", self.n_cpu_moe)
        object.__setattr__(self, "override_tensor",
                           limits.check_override_tensor(self.override_tensor))
        object.__setattr__(self, "rpc_servers", limits.check_rpc_servers(self.rpc_servers))
        limits.check_override_count(len(self.override_tensor), self.n_cpu_moe)
        if self.n_threads != AUTO_THREADS:  # -1: llama.cpp's choice
            limits.check("n_threads", self.n_threads)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["flash_attn"] = self.flash_attn.value
        d["split_mode"] = self.split_mode.value
        d["tensor_split"] = list(self.tensor_split)
        d["extra_args"] = list(self.extra_args)
        d["override_tensor"] = [list(pair) for pair in self.override_tensor]
        d["rpc_servers"] = list(self.rpc_servers)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        if "tensor_split" in kwargs:
            kwargs["tensor_split"] = tuple(float(x) for x in kwargs["tensor_split"])
        if "extra_args" in kwargs:
            value = kwargs["extra_args"]
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise ValueError("extra_args is not a list of strings")
            kwargs["extra_args"] = tuple(value)
        if "override_tensor" in kwargs:
            value = kwargs["override_tensor"]
            if not isinstance(value, list):
                raise ValueError("override_tensor is not a list of [pattern, buffer type]")
            kwargs["override_tensor"] = tuple(
                tuple(x) if isinstance(x, list) else x for x in value)
        if "rpc_servers" in kwargs:
            value = kwargs["rpc_servers"]
            if not isinstance(value, list):
                raise ValueError("rpc_servers is not a list of host:port strings")
            kwargs["rpc_servers"] = tuple(value)
        return cls(**kwargs)


_CHECKED_INTS = ("n_ctx", "n_batch", "n_ubatch", "n_parallel", "n_gpu_layers")
_BOOLS = ("kv_offload", "swa_full", "kv_unified", "mmap", "mlock", "repack")


def pad_ctx(n_ctx: int) -> int:
    return -(-n_ctx // N_CTX_PAD) * N_CTX_PAD


# common.h LLM_FFN_EXPS_REGEX: the expert weights' names (-ot and --n-cpu-moe search for it)
FFN_EXPS_REGEX = r"\.ffn_(up|down|gate|gate_up)_(ch|)exps"


def n_cpu_moe_overrides(n_cpu_moe: int) -> tuple[tuple[str, str], ...]:
    """The overrides llama.cpp makes of --n-cpu-moe N (llm_add_n_cpu_ffn_overrides: one
    ``blk.{il}`` regex + LLM_FFN_EXPS_REGEX per layer) or --cpu-moe (llm_ffn_exps_cpu_override:
    the regex alone), all to the CPU buffer type, as (pattern, buffer type name)."""
    if n_cpu_moe == ALL_MOE_LAYERS:
        return ((FFN_EXPS_REGEX, "CPU"),)
    return tuple((rf"blk\.{il}{FFN_EXPS_REGEX}", "CPU") for il in range(n_cpu_moe))


def tensor_overrides(s: Settings) -> tuple[tuple[str, str], ...]:
    """Every tensor buffer override of the Settings, in the order llama.cpp searches them
    (the first match wins): the -ot entries, then those of --n-cpu-moe / --cpu-moe."""
    return s.override_tensor + n_cpu_moe_overrides(s.n_cpu_moe)


def moe_layers_on_cpu(n_cpu_moe: int, n_layer: int) -> int:
    """How many layers' experts --n-cpu-moe / --cpu-moe put on the CPU for a model with
    ``n_layer`` layers (llama.cpp matches blk.0 .. blk.N-1; --cpu-moe every layer)."""
    return n_layer if n_cpu_moe == ALL_MOE_LAYERS else min(n_cpu_moe, n_layer)
