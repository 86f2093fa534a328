"""What the estimate needs to know about a model, read from its GGUF header.

The per-layer rules (which layers slide, which keep no KV, which are recurrent) follow the
bundled llama.cpp: src/llama-model.cpp (load_hparams) and src/models/<arch>.cpp
(load_arch_hparams). An architecture kvgui has no rule for still gets an estimate from the
generic keys, with a warning.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kvgui.core import untrusted
from kvgui.core.gguf import ggml_types, validate
from kvgui.core.gguf.reader import GGUFError, GGUFFile, TensorInfo, read_gguf
from kvgui.core.model import layer_rules

# llama.h enum llama_ftype, for "general.file_type".
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE",
}

# Architectures whose KV layout kvgui models exactly (the rest: generic keys + a warning);
# those whose layers differ have their rule in layer_rules.RULES.
KNOWN_ARCHS = frozenset({
    "llama", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "mistral3", "gemma", "gemma2", "gemma3",
    "gemma3n", "gemma4", "cohere2", "command-r", "phi3", "phimoe", "deepseek2", "llama4",
    "gpt-oss", "granite", "granitemoe", "olmo2", "olmoe", "exaone", "exaone4", "starcoder2",
    "stablelm", "internlm2", "minicpm", "glm4", "glm4moe", "smollm3", "qwen2vl", "qwen3vl",
    "ernie4_5", "ernie4_5-moe", "hunyuan-dense", "hunyuan-moe", "gpt2", "bloom", "falcon", "mpt",
    "baichuan", "orion", "xverse", "deci", "arcee", "seed_oss", "apertus", "mellum",
    "smallthinker", "plamo3", "afmoe", "exaone-moe", "nemotron", "dots1", "bailingmoe",
    "bailingmoe2", "chatglm", "qwen", "phi2", "gptneox", "starcoder", "refact", "codeshell",
    "grok", "dbrx", "arctic", "mimo2",
}) | frozenset(layer_rules.RULES)
RECURRENT_ARCHS = layer_rules.RECURRENT_ARCHS
HYBRID_ARCHS = layer_rules.HYBRID_ARCHS
NO_MEMORY_ARCHS = layer_rules.NO_MEMORY_ARCHS
_BLK = re.compile(r"^blk\.(\d+)\.")
_ROUTER = re.compile(r"^blk\.(\d+)\.ffn_gate_inp\.weight$")  # a layer with routed experts
# Tensors outside blk.N by llama.cpp's placement (llama-arch.cpp LLM_TENSOR_INFOS): the input
# layer (always host memory), and the repeating-layer ones created with layer index 0.
_INPUT_TENSORS = ("token_embd.", "per_layer_token_embd.", "token_types.", "position_embd.")
_LAYER0_TENSORS = ("rope_freqs.", "rope_factors_long.", "rope_factors_short.",
                   "token_embd_norm.", "per_layer_model_proj.", "per_layer_proj_norm.")
# linear-attention state formulas kvgui has no fixture to check against llama.cpp
_UNVERIFIED_STATE = frozenset({"kimi-linear", "minimax-01", "bailingmoe3", "plamo2", "lfm2moe"})


@dataclass(frozen=True)
class LayerKV:
    """One layer's cache shape: K and V widths per cell (0 = no such cache)."""

    n_embd_k: int
    n_embd_v: int
    swa: bool
    recurrent: bool
    has_kv: bool
    experts: bool = False  # the feed-forward is a routed mixture of experts

    @property
    def stateless(self) -> bool:
        """Neither a KV cache nor a recurrent state (nemotron_h's MLP-only blocks)."""
        return not self.has_kv and not self.recurrent


@dataclass(frozen=True)
class ModelInfo:
    path: str | None
    name: str
    arch: str
    file_type: str
    file_bytes: int
    n_params: int
    n_layer: int
    n_ctx_train: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_embd_head_k: int
    n_embd_head_v: int
    n_embd_head_k_swa: int
    n_embd_head_v_swa: int
    n_vocab: int
    n_ff: int
    n_expert: int
    n_expert_used: int
    n_swa: int
    n_swa_layers: int
    is_recurrent: bool
    is_hybrid: bool
    is_mla: bool
    layers: tuple[LayerKV, ...]
    layer_weights: tuple[int, ...]  # bytes of blk.N.* per layer
    input_weights: int  # token embedding etc.: always in host memory
    output_weights: int  # output norm + output head
    other_weights: int
    tied_output_weights: int  # a tied output head: extra bytes only on a GPU
    n_embd_r: int = 0  # recurrent conv state per sequence and layer (f32 elements)
    n_embd_s: int = 0  # recurrent ssm/wkv state per sequence and layer (f32 elements)
    swa_chunked: bool = False
    n_layer_nextn: int = 0
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    n_ff_exp: int = 0
    ssm_d_inner: int = 0
    ssm_d_state: int = 0
    ssm_n_group: int = 0
    ssm_dt_rank: int = 0
    # tensor names of the blocks without "blk.N." (the layers' structure, for compute.py)
    block_tensors: frozenset[str] = frozenset()
    # the "<arch>." scalar header keys, prefix dropped (hyperparameters compute.py reads)
    arch_keys: tuple[tuple[str, int | float | bool | str], ...] = ()
    # the weight tensors llama.cpp loads (name, shape, type, offset): which host buffer type
    # each one takes (memory/host_buffers.py)
    tensors: tuple[TensorInfo, ...] = field(default=(), compare=False, repr=False)
    # what the compute-graph builders (kvgui/core/memory/builders) read beyond the above: the
    # tensor table (name, ggml type id, shape) and the "<arch>." numeric array keys
    tensor_table: tuple[tuple[str, int, tuple[int, ...]], ...] = field(
        default=(), compare=False, repr=False)
    arch_arrays: tuple[tuple[str, tuple[int | float, ...]], ...] = field(
        default=(), compare=False, repr=False)

    @property
    def n_embd_v_max(self) -> int:
        return max((layer.n_embd_v for layer in self.layers), default=0)

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_weights) + self.input_weights + self.output_weights + \
            self.other_weights

    @functools.cached_property
    def has_kv_cache(self) -> bool:
        """Some layer keeps a KV cache (the cache type matters); in falcon-h1 every layer
        keeps one beside its recurrent state."""
        return any(layer.has_kv for layer in self.layers)

    @classmethod
    def from_gguf(cls, gguf: GGUFFile) -> ModelInfo:
        return cls.from_header(gguf.metadata, gguf.tensors, path=str(gguf.path),
                               file_bytes=gguf.file_bytes)

    @classmethod
    def from_header(
        cls,
        metadata: Mapping[str, Any],
        tensors: Sequence[TensorInfo],
        *,
        path: str | None = None,
        file_bytes: int | None = None,
    ) -> ModelInfo:
        return _describe(metadata, tensors, path, file_bytes)


def load_model(path: str | os.PathLike[str]) -> ModelInfo:
    """Read a GGUF header and describe the model; raises GGUFError for anything unreadable,
    or that llama.cpp's loader would refuse (validate.py)."""
    gguf = read_gguf(path)
    validate.check_header(gguf)
    try:
        model = ModelInfo.from_gguf(gguf)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError,
            OverflowError) as exc:
        raise GGUFError(gguf.path, f"not a usable model header: {exc}") from None
    validate.check_model(model)
    return model


def _whole(key: str, value: Any) -> int:
    """A header number as llama.cpp's uint32 hyperparameters hold it (no float, bool or text)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be a whole number, not {value!r:.40}")
    if not 0 <= value < 2**32:
        raise ValueError(f"{key} = {value} does not fit llama.cpp's uint32")
    return value


class _Meta:
    """Typed access to ``<arch>.<key>`` metadata with the errors llama.cpp would give."""

    def __init__(self, metadata: Mapping[str, Any], arch: str) -> None:
        self.md = metadata
        self.arch = arch

    def get(self, key: str, default: Any = None) -> Any:
        return self.md.get(f"{self.arch}.{key}", default)

    def num(self, key: str, default: int | None = None) -> int:
        value = self.get(key, default)
        if value is None:
            raise KeyError(f"missing {self.arch}.{key}")
        if isinstance(value, Sequence) and not isinstance(value, str):
            raise TypeError(f"{self.arch}.{key} is an array, expected a number")
        return _whole(f"{self.arch}.{key}", value)

    def per_layer(self, key: str, n_layer: int, default: int | list[int]) -> list[int]:
        """llama.cpp's get_key_or_arr: a scalar for all layers, or one value per layer."""
        value = self.get(key, default)
        name = f"{self.arch}.{key}"
        if isinstance(value, Sequence) and not isinstance(value, str):
            if len(value) < n_layer:
                raise ValueError(f"{name} has {len(value)} entries for {n_layer} layers")
            return [_whole(name, v) for v in value[:n_layer]]
        return [_whole(name, value)] * n_layer


def weight_group(name: str, n_layer_all: int, n_layer: int,
                 output_names: frozenset[str] | set[str] | Sequence[str]) -> int | str:
    """Where a weight goes with its layer: its block's index (rope tables: layer 0's),
    "input" (embeddings, always on the host), "output" (with the output layer), "other",
    or "skip" (a NextN/MTP block llama.cpp does not load)."""
    m = _BLK.match(name)
    if m and int(m.group(1)) < n_layer_all:
        il = int(m.group(1))
        return "skip" if il >= n_layer else il
    if name.split(".", 1)[0] in output_names:
        return "output"
    if name.startswith(_INPUT_TENSORS):
        return "input"
    if name.startswith(_LAYER0_TENSORS):
        return 0  # a repeating-layer tensor made with layer index 0
    return "other"


def _describe(md: Mapping[str, Any], tensors: Sequence[TensorInfo], path: str | None,
              file_bytes: int | None) -> ModelInfo:
    arch = str(md.get("general.architecture") or "")
    if not arch:
        raise KeyError("general.architecture is missing")
    meta = _Meta(md, arch)
    warnings: list[str] = []
    notes: list[str] = []
    if arch not in KNOWN_ARCHS:
        warnings.append(f"architecture '{arch}' is not one kvgui has checked against llama.cpp;"
                        " the estimate uses its generic header keys")

    n_layer_all = meta.num("block_count")
    if not 0 < n_layer_all <= 512:
        raise ValueError(f"{arch}.block_count = {n_layer_all} is out of range")
    n_layer_nextn = meta.num("nextn_predict_layers", 0)
    n_layer = n_layer_all - n_layer_nextn
    n_embd = meta.num("embedding_length")
    n_ctx_train = meta.num("context_length", 0)
    n_head_arr = meta.per_layer("attention.head_count", n_layer_all, 0)
    n_head_kv_arr = meta.per_layer("attention.head_count_kv", n_layer_all,
                                   meta.get("attention.head_count", 0))
    n_ff_arr = meta.per_layer("feed_forward_length", n_layer_all, 0)
    n_head = n_head_arr[0] if n_head_arr else 0
    n_head_max = max(n_head_arr) if n_head_arr else 0
    if n_head_max > 0:
        head_k = meta.num("attention.key_length", n_embd // n_head_max if n_head else 0)
        head_v = meta.num("attention.value_length", n_embd // n_head_max if n_head else 0)
        if n_head == 0:  # first layer recurrent: llama.cpp still divides by n_head(0)
            head_k = meta.num("attention.key_length", 0)
            head_v = meta.num("attention.value_length", 0)
    else:
        head_k = head_v = 0
    head_k_swa = meta.num("attention.key_length_swa", head_k)
    head_v_swa = meta.num("attention.value_length_swa", head_v)
    is_mla = bool(meta.get("attention.key_length_mla")) and \
        bool(meta.get("attention.value_length_mla"))

    # which layers are recurrent, keep KV, slide: the architecture's rule (layer_rules.py)
    rule = layer_rules.rule_for(arch)
    shape = layer_rules.layers(md, arch, n_layer_all, n_layer, n_head_kv_arr, n_ff_arr,
                               warnings)
    is_recr, swa_flags, n_swa, chunked = shape.recurrent, shape.swa, shape.n_swa, shape.chunked
    kv_from_start = shape.kv_from_start
    no_memory = rule.kv == layer_rules.KV_NONE or md.get(f"{arch}.attention.causal") is False
    routed = {int(m.group(1)) for t in tensors if (m := _ROUTER.match(t.name))}
    layers = []
    for il in range(n_layer_all):
        attn = shape.kv[il]
        hk = head_k_swa if swa_flags[il] else head_k
        hv = head_v_swa if swa_flags[il] else head_v
        nkv = n_head_kv_arr[il]
        layers.append(LayerKV(
            n_embd_k=hk * nkv if attn else 0,
            n_embd_v=(0 if is_mla else hv * nkv) if attn else 0,
            swa=swa_flags[il],
            recurrent=is_recr[il] and rule.recurrent != layer_rules.RECR_NONE,
            has_kv=attn,
            experts=il in routed,
        ))

    # recurrent state sizes (llama_hparams::n_embd_r / n_embd_s)
    n_embd_r = n_embd_s = 0
    if any(layer.recurrent for layer in layers):
        n_embd_r, n_embd_s = layer_rules.state_sizes(rule, md, arch, n_embd, n_head)
        if arch in _UNVERIFIED_STATE:
            warnings.append(f"{arch}'s recurrent state is estimated from its header keys "
                            "(not checked against llama.cpp)")

    # weights: by layer, input (token embedding), output. The NextN/MTP blocks are in the file
    # but llama.cpp does not load them (TENSOR_SKIP unless MTP speculation asks for them).
    layer_weights = [0] * n_layer_all
    input_w = output_w = other_w = 0
    names = set()
    skipped = 0
    output_names = layer_rules.output_tensors(arch)
    align = layer_rules.WEIGHT_ALIGNMENT
    loaded: list[TensorInfo] = []
    for t in tensors:
        names.add(t.name)
        nbytes = -(-t.nbytes // align) * align  # as placed in the model buffer
        group = weight_group(t.name, n_layer_all, n_layer, output_names)
        if group == "skip":
            skipped += t.n_elements
            continue
        loaded.append(t)
        if isinstance(group, int):
            layer_weights[group] += nbytes
        elif group == "output":
            output_w += nbytes
        elif group == "input":
            input_w += nbytes
        else:
            other_w += nbytes
    if n_layer_nextn and skipped:
        notes.append(f"{n_layer_nextn} NextN/MTP layer(s) in the file, not loaded "
                     "(llama.cpp loads them only for MTP speculation)")
    tied_w = 0
    if "output.weight" not in names:
        tok = next((t for t in tensors if t.name == "token_embd.weight"), None)
        if tok is not None and arch in layer_rules.OUTPUT_BEFORE_TOKEN_EMBD:
            # the output's copy of token_embd is made before token_embd itself: two copies
            output_w += -(-tok.nbytes // align) * align
            notes.append("tied embeddings: llama.cpp loads token_embd twice for this "
                         "architecture (input and output head)")
        elif tok is not None:
            # tied embeddings: llama.cpp shares token_embd with the output layer, and copies it
            # only when the output layer sits on another device (a GPU)
            tied_w = tok.nbytes
            notes.append("tied embeddings: the output layer reuses token_embd")

    n_params = sum(t.n_elements for t in tensors)  # llama_model_n_params: the whole file
    vocab = md.get("tokenizer.ggml.tokens")
    n_vocab = meta.num("vocab_size", len(vocab) if vocab is not None else 0)
    if not n_vocab:
        tok = next((t for t in tensors if t.name == "token_embd.weight"), None)
        n_vocab = tok.shape[1] if tok is not None and len(tok.shape) > 1 else 0
    ftype = md.get("general.file_type")
    file_type = FILE_TYPES.get(int(ftype), f"type {ftype}") if isinstance(ftype, int) \
        else _guess_file_type(tensors)
    n_expert = meta.num("expert_count", 0)
    n_expert_used = max(meta.per_layer("expert_used_count", n_layer_all, 0) or [0])

    n_swa_layers = sum(1 for il in range(n_layer) if swa_flags[il] and layers[il].has_kv)
    if n_swa:
        kind = "chunked attention" if chunked else "sliding window"
        notes.append(f"{kind} of {n_swa} tokens on {n_swa_layers} of {n_layer} layers")
    if is_mla:
        notes.append(f"multi-head latent attention: K cache only, "
                     f"{head_k} wide (kv_lora_rank {meta.num('attention.kv_lora_rank', 0)})")
    if arch in RECURRENT_ARCHS:
        notes.append("recurrent: fixed-size state per sequence, no KV cache")
    elif arch in HYBRID_ARCHS:
        n_attn = sum(1 for layer in layers if layer.has_kv)
        n_recr = sum(1 for layer in layers if layer.recurrent)
        n_both = sum(1 for layer in layers if layer.has_kv and layer.recurrent)
        n_mlp = sum(1 for layer in layers[:n_layer] if layer.stateless)
        note = f"hybrid: {n_attn} attention layers with KV cache, {n_recr} recurrent layers " \
            "with fixed state"
        if n_both:
            note += f" ({n_both} layers have both)"
        if n_mlp:
            note += f", {n_mlp} MLP-only layers with neither"
        notes.append(note)
    if kv_from_start >= 0:
        notes.append(f"only the first {kv_from_start} layers keep a KV cache; the rest share it")
    if n_expert:
        notes.append(f"mixture of experts: {n_expert_used} of {n_expert} experts per token")
    if no_memory:
        notes.append("no KV cache (encoder or non-causal model)")

    # shown on terminals and in widgets: control characters escaped, length bounded
    name = untrusted.one_line(str(md.get("general.name") or
                                  (os.path.basename(path) if path else arch)), 200)
    total_bytes = file_bytes if file_bytes is not None else sum(t.nbytes for t in tensors)
    return ModelInfo(
        path=path, name=name, arch=arch, file_type=file_type, file_bytes=total_bytes,
        n_params=n_params, n_layer=n_layer, n_ctx_train=n_ctx_train, n_embd=n_embd,
        n_head=n_head_max, n_head_kv=max(n_head_kv_arr) if n_head_kv_arr else 0,
        n_embd_head_k=head_k, n_embd_head_v=head_v, n_embd_head_k_swa=head_k_swa,
        n_embd_head_v_swa=head_v_swa, n_vocab=n_vocab,
        n_ff=max(n_ff_arr) if n_ff_arr else 0, n_expert=n_expert, n_expert_used=n_expert_used,
        n_swa=n_swa, n_swa_layers=n_swa_layers,
        is_recurrent=arch in RECURRENT_ARCHS, is_hybrid=arch in HYBRID_ARCHS, is_mla=is_mla,
        layers=tuple(layers), layer_weights=tuple(layer_weights), input_weights=input_w,
        output_weights=output_w, other_weights=other_w, tied_output_weights=tied_w,
        n_embd_r=n_embd_r, n_embd_s=n_embd_s,
        swa_chunked=chunked, n_layer_nextn=n_layer_nextn, notes=tuple(notes),
        warnings=tuple(warnings), n_ff_exp=meta.num("expert_feed_forward_length", 0),
        ssm_d_inner=meta.num("ssm.inner_size", 0), ssm_d_state=meta.num("ssm.state_size", 0),
        ssm_n_group=meta.num("ssm.group_count", 0),
        ssm_dt_rank=meta.num("ssm.time_step_rank", 0),
        block_tensors=frozenset(_BLK.sub("", n) for n in names if _BLK.match(n)),
        tensors=tuple(loaded),
        arch_keys=tuple(sorted((k[len(arch) + 1:], v) for k, v in md.items()
                               if k.startswith(arch + ".")
                               and isinstance(v, (int, float, bool, str)))),
        tensor_table=tuple((t.name, t.type_id, tuple(t.shape)) for t in tensors),
        arch_arrays=_arch_arrays(md, arch),
    )


def _arch_arrays(md: Mapping[str, Any], arch: str) -> tuple[tuple[str, tuple[int | float, ...]],
                                                            ...]:
    """The "<arch>." keys holding arrays of numbers (per-layer head counts, patterns, ...)."""
    out = []
    for k, v in md.items():
        if k.startswith(arch + ".") and isinstance(v, (list, tuple)) \
                and all(isinstance(x, (int, float)) for x in v):
            out.append((k[len(arch) + 1:], tuple(v)))
    return tuple(sorted(out))


def _guess_file_type(tensors: Sequence[TensorInfo]) -> str:
    """The most common weight type, for files without general.file_type."""
    counts: dict[int, int] = {}
    for t in tensors:
        if len(t.shape) >= 2:
            counts[t.type_id] = counts.get(t.type_id, 0) + t.nbytes
    if not counts:
        return "unknown"
    return ggml_types.by_id(max(counts, key=lambda k: counts[k])).name.upper()
