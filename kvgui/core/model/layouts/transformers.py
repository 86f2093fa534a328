"""Tensor tables and metadata of the attention-only architectures (dense and mixture of experts).

Each ``_t_<arch>`` follows src/models/<arch>.cpp load_arch_tensors of the bundled llama.cpp
(names, shapes, which optional tensors a converted checkpoint has); each ``_m_<arch>`` adds
the keys that architecture's load_arch_hparams reads beyond the common ones, as
conversion/<family>.py writes them.
"""

from __future__ import annotations

from typing import Any

from kvgui.core.model.layouts.base import (
    Hp,
    Layout,
    Shapes,
    attn,
    attn_fused,
    experts_metadata,
    ffn,
    io,
    moe,
    nextn,
    no_metadata,
    norm,
    partial_rope_dim,
    shexp,
)

# --- llama-like --------------------------------------------------------------------------


def _t_llama(h: Hp) -> Shapes:
    # src/models/llama.cpp; rope_freqs is the llama3 rope-scaling table convert adds
    out: Shapes = []
    io(h, out)
    if h.get("rope_freqs"):
        out.append(("rope_freqs.weight", (h.head_dim // 2,)))
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.q_dim, h.kv_dim)
        norm(out, i, "ffn_norm", h.n_embd)
        ffn(out, i, h.n_embd, h.n_ff)
    return out


def _m_llama(h: Hp, m: dict[str, Any]) -> None:
    m[f"{h.arch}.rope.dimension_count"] = h.head_dim  # conversion/llama.py


def _t_qwen2(h: Hp) -> Shapes:
    # src/models/qwen2.cpp: q/o are n_embd wide; q/k/v biases
    out: Shapes = []
    io(h, out)
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.n_embd, h.kv_dim, bias=True)
        norm(out, i, "ffn_norm", h.n_embd)
        ffn(out, i, h.n_embd, h.n_ff)
    return out


def _t_qwen3(h: Hp) -> Shapes:
    out: Shapes = []
    io(h, out)
    is_moe = h.arch == "qwen3moe"
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.q_dim, h.kv_dim, qk_norm=h.head_dim)
        norm(out, i, "ffn_norm", h.n_embd)
        if is_moe:
            moe(out, i, h.n_embd, int(h["moe_intermediate_size"]), int(h["num_experts"]))
        else:
            ffn(out, i, h.n_embd, h.n_ff)
    return out


def _m_qwen3moe(h: Hp, m: dict[str, Any]) -> None:
    experts_metadata(h, h.arch, m, n_expert_key="num_experts")


def _t_mistral3(h: Hp) -> Shapes:
    # src/models/mistral3.cpp: the llama layout (Mistral-Small-3.x text model)
    out: Shapes = []
    io(h, out)
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.q_dim, h.kv_dim)
        norm(out, i, "ffn_norm", h.n_embd)
        ffn(out, i, h.n_embd, h.n_ff)
    return out


def _t_smollm3(h: Hp) -> Shapes:
    # src/models/smollm3.cpp: llama layout, NoPE every 4th layer (a graph matter only)
    return _t_mistral3(h)


def _t_apertus(h: Hp) -> Shapes:
    # src/models/apertus.cpp: xIELU MLP without a gate, q/k norms
    out: Shapes = []
    io(h, out, output=True)
    if h.get("rope_freqs"):
        out.append(("rope_freqs.weight", (h.head_dim // 2,)))
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.q_dim, h.kv_dim)
        norm(out, i, "ffn_norm", h.n_embd)
        ffn(out, i, h.n_embd, h.n_ff, gate=False)
        out += [(f"blk.{i}.attn_q_norm.weight", (h.head_dim,)),
                (f"blk.{i}.attn_k_norm.weight", (h.head_dim,))]
    return out


def _m_apertus(h: Hp, m: dict[str, Any]) -> None:
    # conversion/llama.py ApertusModel: one xIELU parameter per layer (keys without arch prefix)
    m[f"{h.arch}.rope.dimension_count"] = h.head_dim
    n = h.n_layer
    m["xielu.alpha_n"] = [0.8] * n
    m["xielu.alpha_p"] = [0.8] * n
    m["xielu.beta"] = [0.5] * n
    m["xielu.eps"] = [-1e-6] * n


def _t_seed_oss(h: Hp) -> Shapes:
    # src/models/seed-oss.cpp: q/k/v biases (attention_bias), post-attention norm, no ffn_norm
    out: Shapes = []
    io(h, out)
    for i in range(h.n_layer):
        attn(out, i, h.n_embd, h.q_dim, h.kv_dim, bias=bool(h.get("attention_bias")))
        norm(out, i, "attn_norm", h.n_embd)
        norm(out, i, "post_attention_norm", h.n_embd)
        ffn(out, i, h.n_embd, h.n_ff)
    return out


def _t_internlm2(h: Hp) -> Shapes:
    # src/models/internlm2.cpp; conversion/internlm.py splits wqkv into q, k, v
    out: Shapes = []
    io(h, out, output=True)
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.n_embd, h.kv_dim)
        norm(out, i, "ffn_norm", h.n_embd)
        ffn(out, i, h.n_embd, h.n_ff)
    return out


def _t_minicpm(h: Hp) -> Shapes:
    # src/models/minicpm.cpp: the llama layout, tied head
    return _t_mistral3(h)


def _m_minicpm(h: Hp, m: dict[str, Any]) -> None:
    # conversion/minicpm.py: muP scales
    a = h.arch
    m[f"{a}.embedding_scale"] = float(h.get("scale_emb", 12.0))
    m[f"{a}.residual_scale"] = float(h.get("scale_depth", 1.4)) / h.n_layer ** 0.5
    m[f"{a}.logit_scale"] = 256.0 / h.n_embd
    m[f"{a}.rope.dimension_count"] = h.head_dim


def _t_granite(h: Hp) -> Shapes:
    # src/models/granite.cpp (llama layout); granitemoe: experts without a gate-less variant
    out: Shapes = []
    io(h, out)
    n_expert = int(h.get("num_local_experts") or 0)
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.q_dim, h.kv_dim)
        norm(out, i, "ffn_norm", h.n_embd)
        if n_expert:
            moe(out, i, h.n_embd, h.n_ff, n_expert)
            if h.get("shared_intermediate_size"):
                shexp(out, i, h.n_embd, int(h["shared_intermediate_size"]))
        else:
            ffn(out, i, h.n_embd, h.n_ff)
    return out


def _m_granite(h: Hp, m: dict[str, Any]) -> None:
    # conversion/granite.py: muP multipliers; attention multiplier, embedding/residual scales
    a = h.arch
    m[f"{a}.rope.dimension_count"] = h.head_dim
    m[f"{a}.attention.scale"] = float(h.get("attention_multiplier", 1.0 / h.head_dim))
    m[f"{a}.embedding_scale"] = float(h.get("embedding_multiplier", 1.0))
    m[f"{a}.residual_scale"] = float(h.get("residual_multiplier", 1.0))
    m[f"{a}.logit_scale"] = float(h.get("logits_scaling", 1.0))
    if h.get("num_local_experts"):
        m[f"{a}.expert_count"] = int(h["num_local_experts"])
        m[f"{a}.expert_used_count"] = int(h["num_experts_per_tok"])
        if h.get("shared_intermediate_size"):
            m[f"{a}.expert_shared_feed_forward_length"] = int(h["shared_intermediate_size"])


def _t_starcoder2(h: Hp) -> Shapes:
    # src/models/starcoder2.cpp: LayerNorm with biases, biased projections, no gate
    out: Shapes = []
    io(h, out, norm_bias=True)
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd, bias=True)
        attn(out, i, h.n_embd, h.n_embd, h.kv_dim, bias=True, out_bias=True)
        norm(out, i, "ffn_norm", h.n_embd, bias=True)
        ffn(out, i, h.n_embd, h.n_ff, gate=False, bias=True)
    return out


def _t_phi3(h: Hp) -> Shapes:
    # src/models/phi3.cpp: fused attn_qkv and ffn_up (gate+up, 2 n_ff); LongRoPE factor tables
    out: Shapes = []
    io(h, out)
    rope_dim = _phi3_rope_dim(h)
    if (h.get("rope_scaling") or {}).get("long_factor") or h.get("longrope"):
        out += [("rope_factors_long.weight", (rope_dim // 2,)),
                ("rope_factors_short.weight", (rope_dim // 2,))]
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        attn_fused(out, i, h.n_embd, h.n_embd, h.kv_dim, n_o=h.n_embd)
        norm(out, i, "ffn_norm", h.n_embd)
        out += [(f"blk.{i}.ffn_down.weight", (h.n_ff, h.n_embd)),
                (f"blk.{i}.ffn_up.weight", (h.n_embd, 2 * h.n_ff))]
    return out


def _phi3_rope_dim(h: Hp) -> int:
    return int(float(h.get("partial_rotary_factor", 1.0)) * h.n_embd) // h.n_head


def _m_phi3(h: Hp, m: dict[str, Any]) -> None:
    # conversion/phi.py Phi3MiniModel: rope dims of the partial rotary factor; sliding_window 0
    # marks Phi-4 (llama.cpp disables phi3 SWA either way)
    a = h.arch
    m[f"{a}.rope.dimension_count"] = _phi3_rope_dim(h)
    m[f"{a}.rope.scaling.original_context_length"] = int(
        h.get("original_max_position_embeddings") or h["max_position_embeddings"])
    m[f"{a}.attention.sliding_window"] = int(h.get("sliding_window") or 0)
    m.pop(f"{a}.rope.scaling.type", None)  # convert writes no scaling type for LongRoPE


def _t_command_r(h: Hp) -> Shapes:
    # src/models/command-r.cpp: output tied to token_embd, no ffn_norm (parallel block),
    # q/k norms only for >= 64 layers (command-r only: cohere2.cpp loads none, Command A)
    out: Shapes = []
    io(h, out, output=False)
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        if h.n_layer >= 64 and h.arch == "command-r":
            out += [(f"blk.{i}.attn_q_norm.weight", (h.head_dim, h.n_head)),
                    (f"blk.{i}.attn_k_norm.weight", (h.head_dim, h.n_head_kv))]
        attn(out, i, h.n_embd, h.n_embd, h.kv_dim, n_o=h.n_embd)
        ffn(out, i, h.n_embd, h.n_ff)
    return out


def _m_command_r(h: Hp, m: dict[str, Any]) -> None:
    # conversion/command_r.py: logit scale; LayerNorm epsilon
    a = h.arch
    m[f"{a}.logit_scale"] = float(h.get("logit_scale", 1.0))
    if h.arch == "cohere2":
        m[f"{a}.attention.sliding_window"] = int(h["sliding_window"])
        m[f"{a}.rope.dimension_count"] = h.head_dim


def _t_exaone4(h: Hp) -> Shapes:
    # src/models/exaone4.cpp: no pre-norms, post-attention / post-ffw norms, q/k norms
    out: Shapes = []
    io(h, out)
    if h.get("rope_freqs"):
        out.append(("rope_freqs.weight", (h.head_dim // 2,)))
    for i in range(h.n_layer):
        attn(out, i, h.n_embd, h.q_dim, h.kv_dim, n_o=h.n_embd)
        norm(out, i, "post_attention_norm", h.n_embd)
        out += [(f"blk.{i}.attn_q_norm.weight", (h.head_dim,)),
                (f"blk.{i}.attn_k_norm.weight", (h.head_dim,))]
        ffn(out, i, h.n_embd, h.n_ff)
        norm(out, i, "post_ffw_norm", h.n_embd)
    return out


def _m_exaone4(h: Hp, m: dict[str, Any]) -> None:
    # conversion/exaone.py Exaone4Model: window and the LLLG pattern as a bool array
    if h.get("sliding_window") is not None:
        m[f"{h.arch}.attention.sliding_window"] = int(h["sliding_window"])
        pattern = h.get("sliding_window_pattern")
        if isinstance(pattern, str):
            m[f"{h.arch}.attention.sliding_window_pattern"] = [
                pattern[i % len(pattern)] == "L" for i in range(h.n_layer)]


def _t_olmo2(h: Hp) -> Shapes:
    # src/models/olmo2.cpp: post-norms only; q_norm n_embd wide, k_norm n_head_kv * head
    out: Shapes = []
    io(h, out, output=True)
    n_head_dim = h.n_embd // h.n_head
    for i in range(h.n_layer):
        attn(out, i, h.n_embd, h.n_embd, h.kv_dim, n_o=h.n_embd)
        out += [(f"blk.{i}.attn_q_norm.weight", (h.n_embd,)),
                (f"blk.{i}.attn_k_norm.weight", (h.n_head_kv * n_head_dim,))]
        norm(out, i, "post_attention_norm", h.n_embd)
        ffn(out, i, h.n_embd, h.n_ff)
        norm(out, i, "post_ffw_norm", h.n_embd)
    return out


def _m_olmo2(h: Hp, m: dict[str, Any]) -> None:
    # conversion/olmo.py: Olmo 3 writes its window and the layer_types pattern
    if h.get("sliding_window"):
        m[f"{h.arch}.attention.sliding_window"] = int(h["sliding_window"])
        types = h.get("layer_types")
        if types:
            m[f"{h.arch}.attention.sliding_window_pattern"] = [
                t == "sliding_attention" for t in types]


def _t_glm4(h: Hp) -> Shapes:
    # src/models/glm4.cpp: q/k/v biases, fused ffn_up (gate+up), post norms
    out: Shapes = []
    io(h, out)
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.q_dim, h.kv_dim, bias=bool(h.get("attention_bias", True)))
        norm(out, i, "post_attention_norm", h.n_embd)
        norm(out, i, "ffn_norm", h.n_embd)
        out += [(f"blk.{i}.ffn_down.weight", (h.n_ff, h.n_embd)),
                (f"blk.{i}.ffn_up.weight", (h.n_embd, 2 * h.n_ff))]
        norm(out, i, "post_ffw_norm", h.n_embd)
    return out


def _m_glm4(h: Hp, m: dict[str, Any]) -> None:
    # conversion/glm.py: rope over half the head (partial_rotary_factor 0.5)
    m[f"{h.arch}.rope.dimension_count"] = int(h.head_dim * float(
        h.get("partial_rotary_factor", 0.5)))


def _t_glm4moe(h: Hp) -> Shapes:
    # src/models/glm4-moe.cpp: q/k/v biases, dense lead layers, sigmoid router with
    # exp_probs_b, one shared expert; the NextN block after the trunk
    out: Shapes = []
    io(h, out)
    n_exp, n_ff_exp = int(h["n_routed_experts"]), int(h["moe_intermediate_size"])
    n_shared = int(h.get("n_shared_experts") or 0)
    for i in range(h.n_layer_all):
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.q_dim, h.kv_dim, bias=bool(h.get("attention_bias", True)),
             qk_norm=h.head_dim if h.get("use_qk_norm") else 0)
        norm(out, i, "post_attention_norm", h.n_embd)
        if i >= int(h["first_k_dense_replace"]):
            moe(out, i, h.n_embd, n_ff_exp, n_exp, probs_bias=True)
            if n_shared:
                shexp(out, i, h.n_embd, n_ff_exp * n_shared)
        else:
            ffn(out, i, h.n_embd, h.n_ff)
        if i >= h.n_layer:
            nextn(out, i, h.n_embd)
    return out


def _m_glm4moe(h: Hp, m: dict[str, Any]) -> None:
    a = h.arch
    _m_glm4(h, m)
    experts_metadata(h, a, m, n_expert_key="n_routed_experts", shared_key="n_shared_experts")
    m[f"{a}.leading_dense_block_count"] = int(h["first_k_dense_replace"])
    m[f"{a}.expert_weights_scale"] = float(h.get("routed_scaling_factor", 1.0))
    m[f"{a}.expert_weights_norm"] = bool(h.get("norm_topk_prob", True))
    m[f"{a}.expert_gating_func"] = 2  # sigmoid


def _t_ernie4_5(h: Hp) -> Shapes:
    # src/models/ernie4-5.cpp (the MoE variant shares it): dense lead layers, then experts
    # with an optional exp_probs_b and shared experts
    out: Shapes = []
    io(h, out)
    is_moe = h.arch == "ernie4_5-moe"
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.q_dim, h.kv_dim)
        norm(out, i, "ffn_norm", h.n_embd)
        if is_moe and i >= int(h.get("moe_layer_start_index", 0)):
            n_exp, n_ff_exp = int(h["moe_num_experts"]), int(h["moe_intermediate_size"])
            moe(out, i, h.n_embd, n_ff_exp, n_exp, probs_bias=True)
            if h.get("moe_num_shared_experts"):
                shexp(out, i, h.n_embd, n_ff_exp * int(h["moe_num_shared_experts"]))
        else:
            ffn(out, i, h.n_embd, h.n_ff)
    return out


def _m_ernie4_5(h: Hp, m: dict[str, Any]) -> None:
    # conversion/ernie.py
    a = h.arch
    if a != "ernie4_5-moe":
        return
    m[f"{a}.expert_count"] = int(h["moe_num_experts"])
    m[f"{a}.expert_used_count"] = int(h["moe_k"])
    m[f"{a}.interleave_moe_layer_step"] = int(h.get("moe_layer_interval", 1))
    m[f"{a}.leading_dense_block_count"] = int(h.get("moe_layer_start_index", 0))
    m[f"{a}.expert_feed_forward_length"] = int(h["moe_intermediate_size"])
    if h.get("moe_num_shared_experts"):
        m[f"{a}.expert_shared_feed_forward_length"] = \
            int(h["moe_intermediate_size"]) * int(h["moe_num_shared_experts"])


def _t_hunyuan(h: Hp) -> Shapes:
    # src/models/hunyuan-moe.cpp / hunyuan-vl.cpp (hunyuan-dense): q/k norms after the rope;
    # the MoE's experts are feed_forward_length wide, its shared expert
    # expert_shared_feed_forward_length (both intermediate_size, conversion/hunyuan.py)
    out: Shapes = []
    io(h, out)
    is_moe = h.arch == "hunyuan-moe"
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.q_dim, h.kv_dim)
        out += [(f"blk.{i}.attn_k_norm.weight", (h.head_dim,)),
                (f"blk.{i}.attn_q_norm.weight", (h.head_dim,))]
        norm(out, i, "ffn_norm", h.n_embd)
        if is_moe:
            moe(out, i, h.n_embd, h.n_ff, int(h["num_experts"]))
            shexp(out, i, h.n_embd, h.n_ff)
        else:
            ffn(out, i, h.n_embd, h.n_ff)
    return out


def _m_hunyuan(h: Hp, m: dict[str, Any]) -> None:
    # conversion/hunyuan.py: NTK-alpha rope folded into freq_base, 256k context
    a = h.arch
    m[f"{a}.rope.dimension_count"] = h.head_dim
    alpha = float(h.get("rope_scaling_alpha") or 0)
    if alpha:
        base = float(h.get("rope_theta", 10000.0))
        m[f"{a}.rope.freq_base"] = base * alpha ** (h.head_dim / (h.head_dim - 2))
    if a == "hunyuan-moe":
        m[f"{a}.expert_count"] = int(h["num_experts"])
        m[f"{a}.expert_used_count"] = int(h["moe_topk"])
        m[f"{a}.expert_feed_forward_length"] = int(h["moe_intermediate_size"])
        m[f"{a}.expert_shared_feed_forward_length"] = h.n_ff
        m[f"{a}.expert_shared_count"] = int(h.get("num_shared_expert") or 1)


def _t_dots1(h: Hp) -> Shapes:
    # src/models/dots1.cpp: q/k norms, dense lead, sigmoid router (exp_probs_b), shared experts
    out: Shapes = []
    io(h, out, output=True)
    n_exp, n_ff_exp = int(h["n_routed_experts"]), int(h["moe_intermediate_size"])
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.q_dim, h.q_dim)
        out += [(f"blk.{i}.attn_k_norm.weight", (h.head_dim,)),
                (f"blk.{i}.attn_q_norm.weight", (h.head_dim,))]
        norm(out, i, "ffn_norm", h.n_embd)
        if i < int(h["first_k_dense_replace"]):
            ffn(out, i, h.n_embd, h.n_ff)
        else:
            moe(out, i, h.n_embd, n_ff_exp, n_exp, probs_bias=True)
            shexp(out, i, h.n_embd, n_ff_exp * int(h["n_shared_experts"]))
    return out


def _m_dots1(h: Hp, m: dict[str, Any]) -> None:
    a = h.arch
    experts_metadata(h, a, m, n_expert_key="n_routed_experts", shared_key="n_shared_experts")
    m[f"{a}.leading_dense_block_count"] = int(h["first_k_dense_replace"])
    m[f"{a}.expert_weights_scale"] = float(h.get("routed_scaling_factor", 1.0))
    m[f"{a}.expert_weights_norm"] = bool(h.get("norm_topk_prob", False))
    m[f"{a}.expert_gating_func"] = 2  # sigmoid (scoring_func)


def _t_bailingmoe2(h: Hp) -> Shapes:
    # src/models/bailingmoe2.cpp: fused attn_qkv, q/k norms, dense lead, shared experts,
    # NextN layers (skipped at load) with a layer_output_norm
    out: Shapes = []
    io(h, out, output=True)
    n_exp, n_ff_exp = int(h["num_experts"]), int(h["moe_intermediate_size"])
    n_ff_sh = int(h.get("moe_shared_expert_intermediate_size")
                  or n_ff_exp * int(h["num_shared_experts"]))
    for i in range(h.n_layer_all):
        norm(out, i, "attn_norm", h.n_embd)
        attn_fused(out, i, h.n_embd, h.n_embd, h.kv_dim, n_o=h.q_dim)
        out += [(f"blk.{i}.attn_q_norm.weight", (h.head_dim,)),
                (f"blk.{i}.attn_k_norm.weight", (h.head_dim,))]
        norm(out, i, "ffn_norm", h.n_embd)
        if i >= int(h["first_k_dense_replace"]):
            moe(out, i, h.n_embd, n_ff_exp, n_exp, probs_bias=True)
            shexp(out, i, h.n_embd, n_ff_sh)
        else:
            ffn(out, i, h.n_embd, h.n_ff)
        if i >= h.n_layer:
            nextn(out, i, h.n_embd)
            norm(out, i, "layer_output_norm", h.n_embd)
    return out


def _m_bailingmoe2(h: Hp, m: dict[str, Any]) -> None:
    # conversion/bailingmoe.py BailingMoeV2Model
    a = h.arch
    m[f"{a}.rope.dimension_count"] = partial_rope_dim(h)
    m[f"{a}.leading_dense_block_count"] = int(h["first_k_dense_replace"])
    experts_metadata(h, a, m, n_expert_key="num_experts", shared_key="num_shared_experts")
    m[f"{a}.expert_shared_feed_forward_length"] = int(
        h.get("moe_shared_expert_intermediate_size")
        or int(h["moe_intermediate_size"]) * int(h["num_shared_experts"]))
    m[f"{a}.expert_weights_scale"] = float(h.get("routed_scaling_factor", 1.0))
    m[f"{a}.expert_weights_norm"] = bool(h.get("norm_topk_prob", True))
    m[f"{a}.expert_gating_func"] = 2  # sigmoid
    if h.get("n_group"):
        m[f"{a}.expert_group_count"] = int(h["n_group"])
        m[f"{a}.expert_group_used_count"] = int(h["topk_group"])


def _t_llama4(h: Hp) -> Shapes:
    # src/models/llama4.cpp: MoE on every n-th layer (interleave_moe_layer_step) with one
    # shared expert of the expert width; dense layers use intermediate_size_mlp
    out: Shapes = []
    io(h, out)
    if h.get("rope_freqs"):
        out.append(("rope_freqs.weight", (h.head_dim // 2,)))
    step = int(h["interleave_moe_layer_step"])
    n_exp, n_ff_exp = int(h["num_local_experts"]), int(h["intermediate_size"])
    for i in range(h.n_layer):
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.q_dim, h.kv_dim)
        norm(out, i, "ffn_norm", h.n_embd)
        if step > 0 and (i + 1) % step == 0:
            moe(out, i, h.n_embd, n_ff_exp, n_exp)
            shexp(out, i, h.n_embd, n_ff_exp)
        else:
            ffn(out, i, h.n_embd, int(h["intermediate_size_mlp"]))
    return out


def _m_llama4(h: Hp, m: dict[str, Any]) -> None:
    # conversion/llama.py Llama4Model: intermediate_size_mlp is the dense FFN
    a = h.arch
    m[f"{a}.rope.dimension_count"] = h.head_dim
    m[f"{a}.feed_forward_length"] = int(h["intermediate_size_mlp"])
    m[f"{a}.interleave_moe_layer_step"] = int(h["interleave_moe_layer_step"])
    experts_metadata(h, a, m, n_expert_key="num_local_experts", ff_key="intermediate_size")


# --- gemma --------------------------------------------------------------------------------


def _t_gemma(h: Hp) -> Shapes:
    # src/models/gemma2.cpp / gemma3.cpp: output is always token_embd; post-norms; gemma3 q/k
    out: Shapes = []
    io(h, out, output=False)
    qk = h.head_dim if h.arch == "gemma3" else 0
    for i in range(h.n_layer):
        b = f"blk.{i}."
        norm(out, i, "attn_norm", h.n_embd)
        attn(out, i, h.n_embd, h.q_dim, h.kv_dim)
        norm(out, i, "post_attention_norm", h.n_embd)
        if qk:
            out += [(b + "attn_k_norm.weight", (qk,)), (b + "attn_q_norm.weight", (qk,))]
        norm(out, i, "ffn_norm", h.n_embd)
        ffn(out, i, h.n_embd, h.n_ff)
        norm(out, i, "post_ffw_norm", h.n_embd)
    return out


def _m_gemma(h: Hp, m: dict[str, Any]) -> None:
    a = h.arch
    if h.get("sliding_window"):
        m[f"{a}.attention.sliding_window"] = int(h["sliding_window"])
    if a == "gemma2":
        m[f"{a}.attn_logit_softcapping"] = float(h["attn_logit_softcapping"])
        m[f"{a}.final_logit_softcapping"] = float(h["final_logit_softcapping"])
    if a in ("gemma3", "gemma3n") and h.get("rope_local_base_freq"):
        m[f"{a}.rope.freq_base_swa"] = float(h["rope_local_base_freq"])


def _t_gemma3n(h: Hp) -> Shapes:
    # src/models/gemma3n.cpp: AltUp (4 streams) + LAuReL + per-layer embeddings
    e, n_altup, laurel, n_pl = h.n_embd, 4, 64, int(h["hidden_size_per_layer_input"])
    out: Shapes = [("token_embd.weight", (e, h.n_vocab)),
                   ("altup_proj.weight", (e, e, n_altup - 1)),
                   ("altup_unembd_proj.weight", (e, e, n_altup - 1)),
                   ("per_layer_token_embd.weight", (n_pl * h.n_layer, h.n_vocab)),
                   ("per_layer_model_proj.weight", (e, n_pl * h.n_layer)),
                   ("per_layer_proj_norm.weight", (n_pl,)),
                   ("output_norm.weight", (e,))]
    for i in range(h.n_layer):
        b = f"blk.{i}."
        norm(out, i, "attn_norm", e)
        attn(out, i, e, h.q_dim, h.kv_dim)
        out += [(b + "attn_q_norm.weight", (h.head_dim,)),
                (b + "attn_k_norm.weight", (h.head_dim,))]
        norm(out, i, "post_attention_norm", e)
        norm(out, i, "ffn_norm", e)
        ffn(out, i, e, h.n_ff)
        norm(out, i, "post_ffw_norm", e)
        out += [(b + "inp_gate.weight", (e, n_pl)), (b + "proj.weight", (n_pl, e)),
                (b + "post_norm.weight", (e,)),
                (b + "altup_correct_coef.weight", (n_altup, n_altup)),
                (b + "altup_correct_scale.weight", (e,)),
                (b + "altup_predict_coef.weight", (n_altup, n_altup * n_altup)),
                (b + "altup_router.weight", (e, n_altup)),
                (b + "altup_router_norm.weight", (e,)),
                (b + "laurel_l.weight", (e, laurel)), (b + "laurel_r.weight", (laurel, e)),
                (b + "laurel_post_norm.weight", (e,))]
    return out


def _m_gemma3n(h: Hp, m: dict[str, Any]) -> None:
    # conversion/gemma.py Gemma3NModel
    a = h.arch
    _m_gemma(h, m)
    m[f"{a}.embedding_length_per_layer_input"] = int(h["hidden_size_per_layer_input"])
    m[f"{a}.attention.shared_kv_layers"] = int(h["num_kv_shared_layers"])


def _t_gemma4(h: Hp) -> Shapes:
    # src/models/gemma4.cpp: per-layer heads (full layers: global_head_dim wide, fewer KV heads,
    # K = V without attn_v); every layer a dense FFN plus, with enable_moe_block, experts
    # (fused gate_up, router scale, per-expert down scale); rope_freqs for the full layers
    e = h.n_embd
    types = list(h["layer_types"])
    n_pl = int(h.get("hidden_size_per_layer_input") or 0)
    out: Shapes = []
    out.append(("token_embd.weight", (e, h.n_vocab)))
    if n_pl:
        out += [("per_layer_token_embd.weight", (n_pl * h.n_layer, h.n_vocab)),
                ("per_layer_model_proj.weight", (e, n_pl * h.n_layer)),
                ("per_layer_proj_norm.weight", (n_pl,))]
    out.append(("output_norm.weight", (e,)))
    head_full = int(h["global_head_dim"])
    kv_full = int(h.get("num_global_key_value_heads") or h.n_head_kv)
    k_eq_v = bool(h.get("attention_k_eq_v"))
    rope_freqs = False
    n_exp = int(h.get("num_experts") or 0) if h.get("enable_moe_block") else 0
    for i, kind in enumerate(types):
        b = f"blk.{i}."
        full = kind == "full_attention"
        head = head_full if full else h.head_dim
        n_kv = (kv_full if full else h.n_head_kv) * head
        norm(out, i, "attn_norm", e)
        out += [(b + "attn_q.weight", (e, head * h.n_head)), (b + "attn_k.weight", (e, n_kv))]
        if not (full and k_eq_v):
            out.append((b + "attn_v.weight", (e, n_kv)))
        out.append((b + "attn_output.weight", (head * h.n_head, e)))
        out += [(b + "attn_q_norm.weight", (head,)), (b + "attn_k_norm.weight", (head,))]
        norm(out, i, "post_attention_norm", e)
        out.append((b + "layer_output_scale.weight", (1,)))
        if full and not rope_freqs:
            out.append(("rope_freqs.weight", (head // 2,)))
            rope_freqs = True
        norm(out, i, "ffn_norm", e)
        ffn(out, i, e, h.n_ff)
        norm(out, i, "post_ffw_norm", e)
        if n_exp:
            n_ff_exp = int(h["moe_intermediate_size"])
            out += [(b + "ffn_gate_inp.weight", (e, n_exp)), (b + "ffn_gate_inp.scale", (e,)),
                    (b + "pre_ffw_norm_2.weight", (e,)), (b + "post_ffw_norm_1.weight", (e,)),
                    (b + "post_ffw_norm_2.weight", (e,)),
                    (b + "ffn_gate_up_exps.weight", (e, 2 * n_ff_exp, n_exp)),
                    (b + "ffn_down_exps.weight", (n_ff_exp, e, n_exp)),
                    (b + "ffn_down_exps.scale", (n_exp,))]
        if n_pl:
            out += [(b + "inp_gate.weight", (e, n_pl)), (b + "proj.weight", (n_pl, e)),
                    (b + "post_norm.weight", (e,))]
    return out


def _m_gemma4(h: Hp, m: dict[str, Any]) -> None:
    # conversion/gemma.py Gemma4Model: full-layer head sizes as the main keys, SWA ones apart
    a = h.arch
    types = list(h["layer_types"])
    swa = [t == "sliding_attention" for t in types]
    head_full = int(h["global_head_dim"])
    m[f"{a}.attention.sliding_window"] = int(h["sliding_window"])
    m[f"{a}.attention.sliding_window_pattern"] = swa
    m[f"{a}.attention.shared_kv_layers"] = int(h.get("num_kv_shared_layers") or 0)
    m[f"{a}.embedding_length_per_layer_input"] = int(h.get("hidden_size_per_layer_input") or 0)
    m[f"{a}.attention.key_length"] = head_full
    m[f"{a}.attention.value_length"] = head_full
    m[f"{a}.attention.key_length_swa"] = h.head_dim
    m[f"{a}.attention.value_length_swa"] = h.head_dim
    kv_full = int(h.get("num_global_key_value_heads") or h.n_head_kv)
    m[f"{a}.attention.head_count_kv"] = [h.n_head_kv if s else kv_full for s in swa]
    m[f"{a}.rope.dimension_count"] = head_full
    m[f"{a}.rope.dimension_count_swa"] = h.head_dim
    m[f"{a}.final_logit_softcapping"] = float(h.get("final_logit_softcapping") or 30.0)
    if h.get("rope_local_base_freq"):
        m[f"{a}.rope.freq_base_swa"] = float(h["rope_local_base_freq"])
    if h.get("enable_moe_block"):
        m[f"{a}.expert_count"] = int(h["num_experts"])
        m[f"{a}.expert_used_count"] = int(h["top_k_experts"])
        m[f"{a}.expert_feed_forward_length"] = int(h["moe_intermediate_size"])


# --- deepseek2 (MLA) and gpt-oss ------------------------------------------------------------


def _t_deepseek2(h: Hp) -> Shapes:
    # src/models/deepseek2.cpp, MLA layout (attn_k_b / attn_v_b split, as current convert
    # writes); V3 adds the q LoRA (attn_q_a / attn_q_b) and the sigmoid router's exp_probs_b
    out: Shapes = []
    io(h, out)
    n_head, e = h.n_head, h.n_embd
    q_lora = int(h.get("q_lora_rank") or 0)
    kv_lora = int(h["kv_lora_rank"])
    rope, nope, v_dim = int(h["qk_rope_head_dim"]), int(h["qk_nope_head_dim"]), int(h["v_head_dim"])
    n_exp, n_ff_exp = int(h["n_routed_experts"]), int(h["moe_intermediate_size"])
    n_shared = int(h["n_shared_experts"])
    sigmoid = h.get("scoring_func") == "sigmoid"
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
            ffn(out, i, e, h.n_ff)
        else:
            moe(out, i, e, n_ff_exp, n_exp, probs_bias=sigmoid)
            shexp(out, i, e, n_ff_exp * n_shared)
    return out


def _m_deepseek2(h: Hp, m: dict[str, Any]) -> None:
    # conversion/deepseek.py DeepseekV2Model (+ the generic expert keys of conversion/base.py)
    a = h.arch
    kv_lora, rope = int(h["kv_lora_rank"]), int(h["qk_rope_head_dim"])
    m.update({
        f"{a}.attention.head_count_kv": 1,  # MLA: one latent "head"
        f"{a}.attention.key_length": kv_lora + rope,
        f"{a}.attention.value_length": kv_lora,
        f"{a}.attention.key_length_mla": int(h["qk_nope_head_dim"]) + rope,
        f"{a}.attention.value_length_mla": int(h["v_head_dim"]),
        f"{a}.attention.kv_lora_rank": kv_lora,
        f"{a}.rope.dimension_count": rope,
        f"{a}.leading_dense_block_count": int(h["first_k_dense_replace"]),
        f"{a}.expert_count": int(h["n_routed_experts"]),
        f"{a}.expert_used_count": int(h["num_experts_per_tok"]),
        f"{a}.expert_shared_count": int(h["n_shared_experts"]),
        f"{a}.expert_feed_forward_length": int(h["moe_intermediate_size"]),
        f"{a}.expert_weights_scale": float(h.get("routed_scaling_factor", 1.0)),
        f"{a}.expert_weights_norm": bool(h.get("norm_topk_prob", False)),
        f"{a}.expert_gating_func": 2 if h.get("scoring_func") == "sigmoid" else 1,
    })
    if h.get("q_lora_rank"):
        m[f"{a}.attention.q_lora_rank"] = int(h["q_lora_rank"])
    if h.get("n_group"):
        m[f"{a}.expert_group_count"] = int(h["n_group"])
        m[f"{a}.expert_group_used_count"] = int(h["topk_group"])
    rs = h.get("rope_scaling") or {}
    if rs.get("mscale_all_dim"):
        m[f"{a}.rope.scaling.yarn_log_multiplier"] = 0.1 * float(rs["mscale_all_dim"])


def _t_gpt_oss(h: Hp) -> Shapes:
    # src/models/openai-moe.cpp: biases everywhere, attention sinks, output required
    out: Shapes = []
    io(h, out, output=True)
    e, n_exp, n_ff = h.n_embd, int(h["num_local_experts"]), h.n_ff
    for i in range(h.n_layer):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (e,)), (b + "post_attention_norm.weight", (e,))]
        attn(out, i, e, h.q_dim, h.kv_dim, bias=True, out_bias=True)
        out.append((b + "attn_sinks.weight", (h.n_head,)))
        moe(out, i, e, n_ff, n_exp)
        out += [(b + "ffn_gate_inp.bias", (n_exp,)),
                (b + "ffn_gate_exps.bias", (n_ff, n_exp)),
                (b + "ffn_down_exps.bias", (e, n_exp)),
                (b + "ffn_up_exps.bias", (n_ff, n_exp))]
    return out


def _m_gpt_oss(h: Hp, m: dict[str, Any]) -> None:
    a = h.arch
    m[f"{a}.attention.sliding_window"] = int(h["sliding_window"])
    m[f"{a}.expert_count"] = int(h["num_local_experts"])
    m[f"{a}.expert_used_count"] = int(h["num_experts_per_tok"])
    m[f"{a}.expert_feed_forward_length"] = h.n_ff


LAYOUTS: dict[str, Layout] = {
    "llama": Layout(_t_llama, _m_llama, "models/llama.cpp; conversion/llama.py"),
    "qwen2": Layout(_t_qwen2, no_metadata, "models/qwen2.cpp; conversion/qwen.py"),
    "qwen3": Layout(_t_qwen3, no_metadata, "models/qwen3.cpp; conversion/qwen.py"),
    "qwen3moe": Layout(_t_qwen3, _m_qwen3moe, "models/qwen3moe.cpp; conversion/qwen.py"),
    "mistral3": Layout(_t_mistral3, _m_llama, "models/mistral3.cpp; conversion/mistral3.py"),
    "smollm3": Layout(_t_smollm3, _m_llama, "models/smollm3.cpp; conversion/llama.py"),
    "apertus": Layout(_t_apertus, _m_apertus, "models/apertus.cpp; conversion/llama.py"),
    "seed_oss": Layout(_t_seed_oss, no_metadata, "models/seed-oss.cpp; conversion/olmo.py"),
    "internlm2": Layout(_t_internlm2, no_metadata,
                        "models/internlm2.cpp; conversion/internlm.py"),
    "minicpm": Layout(_t_minicpm, _m_minicpm, "models/minicpm.cpp; conversion/minicpm.py"),
    "granite": Layout(_t_granite, _m_granite, "models/granite.cpp; conversion/granite.py"),
    "granitemoe": Layout(_t_granite, _m_granite, "models/granite-moe.cpp; conversion/granite.py"),
    "starcoder2": Layout(_t_starcoder2, no_metadata,
                         "models/starcoder2.cpp; conversion/starcoder.py"),
    "phi3": Layout(_t_phi3, _m_phi3, "models/phi3.cpp; conversion/phi.py"),
    "command-r": Layout(_t_command_r, _m_command_r,
                        "models/command-r.cpp; conversion/command_r.py"),
    "cohere2": Layout(_t_command_r, _m_command_r, "models/cohere2.cpp; conversion/command_r.py"),
    "exaone4": Layout(_t_exaone4, _m_exaone4, "models/exaone4.cpp; conversion/exaone.py"),
    "olmo2": Layout(_t_olmo2, _m_olmo2, "models/olmo2.cpp; conversion/olmo.py"),
    "glm4": Layout(_t_glm4, _m_glm4, "models/glm4.cpp; conversion/glm.py"),
    "glm4moe": Layout(_t_glm4moe, _m_glm4moe, "models/glm4-moe.cpp; conversion/glm.py"),
    "ernie4_5": Layout(_t_ernie4_5, _m_ernie4_5, "models/ernie4-5.cpp; conversion/ernie.py"),
    "ernie4_5-moe": Layout(_t_ernie4_5, _m_ernie4_5, "models/ernie4-5.cpp; conversion/ernie.py"),
    "hunyuan-moe": Layout(_t_hunyuan, _m_hunyuan,
                          "models/hunyuan-moe.cpp; conversion/hunyuan.py"),
    "hunyuan-dense": Layout(_t_hunyuan, _m_hunyuan,
                            "models/hunyuan-vl.cpp (hunyuan-dense); conversion/hunyuan.py"),
    "dots1": Layout(_t_dots1, _m_dots1, "models/dots1.cpp; conversion/dots1.py"),
    "bailingmoe2": Layout(_t_bailingmoe2, _m_bailingmoe2,
                          "models/bailingmoe2.cpp; conversion/bailingmoe.py"),
    "llama4": Layout(_t_llama4, _m_llama4, "models/llama4.cpp; conversion/llama.py"),
    "gemma2": Layout(_t_gemma, _m_gemma, "models/gemma2.cpp; conversion/gemma.py"),
    "gemma3": Layout(_t_gemma, _m_gemma, "models/gemma3.cpp; conversion/gemma.py"),
    "gemma3n": Layout(_t_gemma3n, _m_gemma3n, "models/gemma3n.cpp; conversion/gemma.py"),
    "gemma4": Layout(_t_gemma4, _m_gemma4, "models/gemma4.cpp; conversion/gemma.py"),
    "deepseek2": Layout(_t_deepseek2, _m_deepseek2,
                        "models/deepseek2.cpp; conversion/deepseek.py"),
    "gpt-oss": Layout(_t_gpt_oss, _m_gpt_oss, "models/openai-moe.cpp; conversion/gpt_oss.py"),
}
