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

from kvgui.core.gguf import ggml_types
from kvgui.core.gguf.reader import GGUFError, GGUFFile, TensorInfo, read_gguf

# llama.h enum llama_ftype, for "general.file_type".
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
    10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
    16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S",
    22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE",
}

RECURRENT_ARCHS = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
HYBRID_ARCHS = frozenset({
    "jamba", "falcon-h1", "plamo2", "granitehybrid", "lfm2", "lfm2moe", "nemotron_h",
    "nemotron_h_moe", "qwen3next", "kimi-linear", "bailingmoe3", "qwen35", "qwen35moe",
    "minimax-01",
})
# Encoders and diffusion models get no KV cache at all (llama_model::create_memory).
NO_MEMORY_ARCHS = frozenset({
    "bert", "jina-bert-v2", "jina-bert-v3", "nomic-bert", "nomic-bert-moe", "neo-bert",
    "eurobert", "wavtokenizer-dec", "modern-bert", "gemma-embedding", "dream", "llada",
    "llada-moe", "rnd1",
})
# Architectures whose KV layout kvgui models exactly (the rest: generic keys + a warning).
KNOWN_ARCHS = frozenset({
    "llama", "qwen2", "qwen2moe", "qwen3", "qwen3moe", "mistral3", "gemma", "gemma2", "gemma3",
    "gemma3n", "cohere2", "command-r", "phi3", "phimoe", "deepseek2", "llama4", "gpt-oss",
    "granite", "granitemoe", "olmo2", "olmoe", "exaone", "exaone4", "starcoder2", "stablelm",
    "internlm2", "minicpm", "glm4", "glm4moe", "smollm3", "mamba", "mamba2", "jamba",
    "granitehybrid", "lfm2", "qwen2vl", "qwen3vl", "ernie4_5", "ernie4_5-moe", "hunyuan-dense",
    "gpt2", "bloom", "falcon", "mpt", "baichuan", "orion", "xverse", "deci", "arcee",
    "seed_oss", "apertus", "mellum", "smallthinker", "plamo3", "afmoe", "exaone-moe",
    "nemotron", "dots1", "bailingmoe", "bailingmoe2", "chatglm", "qwen", "phi2",
    "gptneox", "starcoder", "refact", "codeshell", "grok", "dbrx", "arctic", "mimo2",
})


@dataclass(frozen=True)
class SwaRule:
    """How an architecture marks its sliding-window layers (from src/models/<arch>.cpp)."""

    pattern: int  # every n-th layer is dense: il % n < n-1 slides (0 = all slide)
    dense_first: bool = False  # il % n != 0 slides instead
    default_window: int = 0  # window when the file has no sliding_window key
    only_if_window: bool = False  # SWA only when the file has sliding_window > 0
    chunked: bool = False


SWA_RULES: dict[str, SwaRule] = {
    "gemma2": SwaRule(2, default_window=4096),
    "gemma3": SwaRule(6, only_if_window=True),
    "gemma3n": SwaRule(5),
    "cohere2": SwaRule(4),
    "cohere2moe": SwaRule(4, dense_first=True),
    "gpt-oss": SwaRule(2),
    "llama4": SwaRule(4, default_window=8192, chunked=True),
    "exaone-moe": SwaRule(4, default_window=128),
    "afmoe": SwaRule(4, only_if_window=True),
    "olmo2": SwaRule(4, only_if_window=True),
    "plamo3": SwaRule(8, only_if_window=True),
    "smallthinker": SwaRule(4, dense_first=True, only_if_window=True),
    "mellum": SwaRule(4, only_if_window=True),
    "laguna": SwaRule(4, dense_first=True, only_if_window=True),
    "muse-glimmer": SwaRule(4),
}
# Architectures that read a per-layer pattern array only.
SWA_ARRAY_ARCHS = frozenset({"gemma4", "granite_swa", "maple", "spark2_5", "mimo2", "step35"})


@dataclass(frozen=True)
class LayerKV:
    """One layer's cache shape: K and V widths per cell (0 = no such cache)."""

    n_embd_k: int
    n_embd_v: int
    swa: bool
    recurrent: bool
    has_kv: bool


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
        """Some layer keeps a KV cache (the cache type matters)."""
        return any(layer.has_kv and not layer.recurrent for layer in self.layers)

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
    """Read a GGUF header and describe the model; raises GGUFError for anything unreadable."""
    gguf = read_gguf(path)
    try:
        return ModelInfo.from_gguf(gguf)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError) as exc:
        raise GGUFError(gguf.path, f"not a usable model header: {exc}") from None


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
        if isinstance(value, list):
            raise TypeError(f"{self.arch}.{key} is an array, expected a number")
        return int(value)

    def per_layer(self, key: str, n_layer: int, default: int | list[int]) -> list[int]:
        """llama.cpp's get_key_or_arr: a scalar for all layers, or one value per layer."""
        value = self.get(key, default)
        if isinstance(value, list):
            if len(value) < n_layer:
                raise ValueError(f"{self.arch}.{key} has {len(value)} entries for {n_layer} layers")
            return [int(v) for v in value[:n_layer]]
        return [int(value)] * n_layer


def _swa_layers(meta: _Meta, arch: str, n_layer_all: int, n_layer: int,
                is_recr: list[bool], warnings: list[str]) -> tuple[list[bool], int, bool]:
    """Which layers use a sliding window, the window, and whether it is chunked."""
    window_key = meta.get("attention.sliding_window")
    pattern_value = meta.get("attention.sliding_window_pattern")
    no_swa = ([False] * n_layer_all, 0, False)

    def from_pattern(n_pattern: int, dense_first: bool) -> list[bool]:
        if isinstance(pattern_value, list):
            flags = [bool(v) for v in pattern_value[:n_layer_all]]
            return flags + [False] * (n_layer_all - len(flags))
        if pattern_value is not None:
            n_pattern = int(pattern_value)
        out = []
        for il in range(n_layer_all):
            if il >= n_layer:
                out.append(False)
            elif dense_first:
                out.append(n_pattern == 0 or il % n_pattern != 0)
            else:
                out.append(n_pattern == 0 or il % n_pattern < n_pattern - 1)
        return out

    if arch == "lfm2" or arch == "lfm2moe":
        if window_key and int(window_key) > 0:
            return [not r for r in is_recr], int(window_key), False
        return no_swa
    if arch == "exaone4":
        window = int(window_key) if window_key is not None else 4096
        if n_layer == 64:
            return from_pattern(4, False), window, False
        return no_swa
    if arch == "llama4":
        if window_key is not None and int(window_key) == 0:
            return no_swa
        return from_pattern(4, False), 8192, True  # llama4.cpp forces 8192
    rule = SWA_RULES.get(arch)
    if rule is not None:
        if rule.only_if_window and not (window_key and int(window_key) > 0):
            return no_swa
        window = int(window_key) if window_key is not None else rule.default_window
        if arch == "smallthinker":
            window = 4096  # smallthinker.cpp overrides the file's value
        if window <= 0:
            raise KeyError(f"missing {arch}.attention.sliding_window")
        return from_pattern(rule.pattern, rule.dense_first), window, rule.chunked
    if arch in SWA_ARRAY_ARCHS or (isinstance(pattern_value, list) and window_key):
        if not isinstance(pattern_value, list):
            raise KeyError(f"missing {arch}.attention.sliding_window_pattern")
        if arch not in SWA_ARRAY_ARCHS:
            warnings.append(f"sliding-window layers of '{arch}' read from its pattern array "
                            "(kvgui has no rule for this architecture)")
        return from_pattern(0, False), int(window_key or 0), False
    if window_key and int(window_key) > 0 and arch not in ("phi3", "qwen2", "mistral3",
                                                           "llama", "qwen3", "starcoder2"):
        warnings.append(f"{arch} declares a sliding window of {window_key}; kvgui does not "
                        "know whether llama.cpp applies it and assumes full attention")
    return no_swa


def _recurrent_layers(meta: _Meta, arch: str, n_layer_all: int,
                      n_head_kv: list[int]) -> list[bool]:
    if arch in RECURRENT_ARCHS:
        return [True] * n_layer_all
    if arch not in HYBRID_ARCHS:
        return [False] * n_layer_all
    if arch == "falcon-h1":
        return [True] * n_layer_all  # every layer has both attention and SSM state
    if arch in ("qwen3next", "qwen35", "qwen35moe", "kimi-linear", "minimax-01"):
        interval = meta.get("full_attention_interval", 4)
        return [(il + 1) % int(interval) != 0 for il in range(n_layer_all)]
    # jamba, granitehybrid, lfm2, nemotron_h, plamo2: layers without KV heads are recurrent
    return [n == 0 for n in n_head_kv]


def _describe(md: Mapping[str, Any], tensors: Sequence[TensorInfo], path: str | None,
              file_bytes: int | None) -> ModelInfo:
    arch = str(md.get("general.architecture") or "")
    if not arch:
        raise KeyError("general.architecture is missing")
    meta = _Meta(md, arch)
    warnings: list[str] = []
    notes: list[str] = []
    if arch not in KNOWN_ARCHS and arch not in SWA_RULES and arch not in HYBRID_ARCHS \
            and arch not in RECURRENT_ARCHS and arch not in NO_MEMORY_ARCHS:
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

    is_recr = _recurrent_layers(meta, arch, n_layer_all, n_head_kv_arr)
    swa_flags, n_swa, chunked = _swa_layers(meta, arch, n_layer_all, n_layer, is_recr, warnings)

    kv_from_start = -1
    if arch == "gemma3n":
        kv_from_start = 20
    elif arch == "gemma4":
        kv_from_start = n_layer_all - meta.num("attention.shared_kv_layers", 0)

    no_memory = arch in NO_MEMORY_ARCHS or md.get(f"{arch}.attention.causal") is False
    layers = []
    for il in range(n_layer_all):
        has_kv = (kv_from_start < 0 or il < kv_from_start) and not no_memory
        if il >= n_layer:  # NextN/MTP layers are filtered out of the main context's cache
            has_kv = False
        hk = head_k_swa if swa_flags[il] else head_k
        hv = head_v_swa if swa_flags[il] else head_v
        nkv = n_head_kv_arr[il]
        attn = has_kv and (arch not in HYBRID_ARCHS or not is_recr[il] or arch == "falcon-h1")
        layers.append(LayerKV(
            n_embd_k=hk * nkv if attn else 0,
            n_embd_v=(0 if is_mla else hv * nkv) if attn else 0,
            swa=swa_flags[il],
            recurrent=is_recr[il] and not no_memory,
            has_kv=attn,
        ))
    if arch in RECURRENT_ARCHS:
        layers = [LayerKV(0, 0, False, True, False) for _ in range(n_layer_all)]

    # recurrent state sizes (llama_hparams::n_embd_r / n_embd_s)
    n_embd_r = n_embd_s = 0
    if any(is_recr):
        wkv = meta.num("wkv.head_size", 0)
        shortconv = meta.num("shortconv.l_cache", 0)
        d_conv = meta.num("ssm.conv_kernel", 0)
        d_inner = meta.num("ssm.inner_size", 0)
        d_state = meta.num("ssm.state_size", 0)
        n_group = meta.num("ssm.group_count", 0)
        if wkv:
            n_embd_r = meta.num("token_shift_count", 2) * n_embd
            n_embd_s = n_embd * wkv
        elif shortconv:
            n_embd_r = n_embd * (shortconv - 1)
        else:
            n_embd_r = (d_conv - 1 if d_conv > 0 else 0) * (d_inner + 2 * n_group * d_state)
            n_embd_s = d_state * d_inner
        if arch in ("qwen3next", "qwen35", "qwen35moe", "kimi-linear", "minimax-01"):
            warnings.append(f"{arch}'s linear-attention state is estimated from its ssm keys")

    # weights: by layer, input (token embedding), output
    layer_weights = [0] * n_layer_all
    input_w = output_w = other_w = 0
    names = set()
    blk = re.compile(r"^blk\.(\d+)\.")
    for t in tensors:
        names.add(t.name)
        m = blk.match(t.name)
        if m and int(m.group(1)) < n_layer_all:
            layer_weights[int(m.group(1))] += t.nbytes
        elif t.name.startswith(("token_embd", "per_layer_token_embd", "token_types",
                                "position_embd")):
            input_w += t.nbytes
        elif t.name.startswith(("output", "cls")):
            output_w += t.nbytes
        else:
            other_w += t.nbytes
    tied_w = 0
    if "output.weight" not in names:
        tok = next((t for t in tensors if t.name == "token_embd.weight"), None)
        if tok is not None:
            # tied embeddings: llama.cpp shares token_embd with the output layer, and copies it
            # only when the output layer sits on another device (a GPU)
            tied_w = tok.nbytes
            notes.append("tied embeddings: the output layer reuses token_embd")

    n_params = sum(t.n_elements for t in tensors)
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
        notes.append(f"hybrid: {n_attn} attention layers with KV cache, "
                     f"{sum(is_recr)} recurrent layers with fixed state")
    if kv_from_start >= 0:
        notes.append(f"only the first {kv_from_start} layers keep a KV cache; the rest share it")
    if n_expert:
        notes.append(f"mixture of experts: {n_expert_used} of {n_expert} experts per token")
    if no_memory:
        notes.append("no KV cache (encoder or non-causal model)")

    name = str(md.get("general.name") or (os.path.basename(path) if path else arch))
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
        block_tensors=frozenset(blk.sub("", n) for n in names if blk.match(n)),
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
