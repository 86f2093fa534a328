"""Tensor tables and metadata of the recurrent (Mamba, RWKV) and hybrid architectures.

As in transformers.py: ``_t_<arch>`` follows src/models/<arch>.cpp load_arch_tensors,
``_m_<arch>`` the keys conversion/<family>.py writes and load_arch_hparams reads. For the
hybrids the per-layer head_count_kv / feed_forward_length arrays are what mark a layer's kind
(layer_rules.py reads them back the way llama.cpp does).
"""

from __future__ import annotations

from typing import Any

from kvgui.core.model.layouts.base import (
    Hp,
    Layout,
    Shapes,
    attn,
    ffn,
    io,
    moe,
    nextn,
    norm,
    shexp,
)

# --- Mamba 1 / 2 ---------------------------------------------------------------------------


def _mamba_d_inner(h: Hp) -> int:
    return int(h.get("expand", 2)) * h.n_embd


def _mamba_heads(h: Hp) -> int:
    return _mamba_d_inner(h) // int(h["head_dim"])


def _m_ssm_only(h: Hp, arch: str, d_inner: int, dt_rank: int, n_group: int) -> dict[str, Any]:
    """conversion/mamba.py: no attention keys, placeholder n_ctx and n_ff."""
    m: dict[str, Any] = {
        f"{arch}.context_length": 2**20,
        f"{arch}.embedding_length": h.n_embd,
        f"{arch}.feed_forward_length": 0,
        f"{arch}.attention.head_count": 0,
        f"{arch}.block_count": h.n_layer,
        f"{arch}.ssm.conv_kernel": int(h["conv_kernel"]),
        f"{arch}.ssm.inner_size": d_inner,
        f"{arch}.ssm.state_size": int(h["state_size"]),
        f"{arch}.ssm.time_step_rank": dt_rank,
        f"{arch}.attention.layer_norm_rms_epsilon": float(h.get("layer_norm_epsilon", 1e-5)),
    }
    if n_group:
        m[f"{arch}.ssm.group_count"] = n_group
    return m


def _t_mamba(h: Hp) -> Shapes:
    # src/models/mamba.cpp; ssm_a / ssm_d have no ".weight" suffix
    out: Shapes = []
    io(h, out)
    e, d_inner, d_state = h.n_embd, _mamba_d_inner(h), int(h["state_size"])
    dt_rank, d_conv = int(h["time_step_rank"]), int(h["conv_kernel"])
    for i in range(h.n_layer):
        b = f"blk.{i}."
        out += [(b + "attn_norm.weight", (e,)),
                (b + "ssm_in.weight", (e, 2 * d_inner)),
                (b + "ssm_conv1d.weight", (d_conv, d_inner)),
                (b + "ssm_conv1d.bias", (d_inner,)),
                (b + "ssm_x.weight", (d_inner, dt_rank + 2 * d_state)),
                (b + "ssm_dt.weight", (dt_rank, d_inner)),
                (b + "ssm_dt.bias", (d_inner,)),
                (b + "ssm_a", (d_state, d_inner)),
                (b + "ssm_d", (d_inner,)),
                (b + "ssm_out.weight", (d_inner, e))]
    return out


def _m_mamba(h: Hp, m: dict[str, Any]) -> None:
    m.clear()
    m.update(_m_ssm_only(h, h.arch, _mamba_d_inner(h), int(h["time_step_rank"]), 0))


def _t_mamba2(h: Hp) -> Shapes:
    # src/models/mamba2.cpp; ssm_a / ssm_d have no ".weight" suffix
    out: Shapes = []
    io(h, out)
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


def _m_mamba2(h: Hp, m: dict[str, Any]) -> None:
    m.clear()
    m.update(_m_ssm_only(h, h.arch, _mamba_d_inner(h), _mamba_heads(h), int(h["n_groups"])))


# --- RWKV ----------------------------------------------------------------------------------


def _rwkv_io(h: Hp, out: Shapes) -> None:
    # token_embd, the layer-0 LN0 (token_embd_norm), LayerNorm'd output head (never tied)
    e = h.n_embd
    out += [("token_embd.weight", (e, h.n_vocab)), ("token_embd_norm.weight", (e,)),
            ("token_embd_norm.bias", (e,)), ("output_norm.weight", (e,)),
            ("output_norm.bias", (e,)), ("output.weight", (e, h.n_vocab))]


def _rwkv6_ff(h: Hp) -> int:
    return int(h.n_ff or int(h.n_embd * 3.5) // 32 * 32)  # conversion/rwkv.py


def _t_rwkv6(h: Hp) -> Shapes:
    # src/models/rwkv6.cpp (the convert fuses the five lerps into time_mix_lerp_fused)
    out: Shapes = []
    _rwkv_io(h, out)
    e, head = h.n_embd, int(h["head_size"])
    mix, decay = _rwkv6_extra(h)
    n_ff = _rwkv6_ff(h)
    for i in range(h.n_layer):
        b = f"blk.{i}."
        norm(out, i, "attn_norm", e, bias=True)
        norm(out, i, "attn_norm_2", e, bias=True)
        out += [(b + "time_mix_w1.weight", (e, mix * 5)),
                (b + "time_mix_w2.weight", (mix, e, 5)),
                (b + "time_mix_lerp_x.weight", (e, 1, 1)),
                (b + "time_mix_lerp_fused.weight", (e, 1, 1, 5)),
                (b + "time_mix_first.weight", (head, e // head)),
                (b + "time_mix_decay.weight", (e,)),
                (b + "time_mix_decay_w1.weight", (e, decay)),
                (b + "time_mix_decay_w2.weight", (decay, e)),
                (b + "time_mix_key.weight", (e, e)),
                (b + "time_mix_value.weight", (e, e)),
                (b + "time_mix_receptance.weight", (e, e)),
                (b + "time_mix_gate.weight", (e, e)),
                (b + "time_mix_ln.weight", (e,)), (b + "time_mix_ln.bias", (e,)),
                (b + "time_mix_output.weight", (e, e)),
                (b + "channel_mix_lerp_k.weight", (e, 1, 1)),
                (b + "channel_mix_lerp_r.weight", (e, 1, 1)),
                (b + "channel_mix_key.weight", (e, n_ff)),
                (b + "channel_mix_value.weight", (n_ff, e)),
                (b + "channel_mix_receptance.weight", (e, e))]
    return out


def _rwkv6_extra(h: Hp) -> tuple[int, int]:
    return (64, 128) if h.n_embd == 4096 else (32, 64)  # conversion/rwkv.py


def _m_rwkv6(h: Hp, m: dict[str, Any]) -> None:
    a = h.arch
    mix, decay = _rwkv6_extra(h)
    m.clear()
    m.update({
        f"{a}.context_length": 1048576, f"{a}.embedding_length": h.n_embd,
        f"{a}.block_count": h.n_layer,
        f"{a}.attention.layer_norm_epsilon": float(h.get("layer_norm_epsilon", 1e-5)),
        f"{a}.rescale_every_n_layers": int(h.get("rescale_every", 6)),
        f"{a}.wkv.head_size": int(h["head_size"]), f"{a}.time_mix_extra_dim": mix,
        f"{a}.time_decay_extra_dim": decay, f"{a}.feed_forward_length": _rwkv6_ff(h),
        f"{a}.attention.head_count": 0,
    })


def _rwkv7_ranks(h: Hp) -> tuple[int, int, int, int]:
    """decay, iclr, value-residual-mix and gate LoRA ranks (conversion/rwkv.py calc_lora_rank
    when the config leaves them null)."""
    e = h.n_embd

    def calc(exponent: float, multiplier: float) -> int:
        return max(1, round(e ** exponent * multiplier / 32)) * 32

    return (int(h.get("decay_low_rank_dim") or calc(0.5, 1.8)),
            int(h.get("a_low_rank_dim") or calc(0.5, 1.8)),
            int(h.get("v_low_rank_dim") or calc(0.5, 1.3)),
            int(h.get("gate_low_rank_dim") or calc(0.8, 0.6)))


def _t_rwkv7(h: Hp) -> Shapes:
    # src/models/rwkv7.cpp
    out: Shapes = []
    _rwkv_io(h, out)
    e = h.n_embd
    decay, iclr, vmix, gate = _rwkv7_ranks(h)
    n_ff = h.n_ff or 4 * e
    for i in range(h.n_layer):
        b = f"blk.{i}."
        norm(out, i, "attn_norm", e, bias=True)
        norm(out, i, "attn_norm_2", e, bias=True)
        v_rank = iclr if i == 0 else vmix
        out += [(b + "time_mix_w0.weight", (e,)), (b + "time_mix_w1.weight", (e, decay)),
                (b + "time_mix_w2.weight", (decay, e)),
                (b + "time_mix_a0.weight", (e,)), (b + "time_mix_a1.weight", (e, iclr)),
                (b + "time_mix_a2.weight", (iclr, e)),
                (b + "time_mix_v0.weight", (e,)), (b + "time_mix_v1.weight", (e, v_rank)),
                (b + "time_mix_v2.weight", (v_rank, e)),
                (b + "time_mix_g1.weight", (e, gate)), (b + "time_mix_g2.weight", (gate, e)),
                (b + "time_mix_lerp_fused.weight", (e, 1, 1, 6)),
                (b + "time_mix_k_k.weight", (e,)), (b + "time_mix_k_a.weight", (e,)),
                (b + "time_mix_r_k.weight", (e,)),
                (b + "time_mix_key.weight", (e, e)), (b + "time_mix_value.weight", (e, e)),
                (b + "time_mix_receptance.weight", (e, e)),
                (b + "time_mix_ln.weight", (e,)), (b + "time_mix_ln.bias", (e,)),
                (b + "time_mix_output.weight", (e, e)),
                (b + "channel_mix_lerp_k.weight", (e, 1, 1)),
                (b + "channel_mix_key.weight", (e, n_ff)),
                (b + "channel_mix_value.weight", (n_ff, e))]
    return out


def _m_rwkv7(h: Hp, m: dict[str, Any]) -> None:
    a = h.arch
    decay, iclr, vmix, gate = _rwkv7_ranks(h)
    m.clear()
    m.update({
        f"{a}.context_length": 1048576, f"{a}.embedding_length": h.n_embd,
        f"{a}.block_count": h.n_layer,
        f"{a}.attention.layer_norm_epsilon": float(h.get("layer_norm_epsilon", 1e-5)),
        f"{a}.wkv.head_size": int(h["head_size"]),
        f"{a}.attention.decay_lora_rank": decay, f"{a}.attention.iclr_lora_rank": iclr,
        f"{a}.attention.value_residual_mix_lora_rank": vmix,
        f"{a}.attention.gate_lora_rank": gate,
        f"{a}.feed_forward_length": h.n_ff or 4 * h.n_embd, f"{a}.attention.head_count": 0,
    })


# --- hybrids -------------------------------------------------------------------------------


def _t_jamba(h: Hp) -> Shapes:
    # src/models/jamba.cpp: Mamba-1 layers where n_head_kv(il) == 0; MoE where the router is
    e, d_inner, d_state = h.n_embd, 2 * h.n_embd, int(h["mamba_d_state"])
    d_conv, dt_rank = int(h["mamba_d_conv"]), int(h["mamba_dt_rank"])
    n_exp = int(h["num_experts"])
    out: Shapes = []
    io(h, out)
    for i in range(h.n_layer):
        b = f"blk.{i}."
        norm(out, i, "attn_norm", e)
        if _jamba_attention(h, i):
            attn(out, i, e, e, h.kv_dim, n_o=e)
        else:
            out += [(b + "ssm_in.weight", (e, 2 * d_inner)),
                    (b + "ssm_conv1d.weight", (d_conv, d_inner)),
                    (b + "ssm_conv1d.bias", (d_inner,)),
                    (b + "ssm_x.weight", (d_inner, dt_rank + 2 * d_state)),
                    (b + "ssm_dt_norm.weight", (dt_rank,)),
                    (b + "ssm_dt.weight", (dt_rank, d_inner)),
                    (b + "ssm_dt.bias", (d_inner,)),
                    (b + "ssm_b_norm.weight", (d_state,)),
                    (b + "ssm_c_norm.weight", (d_state,)),
                    (b + "ssm_a", (d_state, d_inner)),
                    (b + "ssm_d", (d_inner,)),
                    (b + "ssm_out.weight", (d_inner, e))]
        norm(out, i, "ffn_norm", e)
        if i % int(h["expert_layer_period"]) == int(h["expert_layer_offset"]):
            moe(out, i, e, h.n_ff, n_exp)
        else:
            ffn(out, i, e, h.n_ff)
    return out


def _jamba_attention(h: Hp, i: int) -> bool:
    return i % int(h["attn_layer_period"]) == int(h["attn_layer_offset"])


def _m_jamba(h: Hp, m: dict[str, Any]) -> None:
    # conversion/jamba.py: head_count_kv per layer (0 = Mamba), Mamba-1 ssm keys
    a = h.arch
    m[f"{a}.attention.head_count_kv"] = [
        h.n_head_kv if _jamba_attention(h, i) else 0 for i in range(h.n_layer)]
    m[f"{a}.ssm.conv_kernel"] = int(h["mamba_d_conv"])
    m[f"{a}.ssm.inner_size"] = 2 * h.n_embd
    m[f"{a}.ssm.state_size"] = int(h["mamba_d_state"])
    m[f"{a}.ssm.time_step_rank"] = int(h["mamba_dt_rank"])
    m[f"{a}.expert_count"] = int(h["num_experts"])
    m[f"{a}.expert_used_count"] = int(h["num_experts_per_tok"])


def _mamba2_block(out: Shapes, i: int, e: int, d_inner: int, d_state: int, n_group: int,
                  n_head: int, d_conv: int, *, ssm_norm: bool = True) -> None:
    """A Mamba-2 mixer as granite-hybrid.cpp / nemotron-h.cpp / falcon-h1.cpp load it."""
    b = f"blk.{i}."
    conv_dim = d_inner + 2 * n_group * d_state
    out += [(b + "ssm_in.weight", (e, d_inner + conv_dim + n_head)),
            (b + "ssm_conv1d.weight", (d_conv, conv_dim)),
            (b + "ssm_conv1d.bias", (conv_dim,)),
            (b + "ssm_dt.bias", (n_head,)),
            (b + "ssm_a", (1, n_head)),
            (b + "ssm_d", (1, n_head))]
    if ssm_norm:
        out.append((b + "ssm_norm.weight", (d_inner // n_group, n_group)))
    out.append((b + "ssm_out.weight", (d_inner, e)))


def _ssm_metadata(a: str, m: dict[str, Any], d_conv: int, d_inner: int, d_state: int,
                  n_head: int, n_group: int) -> None:
    m[f"{a}.ssm.conv_kernel"] = d_conv
    m[f"{a}.ssm.inner_size"] = d_inner
    m[f"{a}.ssm.state_size"] = d_state
    m[f"{a}.ssm.time_step_rank"] = n_head
    m[f"{a}.ssm.group_count"] = n_group


def _granite_hybrid_dims(h: Hp) -> tuple[int, int, int, int, int]:
    n_head = int(h["mamba_n_heads"])
    return (n_head * int(h["mamba_d_head"]), int(h["mamba_d_state"]), int(h["mamba_n_groups"]),
            n_head, int(h["mamba_d_conv"]))


def _t_granitehybrid(h: Hp) -> Shapes:
    # src/models/granite-hybrid.cpp: Mamba-2 or attention per layer_types; MoE + shared expert
    e = h.n_embd
    d_inner, d_state, n_group, n_head, d_conv = _granite_hybrid_dims(h)
    n_exp = int(h.get("num_local_experts") or 0)
    out: Shapes = []
    io(h, out)
    for i, kind in enumerate(h["layer_types"]):
        norm(out, i, "attn_norm", e)
        if kind == "attention":
            attn(out, i, e, h.q_dim, h.kv_dim)
        else:
            _mamba2_block(out, i, e, d_inner, d_state, n_group, n_head, d_conv)
        norm(out, i, "ffn_norm", e)
        if n_exp:
            moe(out, i, e, h.n_ff, n_exp)
            if h.get("shared_intermediate_size"):
                shexp(out, i, e, int(h["shared_intermediate_size"]))
        else:
            ffn(out, i, e, int(h.get("shared_intermediate_size") or h.n_ff))
    return out


def _m_granitehybrid(h: Hp, m: dict[str, Any]) -> None:
    # conversion/granite.py GraniteHybridModel: head_count_kv 0 on the Mamba layers
    a = h.arch
    m[f"{a}.attention.head_count_kv"] = [
        h.n_head_kv if t == "attention" else 0 for t in h["layer_types"]]
    _ssm_metadata(a, m, *_reorder(_granite_hybrid_dims(h)))
    m[f"{a}.attention.scale"] = float(h.get("attention_multiplier", 1.0 / h.head_dim))
    m[f"{a}.embedding_scale"] = float(h.get("embedding_multiplier", 1.0))
    m[f"{a}.residual_scale"] = float(h.get("residual_multiplier", 1.0))
    m[f"{a}.logit_scale"] = float(h.get("logits_scaling", 1.0))
    m[f"{a}.rope.scaling.finetuned"] = h.get("position_embedding_type") != "nope"
    if h.get("num_local_experts"):
        m[f"{a}.expert_count"] = int(h["num_local_experts"])
        m[f"{a}.expert_used_count"] = int(h["num_experts_per_tok"])
        if h.get("shared_intermediate_size"):
            m[f"{a}.expert_shared_feed_forward_length"] = int(h["shared_intermediate_size"])
    else:
        m[f"{a}.feed_forward_length"] = int(h.get("shared_intermediate_size") or h.n_ff)


def _reorder(dims: tuple[int, int, int, int, int]) -> tuple[int, int, int, int, int]:
    d_inner, d_state, n_group, n_head, d_conv = dims
    return d_conv, d_inner, d_state, n_head, n_group


# conversion/nemotron.py NemotronHModel: the pattern letters, per architecture (the converter
# picks nemotron_h_moe when the config has num_experts_per_tok; its FFN blocks are then 'E')
_NEMOTRON_LETTERS = {"nemotron_h": "M*-", "nemotron_h_moe": "M*E"}


def _nemotron_kinds(h: Hp) -> str:
    pattern = str(h["hybrid_override_pattern"])
    if len(pattern) != h.n_layer:
        raise ValueError(f"hybrid_override_pattern has {len(pattern)} layers, not {h.n_layer}")
    if h.n_nextn:
        # NemotronHModel folds an MTP head into one trailing block (Nemotron 3 Super):
        # not laid out here, rather than written wrong
        raise ValueError(f"{h.arch}: NextN/MTP blocks are not laid out")
    letters = _NEMOTRON_LETTERS[h.arch]
    if set(pattern) - set(letters):
        raise ValueError(f"{h.arch}: hybrid_override_pattern letters {sorted(set(pattern))} "
                         f"are not all of {letters!r}")
    return pattern


def _t_nemotron_h(h: Hp) -> Shapes:
    # src/models/nemotron-h.cpp (nemotron_h_moe inherits its load_arch_tensors): 'M' Mamba-2,
    # '*' attention, '-' an MLP (up/down, relu^2), 'E' the MoE block: router + its
    # selection bias, ungated up/down experts (over the latent width where moe_latent_size
    # is set), an ungated shared expert
    e = h.n_embd
    n_head = int(h["mamba_num_heads"])
    d_inner = n_head * int(h["mamba_head_dim"])
    d_state, n_group, d_conv = int(h["ssm_state_size"]), int(h["n_groups"]), int(h["conv_kernel"])
    out: Shapes = []
    io(h, out)
    for i, kind in enumerate(_nemotron_kinds(h)):
        norm(out, i, "attn_norm", e)
        if kind == "M":
            _mamba2_block(out, i, e, d_inner, d_state, n_group, n_head, d_conv)
        elif kind == "*":
            attn(out, i, e, h.q_dim, h.kv_dim)
        elif kind == "E":
            _nemotron_moe_block(h, out, i)
        else:
            ffn(out, i, e, h.n_ff, gate=False)
    return out


def _nemotron_moe_block(h: Hp, out: Shapes, i: int) -> None:
    """One 'E' block as nemotron-h.cpp creates it (the n_expert != 0 branch): the router reads
    n_embd, the experts the latent width where there is one."""
    e = h.n_embd
    latent = int(h.get("moe_latent_size") or 0)
    moe_e, n_ff_exp = latent or e, int(h["moe_intermediate_size"])
    n_exp = int(h["n_routed_experts"])
    b = f"blk.{i}."
    out += [(b + "ffn_gate_inp.weight", (e, n_exp)), (b + "exp_probs_b.bias", (n_exp,))]
    if latent:
        out += [(b + "ffn_latent_down.weight", (e, latent)),
                (b + "ffn_latent_up.weight", (latent, e))]
    out += [(b + "ffn_down_exps.weight", (n_ff_exp, moe_e, n_exp)),
            (b + "ffn_up_exps.weight", (moe_e, n_ff_exp, n_exp))]
    shexp(out, i, e, int(h["moe_shared_expert_intermediate_size"]), gate=False)


def _m_nemotron_h(h: Hp, m: dict[str, Any]) -> None:
    # conversion/nemotron.py NemotronHModel: per-layer head_count_kv and feed_forward_length;
    # for nemotron_h_moe the expert keys (its feed_forward_length marks the 'E' blocks with
    # moe_intermediate_size, which load_arch_hparams reads as n_ff(il) != 0)
    a = h.arch
    kinds = _nemotron_kinds(h)
    m[f"{a}.attention.head_count_kv"] = [h.n_head_kv if k == "*" else 0 for k in kinds]
    if a == "nemotron_h_moe":
        n_ff_exp = int(h["moe_intermediate_size"])
        m[f"{a}.feed_forward_length"] = [n_ff_exp if k == "E" else 0 for k in kinds]
        m[f"{a}.expert_used_count"] = int(h["num_experts_per_tok"])
        m[f"{a}.expert_feed_forward_length"] = n_ff_exp
        m[f"{a}.expert_shared_feed_forward_length"] = \
            int(h["moe_shared_expert_intermediate_size"])
        m[f"{a}.expert_count"] = int(h["n_routed_experts"])
        m[f"{a}.expert_shared_count"] = int(h["n_shared_experts"])
        m[f"{a}.expert_weights_norm"] = bool(h["norm_topk_prob"])
        m[f"{a}.expert_weights_scale"] = float(h["routed_scaling_factor"])
        m[f"{a}.expert_group_count"] = int(h["n_group"])
        if h.get("moe_latent_size") is not None:
            m[f"{a}.moe_latent_size"] = int(h["moe_latent_size"])
    else:
        m[f"{a}.feed_forward_length"] = [h.n_ff if k == "-" else 0 for k in kinds]
    n_head = int(h["mamba_num_heads"])
    _ssm_metadata(a, m, int(h["conv_kernel"]), n_head * int(h["mamba_head_dim"]),
                  int(h["ssm_state_size"]), n_head, int(h["n_groups"]))
    eps = float(h.get("layer_norm_epsilon", 1e-5))
    m.pop(f"{a}.attention.layer_norm_rms_epsilon", None)
    m[f"{a}.attention.layer_norm_epsilon"] = eps
    m[f"{a}.attention.layer_norm_rms_epsilon"] = eps


def _t_falcon_h1(h: Hp) -> Shapes:
    # src/models/falcon-h1.cpp: every layer has a Mamba-2 mixer AND attention (parallel);
    # the FFN norm is named without ".weight" (tensor_mapping's pre_ff_layernorm.weight)
    e = h.n_embd
    d_inner, n_head = int(h["mamba_d_ssm"]), int(h["mamba_n_heads"])
    d_state, n_group, d_conv = int(h["mamba_d_state"]), int(h["mamba_n_groups"]), \
        int(h["mamba_d_conv"])
    out: Shapes = []
    io(h, out)
    for i in range(h.n_layer):
        b = f"blk.{i}."
        _mamba2_block(out, i, e, d_inner, d_state, n_group, n_head, d_conv,
                      ssm_norm=bool(h.get("mamba_rms_norm", False)))
        attn(out, i, e, h.q_dim, h.kv_dim)
        norm(out, i, "attn_norm", e)
        out.append((b + "ffn_norm", (e,)))
        ffn(out, i, e, h.n_ff)
    return out


def _m_falcon_h1(h: Hp, m: dict[str, Any]) -> None:
    a = h.arch
    _ssm_metadata(a, m, int(h["mamba_d_conv"]), int(h["mamba_d_ssm"]), int(h["mamba_d_state"]),
                  int(h["mamba_n_heads"]), int(h["mamba_n_groups"]))


def _t_qwen3next(h: Hp) -> Shapes:
    # src/models/qwen3next.cpp / qwen35.cpp / qwen35moe.cpp: gated-delta-net layers
    # (attn_qkv + attn_gate, conv, dt/A, beta-alpha) and full-attention layers with a gated q
    # (2 x q) every full_attention_interval-th layer; MoE with a gated shared expert; the MTP
    # block (full attention) after the trunk
    e = h.n_embd
    hk, hv = int(h["linear_key_head_dim"]), int(h["linear_value_head_dim"])
    n_k, n_v = int(h["linear_num_key_heads"]), int(h["linear_num_value_heads"])
    key_dim, value_dim = hk * n_k, hv * n_v
    conv_dim = 2 * key_dim + value_dim
    interval = int(h.get("full_attention_interval", 4))
    is_moe = h.arch in ("qwen3next", "qwen35moe")
    out: Shapes = []
    io(h, out)
    for i in range(h.n_layer_all):
        b = f"blk.{i}."
        norm(out, i, "attn_norm", e)
        norm(out, i, "post_attention_norm", e)
        linear = i < h.n_layer and (i + 1) % interval != 0
        if linear:
            out += [(b + "attn_qkv.weight", (e, conv_dim)),
                    (b + "attn_gate.weight", (e, value_dim)),
                    (b + "ssm_conv1d.weight", (int(h["linear_conv_kernel_dim"]), conv_dim)),
                    (b + "ssm_dt.bias", (n_v,)),
                    (b + "ssm_a", (n_v,))]
            if h.arch == "qwen3next":
                out.append((b + "ssm_ba.weight", (e, 2 * n_v)))
            else:
                out += [(b + "ssm_beta.weight", (e, n_v)), (b + "ssm_alpha.weight", (e, n_v))]
            out += [(b + "ssm_norm.weight", (hv,)), (b + "ssm_out.weight", (value_dim, e))]
        else:
            attn(out, i, e, 2 * h.q_dim, h.kv_dim, qk_norm=h.head_dim, n_o=h.q_dim)
        if is_moe:
            n_ff_exp = int(h["moe_intermediate_size"])
            moe(out, i, e, n_ff_exp, int(h["num_experts"]))
            shexp(out, i, e, int(h["shared_expert_intermediate_size"]), gate_inp=True)
        else:
            ffn(out, i, e, h.n_ff)
        if i >= h.n_layer:
            nextn(out, i, e)
    return out


def _m_qwen3next(h: Hp, m: dict[str, Any]) -> None:
    # conversion/qwen.py Qwen3NextModel (and the Qwen3.5 models derived from it)
    a = h.arch
    n_v = int(h["linear_num_value_heads"])
    _ssm_metadata(a, m, int(h["linear_conv_kernel_dim"]),
                  int(h["linear_value_head_dim"]) * n_v, int(h["linear_key_head_dim"]), n_v,
                  int(h["linear_num_key_heads"]))
    m[f"{a}.full_attention_interval"] = int(h.get("full_attention_interval", 4))
    m[f"{a}.rope.dimension_count"] = int(h.head_dim * float(h.get("partial_rotary_factor", 0.25)))
    if h.arch in ("qwen3next", "qwen35moe"):
        m[f"{a}.expert_count"] = int(h["num_experts"])
        m[f"{a}.expert_used_count"] = int(h["num_experts_per_tok"])
        m[f"{a}.expert_feed_forward_length"] = int(h["moe_intermediate_size"])
        m[f"{a}.expert_shared_feed_forward_length"] = int(h["shared_expert_intermediate_size"])
    if h.arch in ("qwen35", "qwen35moe"):
        sections = h.get("mrope_section", [11, 11, 10, 0])
        m[f"{a}.rope.dimension_sections"] = [int(s) for s in sections]


def _t_lfm2(h: Hp) -> Shapes:
    # src/models/lfm2.cpp: short-conv layers + attention layers; output norm is token_embd_norm
    out: Shapes = []
    io(h, out, norm="token_embd_norm")
    e, attn_idx = h.n_embd, set(h["full_attn_idxs"])
    for i in range(h.n_layer):
        b = f"blk.{i}."
        out.append((b + "ffn_norm.weight", (e,)))
        ffn(out, i, e, h.n_ff)
        out.append((b + "attn_norm.weight", (e,)))
        if i in attn_idx:
            out += [(b + "attn_q_norm.weight", (h.head_dim,)),
                    (b + "attn_k_norm.weight", (h.head_dim,))]
            attn(out, i, e, e, h.kv_dim)
        else:
            out += [(b + "shortconv.conv.weight", (int(h["conv_L_cache"]), e)),
                    (b + "shortconv.in_proj.weight", (e, 3 * e)),
                    (b + "shortconv.out_proj.weight", (e, e))]
    return out


def _m_lfm2(h: Hp, m: dict[str, Any]) -> None:
    attn_idx = set(h["full_attn_idxs"])
    m[f"{h.arch}.attention.head_count_kv"] = [
        h.n_head_kv if i in attn_idx else 0 for i in range(h.n_layer)]
    m[f"{h.arch}.shortconv.l_cache"] = int(h["conv_L_cache"])


LAYOUTS: dict[str, Layout] = {
    "mamba": Layout(_t_mamba, _m_mamba, "models/mamba.cpp; conversion/mamba.py"),
    "mamba2": Layout(_t_mamba2, _m_mamba2, "models/mamba2.cpp; conversion/mamba.py"),
    "rwkv6": Layout(_t_rwkv6, _m_rwkv6, "models/rwkv6.cpp; conversion/rwkv.py"),
    "rwkv7": Layout(_t_rwkv7, _m_rwkv7, "models/rwkv7.cpp; conversion/rwkv.py"),
    "jamba": Layout(_t_jamba, _m_jamba, "models/jamba.cpp; conversion/jamba.py"),
    "granitehybrid": Layout(_t_granitehybrid, _m_granitehybrid,
                            "models/granite-hybrid.cpp; conversion/granite.py"),
    "nemotron_h": Layout(_t_nemotron_h, _m_nemotron_h,
                         "models/nemotron-h.cpp; conversion/nemotron.py"),
    "nemotron_h_moe": Layout(_t_nemotron_h, _m_nemotron_h,
                             "models/nemotron-h.cpp (inherited by nemotron-h-moe.cpp); "
                             "conversion/nemotron.py"),
    "falcon-h1": Layout(_t_falcon_h1, _m_falcon_h1,
                        "models/falcon-h1.cpp; conversion/falcon_h1.py"),
    "qwen3next": Layout(_t_qwen3next, _m_qwen3next, "models/qwen3next.cpp; conversion/qwen.py"),
    "qwen35": Layout(_t_qwen3next, _m_qwen3next, "models/qwen35.cpp; conversion/qwen.py"),
    "qwen35moe": Layout(_t_qwen3next, _m_qwen3next, "models/qwen35moe.cpp; conversion/qwen.py"),
    "lfm2": Layout(_t_lfm2, _m_lfm2, "models/lfm2.cpp; conversion/lfm2.py"),
}
