"""The checks llama.cpp's loader makes on a header before it builds a model, made before any
estimate -- so kvgui never says "fits" for a file llama.cpp refuses, and never computes with a
value llama.cpp could not hold.

The reader (reader.py) already checks what ggml's gguf.cpp checks (structure, duplicates,
offsets). Here, from src/llama-model-loader.cpp and llama_model_base::load_hparams
(src/llama-model.cpp): the keys every architecture reads have exactly the GGUF type llama.cpp
asks for (its get_key refuses any other: "key X has wrong type i32 but expected type u32"),
the required ones are there, per-layer arrays have one entry per layer, and the counts are
within llama.cpp's limits (its GGML_ASSERTs, which would abort the process). The keys kvgui
reads for some architectures only must at least be numbers of the right kind and size.
``check_model`` then checks what the estimate derives: every layer that keeps a KV cache has
heads of at least one element, and widths within llama.cpp's uint32 arithmetic.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any

from kvgui.core.gguf.reader import (
    ARRAY,
    BOOL,
    FLOAT32,
    FLOAT64,
    INT32,
    STRING,
    TYPE_NAMES,
    UINT16,
    UINT32,
    GGUFError,
    GGUFFile,
    quoted,
)

if TYPE_CHECKING:
    from kvgui.core.model.info import ModelInfo

LLAMA_MAX_LAYERS = 512  # src/llama-hparams.h
LLAMA_MAX_EXPERTS = 1024
_U32_END = 2**32
_INTEGERS = frozenset(range(6)) | {10, 11}  # u8 i8 u16 i16 u32 i32 u64 i64
_ARCH_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}")

# Keys llama.cpp reads with get_key for every model, and the one GGUF type each must have.
_GENERAL: dict[str, int] = {
    "general.architecture": STRING,
    "general.name": STRING,
    "general.file_type": UINT32,
    "split.count": UINT16,
    "split.no": UINT16,
    "split.tensors.count": INT32,
}
# "<arch>." keys of llama_model_base::load_hparams (all architectures but clip).
_ARCH: dict[str, int] = {
    "context_length": UINT32,
    "embedding_length": UINT32,
    "embedding_length_out": UINT32,
    "attention.causal": BOOL,
    "pooling_type": UINT32,
    "classifier.pooling_type": UINT32,
    "block_count": UINT32,
    "nextn_predict_layers": UINT32,
    "expert_count": UINT32,
    "expert_group_count": UINT32,
    "expert_group_used_count": UINT32,
    "rope.scaling.finetuned": BOOL,
    "rope.scaling.original_context_length": UINT32,
    "rope.freq_base": FLOAT32,
    "rope.scaling.type": STRING,
    "rope.scaling.factor": FLOAT32,
    "rope.scale_linear": FLOAT32,
    "rope.scaling.attn_factor": FLOAT32,
    "rope.scaling.alpha": FLOAT32,
    "attention.key_length": UINT32,
    "attention.value_length": UINT32,
    "rope.dimension_count": UINT32,
    "attention.key_length_swa": UINT32,
    "attention.value_length_swa": UINT32,
    "rope.dimension_count_swa": UINT32,
}
_REQUIRED = ("context_length", "embedding_length", "block_count")
# get_key_or_arr: a u32, or an array (u32, i32 or bool elements) of one entry per layer.
_PER_LAYER = ("feed_forward_length", "attention.head_count", "attention.head_count_kv",
              "expert_used_count")
# Keys kvgui reads for some architectures (llama.cpp reads them there as uint32, float or
# bool): they must be of that kind, and whole numbers must fit a uint32.
_WHOLE = ("attention.key_length_mla", "attention.value_length_mla", "attention.kv_lora_rank",
          "attention.shared_kv_layers", "attention.sliding_window", "full_attention_interval",
          "shortconv.l_cache", "ssm.conv_kernel", "ssm.group_count", "ssm.inner_size",
          "ssm.state_size", "ssm.time_step_rank", "token_shift_count", "vocab_size",
          "wkv.head_size", "leading_dense_block_count", "expert_shared_count",
          "expert_gating_func")
_WHOLE_OR_ARRAY = ("expert_feed_forward_length", "attention.sliding_window_pattern")
_INTERVAL_ARCHS = frozenset({"qwen3next", "qwen35", "qwen35moe", "kimi-linear", "minimax-01"})
_FLAGS = ("expert_weights_norm",)
_REALS = ("expert_weights_scale",)


def _fail(g: GGUFFile, reason: str) -> GGUFError:
    return GGUFError(g.path, reason)


def _type_name(t: int | None) -> str:
    return TYPE_NAMES.get(t, f"type {t}") if t is not None else "?"


def _wrong_type(g: GGUFFile, key: str, want: int) -> GGUFError:
    have, elem = g.types[key]
    shown = f"arr[{_type_name(elem)}]" if have == ARRAY else _type_name(have)
    return _fail(g, f"key {key} has wrong type {shown} but expected type {_type_name(want)} "
                    "(llama.cpp refuses the model)")


def _whole_number(g: GGUFFile, key: str, value: Any) -> int:
    if g.types[key][0] not in _INTEGERS:
        raise _fail(g, f"key {key} must be a whole number (llama.cpp reads it as uint32), "
                       f"not {_type_name(g.types[key][0])}")
    if not 0 <= value < _U32_END:
        raise _fail(g, f"key {key} = {value} does not fit llama.cpp's uint32")
    return int(value)


def _per_layer(g: GGUFFile, key: str, n_layer: int) -> list[int] | None:
    """llama_model_loader::get_key_or_arr into a uint32 array of n_layer entries."""
    if key not in g.metadata:
        return None
    vtype, etype = g.types[key]
    value = g.metadata[key]
    if vtype == UINT32:
        return [int(value)] * n_layer
    if vtype != ARRAY:
        raise _wrong_type(g, key, UINT32)
    if etype not in (UINT32, INT32, BOOL):
        raise _fail(g, f"key {key} has wrong array element type {_type_name(etype)} "
                       "(llama.cpp takes u32, i32 or bool)")
    if len(value) != n_layer:
        raise _fail(g, f"key {key} has wrong array length; expected {n_layer}, got "
                       f"{len(value)}")
    out = [int(v) for v in value]
    negative = next((i for i, v in enumerate(out) if v < 0), None)
    if negative is not None:
        raise _fail(g, f"key {key}[{negative}] = {out[negative]} is negative (llama.cpp reads "
                       "it as a uint32)")
    return out


def check_header(g: GGUFFile) -> None:
    """Raise GGUFError (one line) for a header llama.cpp would refuse, or abort on."""
    md, types = g.metadata, g.types
    for key, want in _GENERAL.items():
        if key in md and types[key][0] != want:
            raise _wrong_type(g, key, want)
    arch = md.get("general.architecture")
    if arch is None:
        raise _fail(g, "key not found in model: general.architecture")
    if not _ARCH_NAME.fullmatch(arch):
        raise _fail(g, f"general.architecture {quoted(arch)} is not an architecture name")
    if arch == "clip":  # llama.cpp reads no hyperparameters of a vision projector
        return
    for suffix, want in _ARCH.items():
        key = f"{arch}.{suffix}"
        if key in md and types[key][0] != want:
            raise _wrong_type(g, key, want)
    for suffix in _REQUIRED:
        if f"{arch}.{suffix}" not in md:
            raise _fail(g, f"key not found in model: {arch}.{suffix}")
    n_layer = int(md[f"{arch}.block_count"])
    if not 0 < n_layer <= LLAMA_MAX_LAYERS:
        raise _fail(g, f"{arch}.block_count = {n_layer}: llama.cpp takes 1 to "
                       f"{LLAMA_MAX_LAYERS} layers")
    nextn = int(md.get(f"{arch}.nextn_predict_layers", 0))
    if nextn > n_layer:
        raise _fail(g, f"{arch}.nextn_predict_layers = {nextn} is more than the {n_layer} "
                       "layers")
    if int(md[f"{arch}.embedding_length"]) < 1:
        raise _fail(g, f"{arch}.embedding_length = 0: a model needs an embedding")
    layers = {s: _per_layer(g, f"{arch}.{s}", n_layer) for s in _PER_LAYER}
    _check_experts(g, arch, layers["expert_used_count"] or [0])
    n_head = (layers["attention.head_count"] or [0])[0]
    if n_head > 0:  # load_hparams reads head sizes only then (default n_embd / n_head)
        n_embd = int(md[f"{arch}.embedding_length"])
        for which in ("key", "value"):
            size = int(md.get(f"{arch}.attention.{which}_length", n_embd // n_head))
            if size < 1:
                how = (f"{arch}.attention.{which}_length = 0" if
                       f"{arch}.attention.{which}_length" in md else
                       f"{arch}.embedding_length {n_embd} / {n_head} heads = 0")
                raise _fail(g, f"{how}: an attention head needs at least one element")
    for suffix in _WHOLE:
        key = f"{arch}.{suffix}"
        if key in md:
            _whole_number(g, key, md[key])
    interval = f"{arch}.full_attention_interval"
    if arch in _INTERVAL_ARCHS and md.get(interval) == 0:  # llama.cpp divides il by it
        raise _fail(g, f"{interval} = 0: every n-th layer cannot be n = 0")
    for suffix in _WHOLE_OR_ARRAY:
        key = f"{arch}.{suffix}"
        if key in md:
            if types[key][0] == ARRAY:
                if types[key][1] not in (UINT32, INT32, BOOL) or len(md[key]) > LLAMA_MAX_LAYERS:
                    raise _fail(g, f"key {key} must be an array of at most "
                                   f"{LLAMA_MAX_LAYERS} whole numbers")
                if any(int(v) < 0 for v in md[key]):
                    raise _fail(g, f"key {key} holds a negative number")
            else:
                _whole_number(g, key, md[key])
    for suffix in _FLAGS:
        key = f"{arch}.{suffix}"
        if key in md and types[key][0] != BOOL:
            raise _wrong_type(g, key, BOOL)
    for suffix in _REALS:
        key = f"{arch}.{suffix}"
        if key in md and (types[key][0] not in (FLOAT32, FLOAT64) or
                          not math.isfinite(md[key])):
            raise _fail(g, f"key {key} must be a finite float32, not "
                           f"{_type_name(types[key][0])} {md[key]!r:.40}")
    tokens = md.get("tokenizer.ggml.tokens")
    if tokens is not None:
        if types["tokenizer.ggml.tokens"] != (ARRAY, STRING):
            raise _fail(g, "tokenizer.ggml.tokens must be an array of strings")
        if len(tokens) >= 2**31:
            raise _fail(g, f"{len(tokens)} tokens: more than llama.cpp's int32 token ids")


def _check_experts(g: GGUFFile, arch: str, used: list[int]) -> None:
    """load_hparams' GGML_ASSERTs on experts (they would abort llama.cpp)."""
    md = g.metadata
    n_expert = int(md.get(f"{arch}.expert_count", 0))
    groups = int(md.get(f"{arch}.expert_group_count", 0))
    group_used = int(md.get(f"{arch}.expert_group_used_count", 0))
    if arch in ("hunyuan-dense", "hunyuan_vl") and n_expert <= 1:
        return  # llama.cpp clears the expert counts of these
    used_max = max(used)
    if n_expert > LLAMA_MAX_EXPERTS:
        raise _fail(g, f"{arch}.expert_count = {n_expert}: llama.cpp takes at most "
                       f"{LLAMA_MAX_EXPERTS} experts")
    if used_max > n_expert:
        raise _fail(g, f"{arch}.expert_used_count = {used_max} is more than the {n_expert} "
                       "experts")
    if n_expert > 0:
        if used_max == 0:
            raise _fail(g, f"{arch}.expert_used_count is 0 with {n_expert} experts")
        if groups >= n_expert:
            raise _fail(g, f"{arch}.expert_group_count = {groups} must be below the "
                           f"{n_expert} experts")
        if groups > 1 and (n_expert % groups or not 0 < group_used < groups):
            raise _fail(g, f"{arch}: {n_expert} experts in {groups} groups, {group_used} used"
                           ": llama.cpp needs equal groups and 0 < used < groups")
    elif used_max or groups:
        raise _fail(g, f"{arch}.expert_used_count / expert_group_count set without experts")


def check_model(model: ModelInfo) -> None:
    """What the estimate derives must be what llama.cpp can hold: every layer with a KV cache
    has K (and, unless MLA, V) heads of at least one element, and per-token widths within
    llama.cpp's uint32 (n_embd_k_gqa and n_embd_v_gqa are uint32 products)."""
    where = model.path or model.name
    for il, layer in enumerate(model.layers):
        if not layer.has_kv:
            continue
        if layer.n_embd_k < 1 or (layer.n_embd_v < 1 and not model.is_mla):
            raise GGUFError(where, f"layer {il} keeps a KV cache but its K or V width is 0 "
                                   "(a head size or head count of 0)")
        if layer.n_embd_k >= _U32_END or layer.n_embd_v >= _U32_END:
            raise GGUFError(where, f"layer {il}: K/V widths {layer.n_embd_k}/{layer.n_embd_v} "
                                   "overflow llama.cpp's uint32")
    if model.n_vocab >= 2**31:
        raise GGUFError(where, f"{model.n_vocab} tokens: more than llama.cpp's int32 token ids")
