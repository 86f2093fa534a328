"""What every layout shares: HF-config accessors, tensor-row helpers, the generic metadata.

A layout turns a model's HF config.json numbers into the GGUF tensor table llama.cpp's loader
creates for that architecture (src/models/<arch>.cpp load_arch_tensors) and the metadata keys
its load_arch_hparams reads, written the way convert_hf_to_gguf.py writes them
(conversion/<family>.py). Shapes are in GGUF order (ne0, the row length, first).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Shapes = list[tuple[str, tuple[int, ...]]]


class Hp:
    """HF-config accessors shared by the builders."""

    def __init__(self, hp: Mapping[str, Any], arch: str) -> None:
        self.hp = hp
        self.arch = arch
        self.n_embd = int(hp["hidden_size"])
        self.n_layer = int(hp["num_hidden_layers"])
        self.n_head = int(hp.get("num_attention_heads", 0))  # 0: attention-free (mamba2)
        self.n_head_kv = int(hp.get("num_key_value_heads") or self.n_head)
        default_head_dim = self.n_embd // self.n_head if self.n_head else 0
        self.head_dim = int(hp.get("head_dim") or default_head_dim)
        self.n_ff = int(hp.get("intermediate_size", 0) or 0)
        self.n_vocab = int(hp["vocab_size"])
        self.tied = bool(hp.get("tie_word_embeddings", False))
        self.n_nextn = int(hp.get("num_nextn_predict_layers", 0) or 0)

    @property
    def n_layer_all(self) -> int:
        """block_count: the trunk plus the NextN/MTP layers convert appends."""
        return self.n_layer + self.n_nextn

    @property
    def q_dim(self) -> int:
        return self.head_dim * self.n_head

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.n_head_kv

    def __getitem__(self, key: str) -> Any:
        return self.hp[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.hp.get(key, default)


@dataclass(frozen=True)
class Layout:
    """One architecture: its tensor table, its extra metadata, where both were read."""

    tensors: Callable[[Hp], Shapes]
    metadata: Callable[[Hp, dict[str, Any]], None]
    source: str  # the llama.cpp / convert files the layout follows


def no_metadata(h: Hp, m: dict[str, Any]) -> None:
    del h, m


# --- tensor rows -----------------------------------------------------------------------------

def io(h: Hp, out: Shapes, *, output: bool | None = None, norm: str = "output_norm",
       norm_bias: bool = False) -> None:
    """token_embd, the output norm and (unless tied) the output head."""
    out.append(("token_embd.weight", (h.n_embd, h.n_vocab)))
    out.append((f"{norm}.weight", (h.n_embd,)))
    if norm_bias:
        out.append((f"{norm}.bias", (h.n_embd,)))
    has_output = (not h.tied) if output is None else output
    if has_output:
        out.append(("output.weight", (h.n_embd, h.n_vocab)))


def attn(out: Shapes, i: int, n_embd: int, n_q: int, n_kv: int, *, bias: bool = False,
         out_bias: bool = False, qk_norm: int = 0, n_o: int | None = None,
         n_v: int | None = None) -> None:
    """Separate q/k/v projections (create_tensor_qkv without a fused attn_qkv) and attn_output."""
    b = f"blk.{i}."
    v = n_kv if n_v is None else n_v
    out += [(b + "attn_q.weight", (n_embd, n_q)), (b + "attn_k.weight", (n_embd, n_kv)),
            (b + "attn_v.weight", (n_embd, v))]
    if bias:
        out += [(b + "attn_q.bias", (n_q,)), (b + "attn_k.bias", (n_kv,)),
                (b + "attn_v.bias", (v,))]
    out.append((b + "attn_output.weight", (n_q if n_o is None else n_o, n_embd)))
    if out_bias:
        out.append((b + "attn_output.bias", (n_embd,)))
    if qk_norm:
        out += [(b + "attn_q_norm.weight", (qk_norm,)), (b + "attn_k_norm.weight", (qk_norm,))]


def attn_fused(out: Shapes, i: int, n_embd: int, n_q: int, n_kv: int, *, n_o: int | None = None,
               bias: bool = False) -> None:
    """A fused attn_qkv projection (phi3, bailingmoe2) and attn_output."""
    b = f"blk.{i}."
    out.append((b + "attn_qkv.weight", (n_embd, n_q + 2 * n_kv)))
    if bias:
        out.append((b + "attn_qkv.bias", (n_q + 2 * n_kv,)))
    out.append((b + "attn_output.weight", (n_q if n_o is None else n_o, n_embd)))


def ffn(out: Shapes, i: int, n_embd: int, n_ff: int, *, gate: bool = True,
        bias: bool = False) -> None:
    b = f"blk.{i}."
    if gate:
        out.append((b + "ffn_gate.weight", (n_embd, n_ff)))
    out += [(b + "ffn_down.weight", (n_ff, n_embd)), (b + "ffn_up.weight", (n_embd, n_ff))]
    if bias:
        if gate:
            out.append((b + "ffn_gate.bias", (n_ff,)))
        out += [(b + "ffn_down.bias", (n_embd,)), (b + "ffn_up.bias", (n_ff,))]


def moe(out: Shapes, i: int, n_embd: int, n_ff_exp: int, n_expert: int, *,
        probs_bias: bool = False, gate: bool = True) -> None:
    """Router + the stacked experts (ffn_{gate,down,up}_exps)."""
    b = f"blk.{i}."
    out.append((b + "ffn_gate_inp.weight", (n_embd, n_expert)))
    if probs_bias:
        out.append((b + "exp_probs_b.bias", (n_expert,)))
    if gate:
        out.append((b + "ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert)))
    out += [(b + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert)),
            (b + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert))]


def shexp(out: Shapes, i: int, n_embd: int, n_ff: int, *, gate: bool = True,
          gate_inp: bool = False) -> None:
    """The shared expert (ffn_{gate,down,up}_shexp), with its sigmoid gate if it has one."""
    b = f"blk.{i}."
    if gate_inp:
        out.append((b + "ffn_gate_inp_shexp.weight", (n_embd,)))
    if gate:
        out.append((b + "ffn_gate_shexp.weight", (n_embd, n_ff)))
    out += [(b + "ffn_down_shexp.weight", (n_ff, n_embd)),
            (b + "ffn_up_shexp.weight", (n_embd, n_ff))]


def norm(out: Shapes, i: int, name: str, n: int, *, bias: bool = False) -> None:
    out.append((f"blk.{i}.{name}.weight", (n,)))
    if bias:
        out.append((f"blk.{i}.{name}.bias", (n,)))


def nextn(out: Shapes, i: int, n_embd: int, *, shared_head_norm: bool = True) -> None:
    """The NextN/MTP block's own tensors (conversion: eh_proj, enorm, hnorm, shared_head)."""
    b = f"blk.{i}.nextn."
    out += [(b + "eh_proj.weight", (2 * n_embd, n_embd)), (b + "enorm.weight", (n_embd,)),
            (b + "hnorm.weight", (n_embd,))]
    if shared_head_norm:
        out.append((b + "shared_head_norm.weight", (n_embd,)))


# --- metadata --------------------------------------------------------------------------------

def common_metadata(h: Hp, arch: str) -> dict[str, Any]:
    """What TextModel.set_gguf_parameters (conversion/base.py) writes for any transformer."""
    m: dict[str, Any] = {
        f"{arch}.vocab_size": h.n_vocab,
        f"{arch}.context_length": int(h.get("max_position_embeddings") or 0),
        f"{arch}.embedding_length": h.n_embd,
        f"{arch}.block_count": h.n_layer_all,
        f"{arch}.attention.head_count": h.n_head,
        f"{arch}.attention.head_count_kv": h.n_head_kv,
        f"{arch}.rope.freq_base": float(h.get("rope_theta", 10000.0)),
    }
    if h.get("layer_norm_eps") is not None or h.get("layer_norm_epsilon") is not None:
        eps = h.get("layer_norm_eps", h.get("layer_norm_epsilon"))
        m[f"{arch}.attention.layer_norm_epsilon"] = float(eps)
    else:
        m[f"{arch}.attention.layer_norm_rms_epsilon"] = float(h.get("rms_norm_eps", 1e-6))
    if h.n_ff:
        m[f"{arch}.feed_forward_length"] = h.n_ff
    if h.get("head_dim"):
        m[f"{arch}.attention.key_length"] = h.head_dim
        m[f"{arch}.attention.value_length"] = h.head_dim
    if h.n_nextn:
        m[f"{arch}.nextn_predict_layers"] = h.n_nextn
    rs = h.get("rope_scaling") or {}
    kind = rs.get("type") or rs.get("rope_type")
    if kind in ("linear", "yarn") and rs.get("factor"):
        m[f"{arch}.rope.scaling.type"] = kind
        m[f"{arch}.rope.scaling.factor"] = float(rs["factor"])
        if "original_max_position_embeddings" in rs:
            m[f"{arch}.rope.scaling.original_context_length"] = \
                int(rs["original_max_position_embeddings"])
    elif kind in ("longrope", "su"):
        m[f"{arch}.rope.scaling.type"] = "longrope"
    return m


def experts_metadata(h: Hp, arch: str, m: dict[str, Any], *, n_expert_key: str,
                     used_key: str = "num_experts_per_tok", ff_key: str = "moe_intermediate_size",
                     shared_key: str = "", shared_ff_key: str = "") -> None:
    """expert_count / expert_used_count / expert_feed_forward_length (+ shared experts)."""
    m[f"{arch}.expert_count"] = int(h[n_expert_key])
    m[f"{arch}.expert_used_count"] = int(h[used_key])
    if ff_key:
        m[f"{arch}.expert_feed_forward_length"] = int(h[ff_key])
    if shared_key:
        m[f"{arch}.expert_shared_count"] = int(h.get(shared_key) or 0)
    if shared_ff_key:
        m[f"{arch}.expert_shared_feed_forward_length"] = int(h[shared_ff_key])


def partial_rope_dim(h: Hp, factor_key: str = "partial_rotary_factor") -> int:
    """rope.dimension_count for a partial rotary embedding (head_dim * factor)."""
    return int(h.head_dim * float(h.get(factor_key, 1.0)))
