"""GGUF headers (metadata + tensor table) built from a compact model description.

The catalog ships models as a few HF-config-like numbers instead of 100 KB tensor lists, and
the tests write the same headers out as sparse GGUF files that llama.cpp itself loads. So the
tensor names and shapes here must be exactly what the bundled llama.cpp's loader creates for
each architecture (src/models/<arch>.cpp, load_arch_tensors; shapes in GGUF order ne0, ne1…),
the metadata keys exactly what it reads (src/llama-arch.cpp), and the tensor types what
convert_hf_to_gguf.py + llama-quantize would choose (conversion/base.py, src/llama-quant.cpp).

Pure Python on purpose: no gguf, numpy or llama_cpp import, so the GUI can expand the catalog.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from kvgui.core.gguf import ggml_types

GGUF_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT; kvgui never writes general.alignment

# llama.h enum llama_ftype for the mixes kvgui can describe, and the type each starts from.
FILE_TYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "Q8_0": 7, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18,
    "BF16": 32, "MXFP4_MOE": 38,
}
_DEFAULT_TYPE: dict[str, str] = {
    "F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0", "Q4_K_S": "q4_k",
    "Q4_K_M": "q4_k", "Q5_K_M": "q5_k", "Q6_K": "q6_k", "MXFP4_MOE": "mxfp4",
}
QUANT_NAMES: tuple[str, ...] = tuple(FILE_TYPES)

_T = {t.name: t.id for t in ggml_types.BY_ID.values()}


class TensorDef(NamedTuple):
    """One row of a GGUF tensor table."""

    name: str
    shape: tuple[int, ...]  # GGUF order: ne0 (row length) first
    type_id: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return ggml_types.tensor_bytes(self.type_id, self.shape)


@dataclass(frozen=True)
class ModelSpec:
    """A model as the catalog stores it: llama.cpp arch name, HF-config numbers, a quant mix.

    ``hp`` uses the HF config.json names (hidden_size, num_hidden_layers, …) plus a few
    documented extras (rope_freqs, full_attn_idxs) where the config alone
    does not say what the GGUF holds.
    """

    name: str
    arch: str
    quant: str
    hp: Mapping[str, Any]


@dataclass(frozen=True)
class Header:
    metadata: dict[str, Any]
    tensors: list[TensorDef]

    @property
    def n_params(self) -> int:
        """What llama_model_n_params reports: the elements of every tensor in the file."""
        return sum(t.n_elements for t in self.tensors)

    @property
    def data_bytes(self) -> int:
        return sum(_pad(t.nbytes) for t in self.tensors)

    @property
    def data_offset(self) -> int:
        return _pad(header_bytes(self.metadata, self.tensors))

    @property
    def file_bytes(self) -> int:
        return self.data_offset + self.data_bytes

    def offsets(self) -> list[int]:
        """Each tensor's offset in the data section, as GGUFWriter lays them out."""
        out, pos = [], 0
        for t in self.tensors:
            out.append(pos)
            pos += _pad(t.nbytes)
        return out


def _pad(n: int, align: int = GGUF_ALIGNMENT) -> int:
    return (n + align - 1) // align * align


# --- GGUF value kinds: llama.cpp checks types strictly ("key ... has wrong type") ----------

def value_kind(value: Any) -> str:
    """The GGUF type a metadata value is written as: ints are uint32, floats float32, and
    arrays of ints int32 -- the types llama.cpp's loader asks for."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if not 0 <= value < 2**32:
            raise ValueError(f"integer metadata value {value} does not fit uint32")
        return "uint32"
    if isinstance(value, float):
        return "float32"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("empty metadata array")
        first = value[0]
        if isinstance(first, bool):
            return "array:bool"
        if isinstance(first, int):
            return "array:int32"
        if isinstance(first, float):
            return "array:float32"
        if isinstance(first, str):
            return "array:string"
    raise ValueError(f"unsupported metadata value {value!r}")


_SCALAR_BYTES = {"bool": 1, "uint32": 4, "float32": 4, "int32": 4}


def header_bytes(metadata: Mapping[str, Any], tensors: Sequence[TensorDef]) -> int:
    """Bytes before the (aligned) data section: magic, counts, key/values, tensor infos."""
    n = 4 + 4 + 8 + 8
    for key, value in metadata.items():
        n += 8 + len(key.encode()) + 4
        kind = value_kind(value)
        if kind == "string":
            n += 8 + len(value.encode())
        elif kind.startswith("array:"):
            sub = kind[6:]
            n += 4 + 8
            if sub == "string":
                n += sum(8 + len(s.encode()) for s in value)
            else:
                n += _SCALAR_BYTES[sub] * len(value)
        else:
            n += _SCALAR_BYTES[kind]
    for t in tensors:
        n += 8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8
    return n


# --- tokenizer -----------------------------------------------------------------------------

def synthetic_vocab(n_vocab: int) -> dict[str, Any]:
    """A SentencePiece ("llama") vocab of ``n_vocab`` tokens: <unk> <s> </s>, the 256 byte
    tokens llama.cpp's SPM tokenizer needs, then numbered fillers. Only the count matters for
    memory, and generating it keeps the catalog free of 262144-entry token lists."""
    if n_vocab < 259 + 1:
        raise ValueError(f"vocab of {n_vocab} tokens is too small for the byte tokens")
    tokens = ["<unk>", "<s>", "</s>"]
    tokens += [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"t{i}" for i in range(len(tokens), n_vocab)]
    types = [2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259)
    scores = [0.0] * 259 + [float(-i) for i in range(n_vocab - 259)]
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }


# --- tensor tables per architecture --------------------------------------------------------

class _Hp:
    """HF-config accessors shared by the builders."""

    def __init__(self, hp: Mapping[str, Any], arch: str) -> None:
        self.hp = hp
        self.arch = arch
        self.n_embd = int(hp["hidden_size"])
        self.n_layer = int(hp["num_hidden_layers"])
        self.n_head = int(hp.get("num_attention_heads", 0))  # 0: attention-free (mamba2)
        self.n_head_kv = int(hp.get("num_key_value_heads", self.n_head))
        default_head_dim = self.n_embd // self.n_head if self.n_head else 0
        self.head_dim = int(hp.get("head_dim") or default_head_dim)
        self.n_ff = int(hp.get("intermediate_size", 0))
        self.n_vocab = int(hp["vocab_size"])
        self.tied = bool(hp.get("tie_word_embeddings", False))

    def __getitem__(self, key: str) -> Any:
        return self.hp[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.hp.get(key, default)


Shapes = list[tuple[str, tuple[int, ...]]]


def _io(h: _Hp, out: Shapes, *, output: bool | None = None, norm: str = "output_norm") -> None:
    out.append(("token_embd.weight", (h.n_embd, h.n_vocab)))
    out.append((f"{norm}.weight", (h.n_embd,)))
    has_output = (not h.tied) if output is None else output
    if has_output:
        out.append(("output.weight", (h.n_embd, h.n_vocab)))


def _attn(out: Shapes, i: int, n_embd: int, n_q: int, n_kv: int, *, bias: bool = False,
          out_bias: bool = False, qk_norm: int = 0) -> None:
    b = f"blk.{i}."
    out += [(b + "attn_q.weight", (n_embd, n_q)), (b + "attn_k.weight", (n_embd, n_kv)),
            (b + "attn_v.weight", (n_embd, n_kv))]
    if bias:
        out += [(b + "attn_q.bias", (n_q,)), (b + "attn_k.bias", (n_kv,)),
                (b + "attn_v.bias", (n_kv,))]
    out.append((b + "attn_output.weight", (n_q, n_embd)))
    if out_bias:
        out.append((b + "attn_output.bias", (n_embd,)))
    if qk_norm:
        out += [(b + "attn_q_norm.weight", (qk_norm,)), (b + "attn_k_norm.weight", (qk_norm,))]


def _ffn(out: Shapes, i: int, n_embd: int, n_ff: int) -> None:
    b = f"blk.{i}."
    out += [(b + "ffn_gate.weight", (n_embd, n_ff)), (b + "ffn_down.weight", (n_ff, n_embd)),
            (b + "ffn_up.weight", (n_embd, n_ff))]


def _moe(out: Shapes, i: int, n_embd: int, n_ff_exp: int, n_expert: int) -> None:
    b = f"blk.{i}."
    out += [(b + "ffn_gate_inp.weight", (n_embd, n_expert)),
            (b + "ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert)),
            (b + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert)),
            (b + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert))]


def _t_llama(h: _Hp) -> Shapes:
    # src/models/llama.cpp; rope_freqs is the llama3 rope-scaling table convert adds
    out: Shapes = []
    _io(h, out)
    if h.get("rope_freqs"):
        out.append(("rope_freqs.weight", (h.head_dim // 2,)))
    for i in range(h.n_layer):
        out.append((f"blk.{i}.attn_norm.weight", (h.n_embd,)))
        _attn(out, i, h.n_embd, h.head_dim * h.n_head, h.head_dim * h.n_head_kv)
        out.append((f"blk.{i}.ffn_norm.weight", (h.n_embd,)))
        _ffn(out, i, h.n_embd, h.n_ff)
    return out


def _t_qwen2(h: _Hp) -> Shapes:
    # src/models/qwen2.cpp: q/o are n_embd wide; q/k/v biases
    out: Shapes = []
    _io(h, out)
    for i in range(h.n_layer):
        out.append((f"blk.{i}.attn_norm.weight", (h.n_embd,)))
        _attn(out, i, h.n_embd, h.n_embd, h.head_dim * h.n_head_kv, bias=True)
        out.append((f"blk.{i}.ffn_norm.weight", (h.n_embd,)))
        _ffn(out, i, h.n_embd, h.n_ff)
    return out


def _t_qwen3(h: _Hp) -> Shapes:
    out: Shapes = []
    _io(h, out)
    moe = h.arch == "qwen3moe"
    for i in range(h.n_layer):
        out.append((f"blk.{i}.attn_norm.weight", (h.n_embd,)))
        _attn(out, i, h.n_embd, h.head_dim * h.n_head, h.head_dim * h.n_head_kv,
              qk_norm=h.head_dim)
        out.append((f"blk.{i}.ffn_norm.weight", (h.n_embd,)))
        if moe:
            _moe(out, i, h.n_embd, int(h["moe_intermediate_size"]), int(h["num_experts"]))
        else:
            _ffn(out, i, h.n_embd, h.n_ff)
    return out


def _t_gemma(h: _Hp) -> Shapes:
    # src/models/gemma2.cpp / gemma3.cpp: output is always token_embd; post-norms; gemma3 q/k norms
    out: Shapes = []
    _io(h, out, output=False)
    qk = h.head_dim if h.arch == "gemma3" else 0
    for i in range(h.n_layer):
        b = f"blk.{i}."
        out.append((b + "attn_norm.weight", (h.n_embd,)))
        _attn(out, i, h.n_embd, h.head_dim * h.n_head, h.head_dim * h.n_head_kv)
        out.append((b + "post_attention_norm.weight", (h.n_embd,)))
        if qk:
            out += [(b + "attn_k_norm.weight", (qk,)), (b + "attn_q_norm.weight", (qk,))]
        out.append((b + "ffn_norm.weight", (h.n_embd,)))
        _ffn(out, i, h.n_embd, h.n_ff)
        out.append((b + "post_ffw_norm.weight", (h.n_embd,)))
    return out


def _t_deepseek2(h: _Hp) -> Shapes:
    # src/models/deepseek2.cpp, MLA layout (attn_k_b / attn_v_b split, as current convert writes)
    out: Shapes = []
    _io(h, out)
    n_head, e = h.n_head, h.n_embd
    q_lora = int(h.get("q_lora_rank") or 0)
    kv_lora = int(h["kv_lora_rank"])
    rope, nope, v_dim = int(h["qk_rope_head_dim"]), int(h["qk_nope_head_dim"]), int(h["v_head_dim"])
    n_exp, n_ff_exp = int(h["n_routed_experts"]), int(h["moe_intermediate_size"])
    n_shared = int(h["n_shared_experts"])
    for i in range(h.n_layer):
        b = f"blk.{i}."
        out.append((b + "attn_norm.weight", (e,)))
        if q_lora:
            out += [(b + "attn_q_a_norm.weight", (q_lora,)),
                    (b + "attn_q_a.weight", (e, q_lora)),
                    (b + "attn_q_b.weight", (q_lora, n_head * (nope + rope)))]
        else:
            out.append((b + "attn_q.weight", (e, n_head * (nope + rope))))
        out += [(b + "attn_kv_a_norm.weight", (kv_lora,)),
                (b + "attn_kv_a_mqa.weight", (e, kv_lora + rope)),
                (b + "attn_k_b.weight", (nope, kv_lora, n_head)),
                (b + "attn_v_b.weight", (kv_lora, v_dim, n_head)),
                (b + "attn_output.weight", (n_head * v_dim, e)),
                (b + "ffn_norm.weight", (e,))]
        if i < int(h["first_k_dense_replace"]):
            _ffn(out, i, e, h.n_ff)
        else:
            _moe(out, i, e, n_ff_exp, n_exp)
            out += [(b + "ffn_gate_shexp.weight", (e, n_ff_exp * n_shared)),
                    (b + "ffn_down_shexp.weight", (n_ff_exp * n_shared, e)),
                    (b + "ffn_up_shexp.weight", (e, n_ff_exp * n_shared))]
    return out


def _t_gpt_oss(h: _Hp) -> Shapes:
    # src/models/openai-moe.cpp: biases everywhere, attention sinks, output required
    out: Shapes = []
    _io(h, out, output=True)
    e, n_exp, n_ff = h.n_embd, int(h["num_local_experts"]), h.n_ff
    for i in range(h.n_layer):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (e,)), (b + "post_attention_norm.weight", (e,))]
        _attn(out, i, e, h.head_dim * h.n_head, h.head_dim * h.n_head_kv, bias=True,
              out_bias=True)
        out.append((b + "attn_sinks.weight", (h.n_head,)))
        _moe(out, i, e, n_ff, n_exp)
        out += [(b + "ffn_gate_inp.bias", (n_exp,)),
                (b + "ffn_gate_exps.bias", (n_ff, n_exp)),
                (b + "ffn_down_exps.bias", (e, n_exp)),
                (b + "ffn_up_exps.bias", (n_ff, n_exp))]
    return out


def _t_lfm2(h: _Hp) -> Shapes:
    # src/models/lfm2.cpp: short-conv layers + attention layers; output norm is token_embd_norm
    out: Shapes = []
    _io(h, out, norm="token_embd_norm")
    e, attn = h.n_embd, set(h["full_attn_idxs"])
    for i in range(h.n_layer):
        b = f"blk.{i}."
        out.append((b + "ffn_norm.weight", (e,)))
        _ffn(out, i, e, h.n_ff)
        out.append((b + "attn_norm.weight", (e,)))
        if i in attn:
            out += [(b + "attn_q_norm.weight", (h.head_dim,)),
                    (b + "attn_k_norm.weight", (h.head_dim,))]
            _attn(out, i, e, e, h.head_dim * h.n_head_kv)
        else:
            out += [(b + "shortconv.conv.weight", (int(h["conv_L_cache"]), e)),
                    (b + "shortconv.in_proj.weight", (e, 3 * e)),
                    (b + "shortconv.out_proj.weight", (e, e))]
    return out


def _t_mamba2(h: _Hp) -> Shapes:
    # src/models/mamba2.cpp; ssm_a / ssm_d have no ".weight" suffix
    out: Shapes = []
    _io(h, out)
    e, d_inner, d_state = h.n_embd, _mamba_d_inner(h), int(h["state_size"])
    n_group, n_ssm_head, d_conv = int(h["n_groups"]), _mamba_heads(h), int(h["conv_kernel"])
    conv_dim = d_inner + 2 * n_group * d_state
    for i in range(h.n_layer):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (e,)),
                (b + "ssm_in.weight", (e, d_inner + conv_dim + n_ssm_head)),
                (b + "ssm_conv1d.weight", (d_conv, conv_dim)),
                (b + "ssm_conv1d.bias", (conv_dim,)),
                (b + "ssm_dt.bias", (n_ssm_head,)),
                (b + "ssm_a", (1, n_ssm_head)),
                (b + "ssm_d", (1, n_ssm_head)),
                (b + "ssm_norm.weight", (d_inner // n_group, n_group)),
                (b + "ssm_out.weight", (d_inner, e))]
    return out


def _mamba_d_inner(h: _Hp) -> int:
    return int(h.get("expand", 2)) * h.n_embd


def _mamba_heads(h: _Hp) -> int:
    return _mamba_d_inner(h) // int(h["head_dim"])


# --- metadata per architecture -------------------------------------------------------------

def _m_common(h: _Hp, arch: str) -> dict[str, Any]:
    if arch == "mamba2":  # conversion/mamba.py: no attention keys, placeholder n_ctx and n_ff
        return {
            f"{arch}.context_length": 2**20,
            f"{arch}.embedding_length": h.n_embd,
            f"{arch}.feed_forward_length": 0,
            f"{arch}.attention.head_count": 0,
            f"{arch}.block_count": h.n_layer,
            f"{arch}.ssm.conv_kernel": int(h["conv_kernel"]),
            f"{arch}.ssm.inner_size": _mamba_d_inner(h),
            f"{arch}.ssm.state_size": int(h["state_size"]),
            f"{arch}.ssm.time_step_rank": _mamba_heads(h),
            f"{arch}.ssm.group_count": int(h["n_groups"]),
            f"{arch}.attention.layer_norm_rms_epsilon": float(h.get("layer_norm_epsilon", 1e-5)),
        }
    m: dict[str, Any] = {
        f"{arch}.vocab_size": h.n_vocab,
        f"{arch}.context_length": int(h["max_position_embeddings"]),
        f"{arch}.embedding_length": h.n_embd,
        f"{arch}.block_count": h.n_layer,
        f"{arch}.attention.head_count": h.n_head,
        f"{arch}.attention.head_count_kv": h.n_head_kv,
        f"{arch}.rope.freq_base": float(h.get("rope_theta", 10000.0)),
        f"{arch}.attention.layer_norm_rms_epsilon": float(h.get("rms_norm_eps", 1e-6)),
    }
    if h.n_ff:
        m[f"{arch}.feed_forward_length"] = h.n_ff
    if h.get("head_dim"):
        m[f"{arch}.attention.key_length"] = h.head_dim
        m[f"{arch}.attention.value_length"] = h.head_dim
    rs = h.get("rope_scaling") or {}
    if rs.get("type") in ("linear", "yarn"):
        m[f"{arch}.rope.scaling.type"] = rs["type"]
        m[f"{arch}.rope.scaling.factor"] = float(rs["factor"])
        if "original_max_position_embeddings" in rs:
            m[f"{arch}.rope.scaling.original_context_length"] = \
                int(rs["original_max_position_embeddings"])
    return m


def _m_arch(h: _Hp, arch: str, m: dict[str, Any]) -> None:
    if arch == "llama":
        m[f"{arch}.rope.dimension_count"] = h.head_dim
    if arch in ("gemma2", "gemma3", "gpt-oss") and h.get("sliding_window"):
        m[f"{arch}.attention.sliding_window"] = int(h["sliding_window"])
    if arch == "gemma2":
        m[f"{arch}.attn_logit_softcapping"] = float(h["attn_logit_softcapping"])
        m[f"{arch}.final_logit_softcapping"] = float(h["final_logit_softcapping"])
    if arch == "gemma3" and h.get("rope_local_base_freq"):
        m[f"{arch}.rope.freq_base_swa"] = float(h["rope_local_base_freq"])
    if arch == "qwen3moe":
        m[f"{arch}.expert_count"] = int(h["num_experts"])
        m[f"{arch}.expert_used_count"] = int(h["num_experts_per_tok"])
        m[f"{arch}.expert_feed_forward_length"] = int(h["moe_intermediate_size"])
    if arch == "gpt-oss":
        m[f"{arch}.expert_count"] = int(h["num_local_experts"])
        m[f"{arch}.expert_used_count"] = int(h["num_experts_per_tok"])
        m[f"{arch}.expert_feed_forward_length"] = h.n_ff
    if arch == "deepseek2":
        kv_lora, rope = int(h["kv_lora_rank"]), int(h["qk_rope_head_dim"])
        m.update({
            f"{arch}.attention.head_count_kv": 1,  # MLA: one latent "head"
            f"{arch}.attention.key_length": kv_lora + rope,
            f"{arch}.attention.value_length": kv_lora,
            f"{arch}.attention.key_length_mla": int(h["qk_nope_head_dim"]) + rope,
            f"{arch}.attention.value_length_mla": int(h["v_head_dim"]),
            f"{arch}.attention.kv_lora_rank": kv_lora,
            f"{arch}.rope.dimension_count": rope,
            f"{arch}.leading_dense_block_count": int(h["first_k_dense_replace"]),
            f"{arch}.expert_count": int(h["n_routed_experts"]),
            f"{arch}.expert_used_count": int(h["num_experts_per_tok"]),
            f"{arch}.expert_shared_count": int(h["n_shared_experts"]),
            f"{arch}.expert_feed_forward_length": int(h["moe_intermediate_size"]),
            f"{arch}.expert_weights_scale": float(h.get("routed_scaling_factor", 1.0)),
            f"{arch}.expert_weights_norm": bool(h.get("norm_topk_prob", False)),
            f"{arch}.expert_gating_func": 1,  # softmax
        })
        if h.get("q_lora_rank"):
            m[f"{arch}.attention.q_lora_rank"] = int(h["q_lora_rank"])
        rs = h.get("rope_scaling") or {}
        if rs.get("mscale_all_dim"):
            m[f"{arch}.rope.scaling.yarn_log_multiplier"] = 0.1 * float(rs["mscale_all_dim"])
    if arch == "lfm2":
        attn = set(h["full_attn_idxs"])
        m[f"{arch}.attention.head_count_kv"] = [
            h.n_head_kv if i in attn else 0 for i in range(h.n_layer)]
        m[f"{arch}.shortconv.l_cache"] = int(h["conv_L_cache"])


_BUILDERS: dict[str, Callable[[_Hp], Shapes]] = {
    "llama": _t_llama, "qwen2": _t_qwen2, "qwen3": _t_qwen3, "qwen3moe": _t_qwen3,
    "gemma2": _t_gemma, "gemma3": _t_gemma, "deepseek2": _t_deepseek2,
    "gpt-oss": _t_gpt_oss, "lfm2": _t_lfm2, "mamba2": _t_mamba2,
}
ARCHS: tuple[str, ...] = tuple(_BUILDERS)


# --- tensor types: convert_hf_to_gguf (source) then llama-quantize's mix ------------------

# conversion/base.py: always-F32 tensors besides 1-D ones, norms and non-".weight" tensors
_F32_ALWAYS = ("ffn_gate_inp.weight", "ssm_conv1d", "shortconv.conv.weight")


def _source_type(name: str, shape: tuple[int, ...], float_type: str) -> int:
    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") \
            or any(p in name for p in _F32_ALWAYS):
        return _T["f32"]
    return _T[float_type]


def _allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    # llama-quant.cpp tensor_allows_quantization, for the names these archs have
    return (len(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and "ffn_gate_inp.weight" not in name and "ssm_conv1d" not in name
            and "shortconv.conv.weight" not in name)


def _category(name: str) -> str:
    # llama-quant.cpp tensor_get_category (order matters: first match wins)
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"),
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                     ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(ncols: int, type_name: str) -> str:
    # llama-quant.cpp tensor_type_fallback: a row must hold whole blocks
    blk = ggml_types.by_name(type_name).block_size
    if ncols % blk == 0:
        return type_name
    new = {"q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0", "q2_k": "q4_0",
           "q3_k": "q4_0"}.get(type_name, type_name)
    if ncols % ggml_types.by_name(new).block_size != 0:
        new = "f16"
    return new


def _quant_types(shapes: Shapes, quant: str, arch: str, n_layer: int, n_expert: int,
                 is_70b: bool) -> list[int]:
    """llama-quant.cpp llama_tensor_get_type for the mixes in FILE_TYPES (no imatrix)."""
    float_type = "bf16" if quant == "BF16" else "f16"
    src = [_source_type(n, s, float_type) for n, s in shapes]
    if quant in ("F16", "BF16", "F32"):
        return src if quant != "F32" else [_T["f32"]] * len(shapes)
    default = _DEFAULT_TYPE[quant]
    cats = [_category(n) for n, _ in shapes]
    tied = "output" not in cats
    n_wv = sum(c == "attn_v" for c in cats)
    i_wv = i_down = 0
    result: list[int] = []
    for (name, shape), cat, st in zip(shapes, cats, src, strict=True):
        if not _allows_quantization(name, shape):
            result.append(st)
            continue
        new = default
        if cat == "output" or (tied and cat == "token_embd"):
            if quant == "MXFP4_MOE" or shape[0] % ggml_types.by_name(new).block_size:
                new = "q8_0"
            elif new != "q8_0":
                new = "q6_k"
        elif quant == "MXFP4_MOE":
            new = "mxfp4" if len(shape) > 2 and shape[2] > 1 else "q8_0"
        elif cat == "attn_v":
            if quant in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_wv, n_wv):
                new = "q6_k"
            elif quant == "Q4_K_S" and i_wv < 4:
                new = "q5_k"
            if is_70b and new in ("q3_k", "q4_k"):
                new = "q5_k"
            if n_expert == 8:
                new = "q8_0"
            i_wv += 1
        elif cat == "attn_k":
            if n_expert == 8:
                new = "q8_0"
        elif cat == "ffn_down":
            if n_expert > 1:
                m = re.match(r"blk\.(\d+)\.", name)
                i_layer = int(m.group(1)) if m else 0
            else:
                i_layer = i_down
            if quant in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_layer, n_layer):
                new = "q6_k"
            elif quant == "Q4_K_S" and i_layer < n_layer // 8:
                new = "q5_k"
            i_down += 1
        elif cat == "attn_output" and n_expert == 8 and quant in ("Q4_K_S", "Q4_K_M"):
            new = "q5_k"
        result.append(_T[_fallback(shape[0], new)])
    return result


# --- public entry points -------------------------------------------------------------------

def build_header(spec: ModelSpec, *, vocab: bool = True) -> Header:
    """The GGUF header a file of ``spec`` would have. ``vocab=False`` leaves the generated
    token list out of the metadata (for callers that only need shapes and sizes)."""
    if spec.arch not in _BUILDERS:
        raise ValueError(f"no tensor layout for architecture {spec.arch!r}")
    if spec.quant not in FILE_TYPES:
        raise ValueError(f"unknown quantization mix {spec.quant!r}; known: {QUANT_NAMES}")
    h = _Hp(spec.hp, spec.arch)
    shapes = _BUILDERS[spec.arch](h)
    n_expert = int(spec.hp.get("num_experts") or spec.hp.get("num_local_experts")
                   or spec.hp.get("n_routed_experts") or 0)
    is_70b = spec.arch == "llama" and h.n_layer == 80 and h.n_head != h.n_head_kv
    types = _quant_types(shapes, spec.quant, spec.arch, h.n_layer, n_expert, is_70b)
    tensors = [TensorDef(n, s, t) for (n, s), t in zip(shapes, types, strict=True)]

    metadata: dict[str, Any] = {
        "general.architecture": spec.arch,
        "general.name": spec.name,
        "general.file_type": FILE_TYPES[spec.quant],
    }
    if spec.quant not in ("F32", "F16", "BF16"):
        metadata["general.quantization_version"] = 2
    metadata.update(_m_common(h, spec.arch))
    _m_arch(h, spec.arch, metadata)
    if vocab:
        metadata.update(synthetic_vocab(h.n_vocab))
    return Header(metadata, tensors)


def spec_from_dict(d: Mapping[str, Any], quant: str | None = None) -> ModelSpec:
    """A ModelSpec from its catalog JSON form ({"name", "arch", "quant" or "quants", "hp"})."""
    q = quant or d.get("quant") or d["quants"][0]
    return ModelSpec(name=str(d["name"]), arch=str(d["arch"]), quant=str(q), hp=dict(d["hp"]))
