"""Which layers keep what, per architecture, as the bundled llama.cpp decides it.

Each family's rule is one entry in ``RULES`` with the source it was read from, so it can be
checked line by line against llama.cpp (src/models/<arch>.cpp load_arch_hparams, and
src/llama-model.cpp llama_model::create_memory for the cache filters):

- which layers are recurrent (``hparams.is_recr_impl``): they keep a fixed-size state per
  sequence (conv + ssm / wkv) in llama_memory_recurrent;
- which layers keep a KV cache: every layer of a transformer, but only the layers the hybrid
  memory's attention filter accepts in a hybrid (falcon-h1: all of them, beside the SSM);
- which layers keep neither (nemotron_h's MLP-only blocks);
- which layers slide (``hparams.is_swa_impl``) and over what window;
- which layers keep no cache of their own (gemma3n / gemma4 share the last ones').

An architecture without an entry is read with the generic keys (and info.py warns).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# --- which layers are recurrent (hparams.is_recr_impl) -------------------------------------
RECR_NONE = "none"  # a transformer: no layer is recurrent
RECR_ALL = "all"  # llm_arch_is_recurrent (is_recr_impl filled with 1), falcon-h1 (std::fill)
RECR_NO_KV_HEADS = "no_kv_heads"  # is_recr = n_head_kv(il) == 0 (jamba, granitehybrid, lfm2)
RECR_NO_KV_HEADS_NO_FF = "no_kv_heads_no_ff"  # n_head_kv(il) == 0 && n_ff(il) == 0 (nemotron_h)
RECR_INTERVAL = "interval"  # attention.recurrent_layers, else (il + 1) % interval != 0 (qwen3next)

# --- which layers keep a KV cache (the attention filter of the hybrid memory) ---------------
KV_ALL = "all"  # llama_kv_cache with no filter; falcon-h1's filter_attn returns true
KV_NOT_RECURRENT = "not_recurrent"  # llama_memory_hybrid's default: !is_recr(il)
KV_NOT_RECURRENT_NO_FF = "not_recurrent_no_ff"  # nemotron_h: !is_recr(il) && n_ff(il) == 0
KV_TRUNK_NOT_RECURRENT = "trunk_not_recurrent"  # qwen3next & co: il < n_layer && !is_recr(il)
KV_NONE = "none"  # create_memory returns nullptr (encoders, diffusion models)

# --- what the recurrent state is made of (llama_hparams::n_embd_r / n_embd_s) --------------
STATE_SSM = "ssm"  # Mamba: (d_conv - 1) * (d_inner + 2 n_group d_state), d_state * d_inner
STATE_WKV = "wkv"  # RWKV: token_shift_count * n_embd, n_embd * wkv_head_size
STATE_SHORTCONV = "shortconv"  # LFM2: n_embd * (l_cache - 1), no S
STATE_KDA = "kda"  # Kimi KDA: 3 (d_conv - 1) n_head kda, kda^2 n_head


@dataclass(frozen=True)
class SwaRule:
    """How an architecture marks its sliding-window layers (llama_model_base::load_swa_pattern,
    llama_hparams::set_swa_pattern): a pattern array in the file wins, else a period."""

    pattern: int  # every n-th layer is dense: il % n < n-1 slides (0 = all slide)
    dense_first: bool = False  # il % n != 0 slides instead
    default_window: int = 0  # window when the file has no sliding_window key
    only_if_window: bool = False  # SWA only when the file has sliding_window > 0
    chunked: bool = False  # LLAMA_SWA_TYPE_CHUNKED (llama4)
    forced_window: int = 0  # the window llama.cpp sets whatever the file says
    only_if_layers: int = 0  # SWA only for this block count (exaone4: the 32B)
    off_if_zero: bool = False  # a sliding_window key of 0 turns SWA off (llama4)
    array_only: bool = False  # the per-layer pattern array is required (gemma4)
    not_recurrent: bool = False  # the non-recurrent layers slide (lfm2)


@dataclass(frozen=True)
class LayerRule:
    """One architecture's layers, as its llama.cpp source lays them out."""

    source: str  # where in llama.cpp this was read
    recurrent: str = RECR_NONE
    kv: str = KV_ALL
    state: str = STATE_SSM
    swa: SwaRule | None = None
    kv_from_start: int = -1  # hparams.n_layer_kv_from_start (gemma3n): later layers reuse
    kv_shared_key: str = ""  # n_layer_kv_from_start = n_layer_all - <this key> (gemma4)
    interval_default: int = 4  # full_attention_interval when the file has none


_MEM = "llama-model.cpp create_memory"
_HYBRID_FILTERS = f"{_MEM} (hybrid filters)"

RULES: dict[str, LayerRule] = {
    # pure recurrent (llm_arch_is_recurrent): llama_memory_recurrent over every layer
    "mamba": LayerRule("models/mamba.cpp; " + _MEM, RECR_ALL, KV_NONE),
    "mamba2": LayerRule("models/mamba2.cpp; " + _MEM, RECR_ALL, KV_NONE),
    "rwkv6": LayerRule("models/rwkv6.cpp; " + _MEM, RECR_ALL, KV_NONE, STATE_WKV),
    "rwkv6qwen2": LayerRule("models/rwkv6qwen2.cpp; " + _MEM, RECR_ALL, KV_NONE, STATE_WKV),
    "rwkv7": LayerRule("models/rwkv7.cpp; " + _MEM, RECR_ALL, KV_NONE, STATE_WKV),
    "arwkv7": LayerRule("models/arwkv7.cpp; " + _MEM, RECR_ALL, KV_NONE, STATE_WKV),
    # hybrids (llm_arch_is_hybrid): llama_memory_hybrid with per-arch layer filters
    "falcon-h1": LayerRule("models/falcon-h1.cpp: std::fill(is_recr_impl, true); "
                           f"{_HYBRID_FILTERS}: filter_attn and filter_recr both true",
                           RECR_ALL, KV_ALL),
    "jamba": LayerRule("models/jamba.cpp: is_recr = n_head_kv(il) == 0; " + _HYBRID_FILTERS,
                       RECR_NO_KV_HEADS, KV_NOT_RECURRENT),
    "granitehybrid": LayerRule("models/granite-hybrid.cpp: is_recr = n_head_kv(il) == 0; "
                               + _HYBRID_FILTERS, RECR_NO_KV_HEADS, KV_NOT_RECURRENT),
    "plamo2": LayerRule("models/plamo2.cpp: is_recr = n_head_kv(il) == 0; " + _HYBRID_FILTERS,
                        RECR_NO_KV_HEADS, KV_NOT_RECURRENT),
    "lfm2": LayerRule("models/lfm2.cpp: is_recr = n_head_kv(il) == 0, SWA on the others; "
                      + _HYBRID_FILTERS, RECR_NO_KV_HEADS, KV_NOT_RECURRENT, STATE_SHORTCONV,
                      SwaRule(0, only_if_window=True, not_recurrent=True)),
    "lfm2moe": LayerRule("models/lfm2moe.cpp: is_recr = n_head_kv(il) == 0; " + _HYBRID_FILTERS,
                         RECR_NO_KV_HEADS, KV_NOT_RECURRENT, STATE_SHORTCONV),
    "bailingmoe3": LayerRule("models/bailingmoe3.cpp: is_recr = n_head_kv(il) == 0; "
                             + _HYBRID_FILTERS, RECR_NO_KV_HEADS, KV_NOT_RECURRENT),
    "kimi-linear": LayerRule("models/kimi-linear.cpp: is_recr = n_head_kv(il) == 0 (KDA); "
                             + _HYBRID_FILTERS, RECR_NO_KV_HEADS, KV_NOT_RECURRENT, STATE_KDA),
    "nemotron_h": LayerRule("models/nemotron-h.cpp: is_recr = n_head_kv == 0 && n_ff == 0; "
                            f"{_HYBRID_FILTERS}: attention = !is_recr && n_ff == 0 (the MLP "
                            "blocks keep neither)", RECR_NO_KV_HEADS_NO_FF,
                            KV_NOT_RECURRENT_NO_FF),
    "nemotron_h_moe": LayerRule("models/nemotron-h.cpp (inherited); " + _HYBRID_FILTERS,
                                RECR_NO_KV_HEADS_NO_FF, KV_NOT_RECURRENT_NO_FF),
    "qwen3next": LayerRule("models/qwen3next.cpp: attention.recurrent_layers or "
                           "(il + 1) % full_attention_interval != 0; " + _HYBRID_FILTERS,
                           RECR_INTERVAL, KV_TRUNK_NOT_RECURRENT),
    "qwen35": LayerRule("models/qwen35.cpp (as qwen3next); " + _HYBRID_FILTERS,
                        RECR_INTERVAL, KV_TRUNK_NOT_RECURRENT),
    "qwen35moe": LayerRule("models/qwen35moe.cpp (as qwen3next); " + _HYBRID_FILTERS,
                           RECR_INTERVAL, KV_TRUNK_NOT_RECURRENT),
    "minimax-01": LayerRule("models/minimax-01.cpp (as qwen3next); " + _HYBRID_FILTERS,
                            RECR_INTERVAL, KV_TRUNK_NOT_RECURRENT),
    # transformers whose layers differ
    "gemma2": LayerRule("models/gemma2.cpp: load_swa_pattern(2), n_swa 4096 by default",
                        swa=SwaRule(2, default_window=4096)),
    "gemma3": LayerRule("models/gemma3.cpp: SWA iff sliding_window > 0, load_swa_pattern(6)",
                        swa=SwaRule(6, only_if_window=True)),
    "gemma3n": LayerRule("models/gemma3n.cpp: load_swa_pattern(5), n_layer_kv_from_start 20",
                         swa=SwaRule(5), kv_from_start=20),
    "gemma4": LayerRule("models/gemma4.cpp: is_swa from the pattern array, n_layer_kv_from_start"
                        " = n_layer_all - shared_kv_layers", swa=SwaRule(0, array_only=True),
                        kv_shared_key="attention.shared_kv_layers"),
    "cohere2": LayerRule("models/cohere2.cpp: load_swa_pattern(4), sliding_window required",
                         swa=SwaRule(4)),
    "cohere2moe": LayerRule("models/cohere2moe.cpp: load_swa_pattern(4, dense_first)",
                            swa=SwaRule(4, dense_first=True)),
    "gpt-oss": LayerRule("models/openai-moe.cpp: load_swa_pattern(2)", swa=SwaRule(2)),
    "llama4": LayerRule("models/llama4.cpp: chunked attention of 8192 (forced) on 3 of 4 "
                        "layers, off when sliding_window is 0",
                        swa=SwaRule(4, chunked=True, forced_window=8192, off_if_zero=True)),
    "exaone4": LayerRule("models/exaone4.cpp: SWA (n_swa 4096, load_swa_pattern(4)) only for "
                         "the 64-layer model", swa=SwaRule(4, default_window=4096,
                                                           only_if_layers=64)),
    "exaone-moe": LayerRule("models/exaone-moe.cpp: load_swa_pattern(4), n_swa 128 default",
                            swa=SwaRule(4, default_window=128)),
    "olmo2": LayerRule("models/olmo2.cpp: SWA iff sliding_window > 0, load_swa_pattern(4)",
                       swa=SwaRule(4, only_if_window=True)),
    "afmoe": LayerRule("models/afmoe.cpp: SWA iff sliding_window > 0, load_swa_pattern(4)",
                       swa=SwaRule(4, only_if_window=True)),
    "plamo3": LayerRule("models/plamo3.cpp: SWA iff sliding_window > 0, load_swa_pattern(8)",
                        swa=SwaRule(8, only_if_window=True)),
    "smallthinker": LayerRule("models/smallthinker.cpp: SWA iff sliding_window > 0, n_swa "
                              "forced to 4096, load_swa_pattern(4, dense_first)",
                              swa=SwaRule(4, dense_first=True, only_if_window=True,
                                          forced_window=4096)),
    "mellum": LayerRule("models/mellum.cpp: SWA iff sliding_window > 0, load_swa_pattern(4)",
                        swa=SwaRule(4, only_if_window=True)),
    "laguna": LayerRule("models/laguna.cpp: SWA iff sliding_window > 0, period 4 dense first",
                        swa=SwaRule(4, dense_first=True, only_if_window=True)),
    "muse-glimmer": LayerRule("models/muse-glimmer.cpp: load_swa_pattern(4)", swa=SwaRule(4)),
    "granite_swa": LayerRule("models/granite-swa.cpp: pattern array",
                             swa=SwaRule(0, array_only=True)),
    "maple": LayerRule("models/maple.cpp: pattern array", swa=SwaRule(0, array_only=True)),
    "spark2_5": LayerRule("models/spark2-5.cpp: pattern array", swa=SwaRule(0, array_only=True)),
    "mimo2": LayerRule("models/mimo2.cpp: pattern array", swa=SwaRule(0, array_only=True)),
    "step35": LayerRule("models/step35.cpp: pattern array", swa=SwaRule(0, array_only=True)),
    # phi3 reads sliding_window but llama.cpp turns SWA off (models/phi3.cpp)
    "phi3": LayerRule("models/phi3.cpp: a sliding_window > 0 is logged and SWA disabled"),
}
# Encoders and diffusion models get no KV cache at all (llama_model::create_memory: nullptr).
for _arch in ("bert", "jina-bert-v2", "jina-bert-v3", "nomic-bert", "nomic-bert-moe", "neo-bert",
              "eurobert", "wavtokenizer-dec", "modern-bert", "gemma-embedding", "dream", "llada",
              "llada-moe", "rnd1"):
    RULES[_arch] = LayerRule(_MEM + ": res = nullptr", kv=KV_NONE)

RECURRENT_ARCHS = frozenset(a for a, r in RULES.items() if r.recurrent == RECR_ALL
                            and r.kv == KV_NONE)
HYBRID_ARCHS = frozenset(a for a, r in RULES.items() if r.recurrent != RECR_NONE
                         and r.kv != KV_NONE)
NO_MEMORY_ARCHS = frozenset(a for a, r in RULES.items() if r.recurrent == RECR_NONE
                            and r.kv == KV_NONE)
# Architectures that declare a sliding_window llama.cpp does not apply (full attention).
IGNORES_SLIDING_WINDOW = frozenset({"phi3", "qwen2", "mistral3", "llama", "qwen3", "starcoder2"})
_DEFAULT = LayerRule("llama-model.cpp: every layer attends, no SWA")


# Tensors outside blk.N that llama.cpp places with the output layer (LLM_TENSOR_LAYER_OUTPUT),
# by the name before the first dot; lfm2 names its output norm token_embd_norm
# (LLM_TENSOR_OUTPUT_NORM_LFM2), which for RWKV is a layer-0 norm.
_OUTPUT_TENSORS = frozenset({"output", "output_norm", "cls", "altup_proj", "altup_unembd_proj"})
_OUTPUT_TENSORS_BY_ARCH = {"lfm2": _OUTPUT_TENSORS | {"token_embd_norm"},
                           "lfm2moe": _OUTPUT_TENSORS | {"token_embd_norm"}}


# Architectures whose load_arch_tensors creates the (tied) output head before token_embd: the
# TENSOR_DUPLICATED copy is made first, so token_embd is allocated twice even when both sit
# in the same buffer (models/gemma3n.cpp, models/gemma4.cpp; llama-model-loader.cpp
# create_tensor only reuses a duplicate that already exists).
OUTPUT_BEFORE_TOKEN_EMBD = frozenset({"gemma3n", "gemma4"})
# llama.cpp's model buffers place each tensor at the buffer type's alignment (CPU: 32 bytes;
# ggml_backend_buft_get_alloc_size), so a 4-byte layer scale takes 32.
WEIGHT_ALIGNMENT = 32


def output_tensors(arch: str) -> frozenset[str]:
    return _OUTPUT_TENSORS_BY_ARCH.get(arch, _OUTPUT_TENSORS)


def rule_for(arch: str) -> LayerRule:
    return RULES.get(arch, _DEFAULT)


@dataclass(frozen=True)
class Layers:
    """Per layer: recurrent, keeps KV, slides; and the window and whether it is chunked."""

    recurrent: tuple[bool, ...]
    kv: tuple[bool, ...]
    swa: tuple[bool, ...]
    n_swa: int
    chunked: bool
    kv_from_start: int  # -1: every layer keeps its own cache


def _as_int(value: Any) -> int:
    return int(value) if value is not None else 0


def recurrent_layers(rule: LayerRule, md: Mapping[str, Any], arch: str, n_layer_all: int,
                     n_layer: int, n_head_kv: Sequence[int], n_ff: Sequence[int]) -> list[bool]:
    """hparams.is_recr_impl, per the architecture's load_arch_hparams."""
    kind = rule.recurrent
    if kind == RECR_ALL:
        return [True] * n_layer_all
    if kind == RECR_NO_KV_HEADS:
        return [il < n_layer and n_head_kv[il] == 0 for il in range(n_layer_all)]
    if kind == RECR_NO_KV_HEADS_NO_FF:
        return [il < n_layer and n_head_kv[il] == 0 and n_ff[il] == 0
                for il in range(n_layer_all)]
    if kind == RECR_INTERVAL:
        flags = md.get(f"{arch}.attention.recurrent_layers")
        if isinstance(flags, list):
            if len(flags) != n_layer_all:
                raise ValueError(f"{arch}.attention.recurrent_layers has {len(flags)} entries "
                                 f"for {n_layer_all} layers")
            return [bool(v) for v in flags]
        interval = _as_int(md.get(f"{arch}.full_attention_interval", rule.interval_default))
        if interval <= 0:
            raise ValueError(f"{arch}.full_attention_interval = {interval}")
        return [il < n_layer and (il + 1) % interval != 0 for il in range(n_layer_all)]
    return [False] * n_layer_all


def kv_layers(rule: LayerRule, n_layer_all: int, n_layer: int, recurrent: Sequence[bool],
              n_ff: Sequence[int], causal: bool) -> list[bool]:
    """The layers whose K/V the memory allocates (before the kv_from_start sharing)."""
    kind = rule.kv
    if kind == KV_NONE or not causal:
        return [False] * n_layer_all
    if kind == KV_NOT_RECURRENT:
        return [not r for r in recurrent]
    if kind == KV_NOT_RECURRENT_NO_FF:
        return [not recurrent[il] and n_ff[il] == 0 for il in range(n_layer_all)]
    if kind == KV_TRUNK_NOT_RECURRENT:
        return [il < n_layer and not recurrent[il] for il in range(n_layer_all)]
    # a transformer (or falcon-h1): the NextN/MTP layers are filtered out of the main context
    return [il < n_layer for il in range(n_layer_all)]


def swa_layers(rule: LayerRule, md: Mapping[str, Any], arch: str, n_layer_all: int,
               n_layer: int, recurrent: Sequence[bool], warnings: list[str]
               ) -> tuple[list[bool], int, bool]:
    """hparams.is_swa_impl, the window (n_swa) and whether the window is chunked."""
    none: tuple[list[bool], int, bool] = ([False] * n_layer_all, 0, False)
    window_key = md.get(f"{arch}.attention.sliding_window")
    pattern = md.get(f"{arch}.attention.sliding_window_pattern")
    swa = rule.swa
    if swa is None:
        if isinstance(pattern, list) and window_key:
            # an unknown architecture that writes a pattern array: most read it
            warnings.append(f"sliding-window layers of '{arch}' read from its pattern array "
                            "(kvgui has no rule for this architecture)")
            return _pattern_flags(pattern, n_layer_all), _as_int(window_key), False
        if window_key and _as_int(window_key) > 0 and arch not in IGNORES_SLIDING_WINDOW \
                and arch not in RULES:
            warnings.append(f"{arch} declares a sliding window of {window_key}; kvgui does not "
                            "know whether llama.cpp applies it and assumes full attention")
        return none
    if swa.only_if_layers and n_layer != swa.only_if_layers:
        return none
    if swa.off_if_zero and window_key is not None and _as_int(window_key) == 0:
        return none
    if swa.only_if_window and not (window_key and _as_int(window_key) > 0):
        return none
    window = _as_int(window_key) if window_key is not None else swa.default_window
    if swa.forced_window:
        window = swa.forced_window
    if window <= 0:
        raise KeyError(f"missing {arch}.attention.sliding_window")
    if swa.not_recurrent:
        return [not r for r in recurrent], window, swa.chunked
    if isinstance(pattern, list):
        return _pattern_flags(pattern, n_layer_all), window, swa.chunked
    if swa.array_only:
        raise KeyError(f"missing {arch}.attention.sliding_window_pattern")
    n_pattern = _as_int(pattern) if pattern is not None else swa.pattern
    flags = []
    for il in range(n_layer_all):
        if il >= n_layer:
            flags.append(False)
        elif swa.dense_first:
            flags.append(n_pattern == 0 or il % n_pattern != 0)
        else:
            flags.append(n_pattern == 0 or il % n_pattern < n_pattern - 1)
    return flags, window, swa.chunked


def _pattern_flags(pattern: Sequence[Any], n_layer_all: int) -> list[bool]:
    flags = [bool(v) for v in pattern[:n_layer_all]]
    return flags + [False] * (n_layer_all - len(flags))


def kv_from_start(rule: LayerRule, md: Mapping[str, Any], arch: str, n_layer_all: int) -> int:
    """hparams.n_layer_kv_from_start: layers from here on reuse an earlier layer's cache."""
    if rule.kv_shared_key:
        return n_layer_all - _as_int(md.get(f"{arch}.{rule.kv_shared_key}", 0))
    return rule.kv_from_start


def state_sizes(rule: LayerRule, md: Mapping[str, Any], arch: str, n_embd: int,
                n_head: int) -> tuple[int, int]:
    """llama_hparams::n_embd_r() and n_embd_s(): f32 elements of one sequence's state."""

    def num(key: str, default: int = 0) -> int:
        value = md.get(f"{arch}.{key}", default)
        if isinstance(value, list):
            raise TypeError(f"{arch}.{key} is an array, expected a number")
        return int(value)

    wkv = num("wkv.head_size")
    if rule.state == STATE_WKV or wkv:
        return num("token_shift_count", 2) * n_embd, n_embd * wkv
    shortconv = num("shortconv.l_cache")
    if rule.state == STATE_SHORTCONV or shortconv:
        return n_embd * (shortconv - 1), 0
    d_conv = num("ssm.conv_kernel")
    kda = num("kda.head_dim")
    if rule.state == STATE_KDA or kda:
        d_inner = n_head * kda
        return 3 * (d_conv - 1 if d_conv > 0 else 3) * d_inner, kda * kda * n_head
    d_inner, d_state, n_group = num("ssm.inner_size"), num("ssm.state_size"), \
        num("ssm.group_count")
    n_conv = (d_conv - 1 if d_conv > 0 else 0) * (d_inner + 2 * n_group * d_state)
    return n_conv, d_state * d_inner


def layers(md: Mapping[str, Any], arch: str, n_layer_all: int, n_layer: int,
           n_head_kv: Sequence[int], n_ff: Sequence[int], warnings: list[str]) -> Layers:
    """Everything above for one model header."""
    rule = rule_for(arch)
    recr = recurrent_layers(rule, md, arch, n_layer_all, n_layer, n_head_kv, n_ff)
    causal = md.get(f"{arch}.attention.causal") is not False
    kv = kv_layers(rule, n_layer_all, n_layer, recr, n_ff, causal)
    swa, n_swa, chunked = swa_layers(rule, md, arch, n_layer_all, n_layer, recr, warnings)
    start = kv_from_start(rule, md, arch, n_layer_all)
    if start >= 0:
        kv = [k and il < start for il, k in enumerate(kv)]
    return Layers(tuple(recr), tuple(kv), tuple(swa), n_swa, chunked, start)
