"""src/models/qwen35.cpp and qwen35moe.cpp: llama_model_qwen35(moe)::graph (Qwen3.5: the
Qwen3-Next layout with separate beta / alpha projections, M-RoPE on the gated attention
layers, weight scales; a dense FFN, or Qwen3-Next's routed MoE with a gated shared expert).

The main graph is Qwen3-Next's line for line except for the pieces overridden here. Unlike
Qwen3-Next, q/k are repeated to the value heads only when a GDN op is not fused, which
never happens in this llama.cpp (cparams.fused_gdn_ar / _ch are always on)."""

from __future__ import annotations

import math

from kvgui.core.memory.builders import hparams as hp_mod
from kvgui.core.memory.builders.common import (
    FFN_PAR,
    FFN_SILU,
    NORM_RMS,
    InpAttnKV,
    InpAttnKVIswa,
)
from kvgui.core.memory.builders.hparams import Hparams
from kvgui.core.memory.builders.qwen3next import Qwen3NextGraph
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Tensor
from kvgui.core.model.info import ModelInfo

FUSED_GDN = True  # cparams.fused_gdn_ar and cparams.fused_gdn_ch (llama-context.cpp)


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: the gated-delta-net sizes; LLAMA_ROPE_TYPE_IMROPE gives four
    positions per token (llama_hparams::n_pos_per_embd)."""
    hp_mod.ssm_hparams(hp)
    hp.n_ff_shexp = hp.key_int("expert_shared_feed_forward_length")
    hp.n_pos_per_embd_ = 4


class Qwen35Graph(Qwen3NextGraph):
    # layer.ssm_dt is the dt bias (LLM_TENSOR_SSM_DT, "bias"), as in Qwen3-Next
    def build_layer_attn(self, inp: InpAttnKV | InpAttnKVIswa, cur: Tensor, inp_pos: Tensor,
                         il: int) -> Tensor:
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        layer = self.model.layers[il]
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k()
        n_head, n_head_kv, n_tokens = self.n_head, self.n_head_kv, self.n_tokens

        Qcur_full, Kcur, Vcur = self.build_qkv_heads(layer, cur, n_embd_head * 2, n_head,
                                                     n_embd_head, n_head_kv, n_embd_head,
                                                     n_head_kv, il, reshape=False)
        cb(Qcur_full, "Qcur_full", il)
        cb(Kcur, "Kcur", il)
        cb(Vcur, "Vcur", il)

        es = ggml.element_size(Qcur_full)
        Qcur = ggml.view_3d(ctx0, Qcur_full, n_embd_head, n_head, n_tokens,
                            es * n_embd_head * 2, es * n_embd_head * 2 * n_head, 0)
        cb(Qcur, "Qcur_reshaped", il)

        Qcur = self.build_norm(Qcur, layer.attn_q_norm, None, NORM_RMS, il)
        cb(Qcur, "Qcur_normed", il)

        Kcur = ggml.reshape_3d(ctx0, Kcur, n_embd_head, n_head_kv, n_tokens)
        Kcur = self.build_norm(Kcur, layer.attn_k_norm, None, NORM_RMS, il)
        cb(Kcur, "Kcur_normed", il)

        gate = ggml.view_3d(ctx0, Qcur_full, n_embd_head, n_head, n_tokens,
                            es * n_embd_head * 2, es * n_embd_head * 2 * n_head,
                            es * n_embd_head)
        gate = ggml.cont_2d(ctx0, gate, n_embd_head * n_head, n_tokens)
        cb(gate, "gate_reshaped", il)

        Vcur = ggml.reshape_3d(ctx0, Vcur, n_embd_head, n_head_kv, n_tokens)

        # M-RoPE
        Qcur = ggml.rope_multi(ctx0, Qcur, inp_pos, None)
        Kcur = ggml.rope_multi(ctx0, Kcur, inp_pos, None)

        cb(Qcur, "Qcur", il)
        cb(Kcur, "Kcur", il)
        cb(Vcur, "Vcur", il)

        kq_scale = 1.0 / math.sqrt(n_embd_head) if hp.f_attention_scale == 0.0 \
            else hp.f_attention_scale
        cur = self.build_attn(inp, None, None, None, Qcur, Kcur, Vcur, None, None, None,
                              kq_scale, il)
        cb(cur, "attn_pregate", il)

        gate_sigmoid = ggml.sigmoid(ctx0, gate)
        cb(gate_sigmoid, "gate_sigmoid", il)

        cur = ggml.mul(ctx0, cur, gate_sigmoid)
        cb(cur, "attn_gated", il)

        assert layer.wo is not None
        cur = self.build_lora_mm(layer.wo, cur, layer.wo_s)
        cb(cur, "attn_output", il)
        return cur

    def build_qkvz(self, input_: Tensor, il: int) -> tuple[Tensor, Tensor]:
        ctx0, cb = self.ctx0, self.cb
        layer = self.model.layers[il]
        assert layer.wqkv is not None and layer.wqkv_gate is not None
        qkv_mixed = self.build_lora_mm(layer.wqkv, input_, layer.wqkv_s)
        qkv_mixed = ggml.reshape_3d(ctx0, qkv_mixed, qkv_mixed.ne[0], self.n_seq_tokens,
                                    self.n_seqs)
        cb(qkv_mixed, "linear_attn_qkv_mixed", il)
        z = self.build_lora_mm(layer.wqkv_gate, input_, layer.wqkv_gate_s)
        cb(z, "z", il)
        return qkv_mixed, z

    def build_beta_gate(self, cur: Tensor, il: int) -> tuple[Tensor, Tensor]:
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        layer = self.model.layers[il]
        n_seqs, n_seq_tokens = self.n_seqs, self.n_seq_tokens
        num_v_heads = hp.ssm_dt_rank

        assert layer.ssm_beta is not None and layer.ssm_alpha is not None
        beta = self.build_lora_mm(layer.ssm_beta, cur, layer.ssm_beta_s)
        beta = ggml.reshape_4d(ctx0, beta, 1, num_v_heads, n_seq_tokens, n_seqs)
        cb(beta, "beta", il)

        beta = ggml.sigmoid(ctx0, beta)
        cb(beta, "beta_sigmoid", il)

        alpha = self.build_lora_mm(layer.ssm_alpha, cur, layer.ssm_alpha_s)
        alpha = ggml.reshape_3d(ctx0, alpha, num_v_heads, n_seq_tokens, n_seqs)
        cb(alpha, "alpha", il)

        assert layer.ssm_dt is not None and layer.ssm_a is not None
        alpha_biased = ggml.add(ctx0, alpha, layer.ssm_dt)
        alpha_softplus = ggml.softplus(ctx0, alpha_biased)
        cb(alpha_softplus, "a_softplus", il)

        gate = ggml.mul(ctx0, alpha_softplus, layer.ssm_a)
        cb(gate, "gate", il)

        gate = ggml.reshape_4d(ctx0, gate, 1, num_v_heads, n_seq_tokens, n_seqs)
        return beta, gate

    def repeat_heads(self, q_conv: Tensor, k_conv: Tensor, il: int) -> tuple[Tensor, Tensor]:
        """The explicit repeat, needed only without the fused GDN op."""
        hp = self.hparams
        num_k_heads, num_v_heads = hp.ssm_n_group, hp.ssm_dt_rank
        if num_k_heads != num_v_heads and not FUSED_GDN:
            assert num_v_heads % num_k_heads == 0
            ctx0, n_seq_tokens, n_seqs = self.ctx0, self.n_seq_tokens, self.n_seqs
            q_conv = ggml.repeat_4d(ctx0, q_conv, hp.ssm_d_state, num_v_heads, n_seq_tokens,
                                    n_seqs)
            k_conv = ggml.repeat_4d(ctx0, k_conv, hp.ssm_d_state, num_v_heads, n_seq_tokens,
                                    n_seqs)
        return q_conv, k_conv

    def ssm_out_s(self, il: int) -> Tensor | None:
        return self.model.layers[il].ssm_out_s

    def build_layer_ffn(self, cur: Tensor, il: int) -> Tensor:
        layer = self.model.layers[il]
        if self.arch == "qwen35moe":
            assert layer.ffn_gate_inp is not None
            return super().build_layer_ffn(cur, il)
        # Qwen3.5 does not use MoE FFN
        assert layer.ffn_gate_inp is None
        cur = self.build_ffn(cur, layer.ffn_up, None, layer.ffn_up_s,
                             layer.ffn_gate, None, layer.ffn_gate_s,
                             layer.ffn_down, None, layer.ffn_down_s,
                             None, FFN_SILU, FFN_PAR, il)
        self.cb(cur, "ffn_out", il)
        return cur
