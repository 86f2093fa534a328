"""src/models/qwen3next.cpp: llama_model_qwen3next::graph (Qwen3-Next: gated delta net layers
with a gated full-attention layer every fourth, a routed MoE with a gated shared expert;
llama_memory_hybrid). The MTP block (LLM_GRAPH_TYPE_DECODER_MTP) is a separate graph of its
own context and is not part of the main reserve."""

from __future__ import annotations

import math
from typing import ClassVar

from kvgui.core.memory.builders import hparams as hp_mod
from kvgui.core.memory.builders.common import (
    FFN_PAR,
    FFN_SILU,
    NORM_RMS,
    InpAttnKV,
    InpAttnKVIswa,
    InpRS,
    Result,
)
from kvgui.core.memory.builders.delta_net_base import DeltaNetBase, build_gdn_l2_norm
from kvgui.core.memory.builders.hparams import GATING_SOFTMAX, Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Tensor
from kvgui.core.model.info import ModelInfo

EMBEDDINGS_NEXTN_MASKED = False  # cparams.embeddings_nextn_masked (llama_context's default)


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: the gated-delta-net sizes (the recurrent layers are in the layer
    rules), the shared expert's width."""
    hp_mod.ssm_hparams(hp)
    hp.n_ff_shexp = hp.key_int("expert_shared_feed_forward_length")


class Qwen3NextGraph(DeltaNetBase):
    # load_arch_tensors: layer.ssm_dt is the dt bias here (LLM_TENSOR_SSM_DT, "bias")
    layer_names: ClassVar[dict[str, str]] = {"ssm_dt": "ssm_dt.bias"}

    def build(self) -> Result:
        ctx0, model, cb = self.ctx0, self.model, self.cb

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)
        cb(inpL, "model.embed_tokens", -1)

        inp = self.build_inp_mem_hybrid()

        inp_pos = self.build_inp_pos()
        inp_out_ids = self.build_inp_out_ids()

        # MTP/NextN layers are loaded as extra decoder blocks but not executed in the main pass
        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            self.gf.expand(cur)

            if self.hparams.is_recr(il):
                cur = self.build_layer_attn_linear(inp.get_recr(), cur, il)
            else:
                cur = self.build_layer_attn(inp.get_attn(), cur, inp_pos, il)

            if il == self.n_layer - 1 and EMBEDDINGS_NEXTN_MASKED:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)

            # residual connection
            cur = ggml.add(ctx0, cur, inpSA)
            cb(cur, "attn_residual", il)

            ffn_residual = cur

            attn_post_norm = self.build_norm(cur, layer.attn_post_norm, None, NORM_RMS, il)
            cb(attn_post_norm, "attn_post_norm", il)

            cur = self.build_layer_ffn(attn_post_norm, il)
            cb(cur, "ffn_out", il)

            cur = ggml.add(ctx0, cur, ffn_residual)
            cb(cur, "post_moe", il)

            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

            inpL = cur
        cur = inpL

        # post-norm hidden state is input to both the LM head and the MTP head
        cur = self.build_norm(cur, model.output_norm, None, NORM_RMS, -1)

        cb(cur, "h_nextn", -1)
        self.res.t_h_nextn = cur

        if not EMBEDDINGS_NEXTN_MASKED:
            cur = ggml.get_rows(ctx0, cur, inp_out_ids)

        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)

        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)

    def build_norm_gated(self, input_: Tensor, weights: Tensor | None, gate: Tensor,
                         layer: int) -> Tensor:
        normalized = self.build_norm(input_, weights, None, NORM_RMS, layer)
        gated_silu = ggml.silu(self.ctx0, gate)
        return ggml.mul(self.ctx0, normalized, gated_silu)

    def build_layer_attn(self, inp: InpAttnKV | InpAttnKVIswa, cur: Tensor, inp_pos: Tensor,
                         il: int) -> Tensor:
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        layer = self.model.layers[il]
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k()
        n_head, n_head_kv, n_tokens = self.n_head, self.n_head_kv, self.n_tokens

        # a single Q projection that outputs query + gate
        Qcur_full, Kcur, Vcur = self.build_qkv_heads(layer, cur, n_embd_head * 2, n_head,
                                                     n_embd_head, n_head_kv, n_embd_head,
                                                     n_head_kv, il, reshape=False)
        cb(Qcur_full, "Qcur_full", il)
        cb(Kcur, "Kcur", il)
        cb(Vcur, "Vcur", il)

        Qcur_full = ggml.reshape_4d(ctx0, Qcur_full, n_embd_head * 2, n_head, n_tokens, 1)

        Qcur = ggml.view_4d(ctx0, Qcur_full, n_embd_head, n_head, n_tokens, 1,
                            Qcur_full.nb[1], Qcur_full.nb[2], Qcur_full.nb[3], 0)
        cb(Qcur, "Qcur_view", il)

        gate = ggml.view_4d(ctx0, Qcur_full, n_embd_head, n_head, n_tokens, 1,
                            Qcur_full.nb[1], Qcur_full.nb[2], Qcur_full.nb[3],
                            n_embd_head * ggml.element_size(Qcur_full))
        cb(gate, "gate", il)

        Kcur = ggml.reshape_3d(ctx0, Kcur, n_embd_head, n_head_kv, n_tokens)
        Vcur = ggml.reshape_3d(ctx0, Vcur, n_embd_head, n_head_kv, n_tokens)

        Qcur = self.build_norm(Qcur, layer.attn_q_norm, None, NORM_RMS, il)
        cb(Qcur, "Qcur_normed", il)

        Kcur = self.build_norm(Kcur, layer.attn_k_norm, None, NORM_RMS, il)
        cb(Kcur, "Kcur_normed", il)

        Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, None)
        Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, None)

        cb(Qcur, "Qcur", il)
        cb(Kcur, "Kcur", il)
        cb(Vcur, "Vcur", il)

        kq_scale = 1.0 / math.sqrt(n_embd_head) if hp.f_attention_scale == 0.0 \
            else hp.f_attention_scale
        cur = self.build_attn(inp, None, None, None, Qcur, Kcur, Vcur, None, None, None,
                              kq_scale, il)
        cb(cur, "attn_pregate", il)

        gate = ggml.cont_2d(ctx0, gate, n_embd_head * n_head, n_tokens)
        gate = ggml.sigmoid(ctx0, gate)
        cb(gate, "gate_sigmoid", il)

        cur = ggml.mul(ctx0, cur, gate)
        cb(cur, "attn_gated", il)

        assert layer.wo is not None
        cur = self.build_lora_mm(layer.wo, cur, layer.wo_s)
        cb(cur, "attn_output", il)
        return cur

    def build_qkvz(self, input_: Tensor, il: int) -> tuple[Tensor, Tensor]:
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        layer = self.model.layers[il]
        n_seqs, n_seq_tokens = self.n_seqs, self.n_seq_tokens
        head_k_dim, num_k_heads = hp.ssm_d_state, hp.ssm_n_group
        num_v_heads = hp.ssm_dt_rank
        head_v_dim = hp.ssm_d_inner // num_v_heads

        if layer.wqkv is not None:
            # optimized path
            qkv_mixed = self.build_lora_mm(layer.wqkv, input_)
            qkv_mixed = ggml.reshape_3d(ctx0, qkv_mixed, qkv_mixed.ne[0], n_seq_tokens, n_seqs)
            cb(qkv_mixed, "linear_attn_qkv_mixed", il)
            assert layer.wqkv_gate is not None
            z = self.build_lora_mm(layer.wqkv_gate, input_)
            cb(z, "z", il)
            return qkv_mixed, z

        # legacy (slower) path
        assert layer.ssm_in is not None
        mixed_qkvz = self.build_lora_mm(layer.ssm_in, input_)
        cb(mixed_qkvz, "linear_attn_mixed_qkvz", il)

        qkvz_new_dim = 2 * head_k_dim + 2 * head_v_dim * (num_v_heads // num_k_heads)
        r = ggml.reshape_4d(ctx0, mixed_qkvz, qkvz_new_dim, num_k_heads, n_seq_tokens, n_seqs)
        split = (head_k_dim, head_k_dim, head_v_dim * num_v_heads // num_k_heads,
                 head_v_dim * num_v_heads // num_k_heads)
        es = ggml.element_size(r)

        def part(i: int) -> Tensor:
            return ggml.view_4d(ctx0, r, split[i], num_k_heads, n_seq_tokens, n_seqs,
                                r.nb[1], r.nb[2], r.nb[3], sum(split[:i]) * es)

        query, key, value, z = part(0), part(1), part(2), part(3)
        z = ggml.cont(ctx0, z)
        cb(z, "z", il)

        query_flat = ggml.cont_3d(ctx0, query, head_k_dim * num_k_heads, n_seq_tokens, n_seqs)
        key_flat = ggml.cont_3d(ctx0, key, head_k_dim * num_k_heads, n_seq_tokens, n_seqs)
        value_flat = ggml.cont_3d(ctx0, value, head_v_dim * num_v_heads, n_seq_tokens, n_seqs)

        qkv_mixed = ggml.concat(ctx0, query_flat, key_flat, 0)
        qkv_mixed = ggml.concat(ctx0, qkv_mixed, value_flat, 0)
        cb(qkv_mixed, "qkv_mixed", il)
        return qkv_mixed, z

    def build_beta_gate(self, cur: Tensor, il: int) -> tuple[Tensor, Tensor]:
        """beta (sigmoid) and the decay gate, from the joint beta/alpha projection."""
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        layer = self.model.layers[il]
        n_seqs, n_seq_tokens = self.n_seqs, self.n_seq_tokens
        num_k_heads, num_v_heads = hp.ssm_n_group, hp.ssm_dt_rank

        assert layer.ssm_beta_alpha is not None
        mixed_ba = self.build_lora_mm(layer.ssm_beta_alpha, cur)
        cb(mixed_ba, "linear_attn_mixed_ba", il)

        ba_new_dim = 2 * num_v_heads // num_k_heads
        r = ggml.reshape_4d(ctx0, mixed_ba, ba_new_dim, num_k_heads, n_seq_tokens, n_seqs)
        split = num_v_heads // num_k_heads
        b = ggml.view_4d(ctx0, r, split, num_k_heads, n_seq_tokens, n_seqs,
                         r.nb[1], r.nb[2], r.nb[3], 0)
        cb(b, "b", il)
        a = ggml.view_4d(ctx0, r, split, num_k_heads, n_seq_tokens, n_seqs,
                         r.nb[1], r.nb[2], r.nb[3], split * ggml.element_size(r))
        cb(a, "a", il)

        b = ggml.cont(ctx0, b)
        beta = ggml.sigmoid(ctx0, b)

        alpha = ggml.cont_3d(ctx0, a, num_v_heads, n_seq_tokens, n_seqs)

        assert layer.ssm_dt is not None and layer.ssm_a is not None
        alpha_biased = ggml.add(ctx0, alpha, layer.ssm_dt)
        alpha_softplus = ggml.softplus(ctx0, alpha_biased)
        cb(alpha_softplus, "a_softplus", il)

        gate = ggml.mul(ctx0, alpha_softplus, layer.ssm_a)
        cb(gate, "gate", il)

        beta = ggml.reshape_4d(ctx0, beta, 1, num_v_heads, n_seq_tokens, n_seqs)
        gate = ggml.reshape_4d(ctx0, gate, 1, num_v_heads, n_seq_tokens, n_seqs)
        return beta, gate

    def build_layer_attn_linear(self, inp: InpRS, cur: Tensor, il: int) -> Tensor:
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        layer = self.model.layers[il]
        mctx_cur = inp.mctx
        n_seqs, n_seq_tokens = self.n_seqs, self.n_seq_tokens
        head_k_dim, num_k_heads = hp.ssm_d_state, hp.ssm_n_group
        num_v_heads = hp.ssm_dt_rank
        head_v_dim = hp.ssm_d_inner // num_v_heads

        # input projections
        qkv_mixed, z = self.build_qkvz(cur, il)
        beta, gate = self.build_beta_gate(cur, il)

        conv_states_all = mctx_cur.get_r_l(il)
        ssm_states_all = mctx_cur.get_s_l(il)

        conv_kernel = layer.ssm_conv1d
        assert conv_kernel is not None
        conv_kernel_size = conv_kernel.ne[0]
        assert isinstance(conv_kernel_size, int)
        conv_channels = hp.ssm_d_inner + 2 * hp.ssm_n_group * hp.ssm_d_state

        conv_input = self.build_conv_state(inp, conv_states_all, qkv_mixed, conv_kernel_size,
                                           conv_channels, il)

        state = self.build_rs(inp, ssm_states_all, hp.n_embd_s(), n_seqs)
        state = ggml.reshape_4d(ctx0, state, head_v_dim, head_v_dim, num_v_heads, n_seqs)
        cb(state, "state_predelta", il)

        conv_output_proper = ggml.ssm_conv(ctx0, conv_input, conv_kernel)
        cb(conv_output_proper, "conv_output_raw", il)

        conv_output_silu = ggml.silu(ctx0, conv_output_proper)
        cb(conv_output_silu, "conv_output_silu", il)

        conv_qkv_mix = conv_output_silu

        qkv_dim = head_k_dim * num_k_heads * 2 + head_v_dim * num_v_heads
        rs = ggml.row_size
        nb1_qkv = rs(conv_qkv_mix.type, qkv_dim)

        q_conv = ggml.view_4d(ctx0, conv_qkv_mix, head_k_dim, num_k_heads, n_seq_tokens, n_seqs,
                              rs(conv_qkv_mix.type, head_k_dim), nb1_qkv,
                              nb1_qkv * n_seq_tokens, 0)
        k_conv = ggml.view_4d(ctx0, conv_qkv_mix, head_k_dim, num_k_heads, n_seq_tokens, n_seqs,
                              rs(conv_qkv_mix.type, head_k_dim), nb1_qkv,
                              nb1_qkv * n_seq_tokens,
                              head_k_dim * num_k_heads * ggml.element_size(conv_qkv_mix))
        v_conv = ggml.view_4d(ctx0, conv_qkv_mix, head_v_dim, num_v_heads, n_seq_tokens, n_seqs,
                              rs(conv_qkv_mix.type, head_v_dim), nb1_qkv,
                              nb1_qkv * n_seq_tokens,
                              rs(conv_qkv_mix.type, 2 * head_k_dim * num_k_heads))
        cb(q_conv, "q_conv", il)
        cb(k_conv, "k_conv", il)
        cb(v_conv, "v_conv", il)

        eps_norm = 1e-6
        q_conv = build_gdn_l2_norm(ctx0, q_conv, eps_norm)
        k_conv = build_gdn_l2_norm(ctx0, k_conv, eps_norm)

        q_conv, k_conv = self.repeat_heads(q_conv, k_conv, il)

        cb(q_conv, "q_conv_predelta", il)
        cb(k_conv, "k_conv_predelta", il)
        cb(v_conv, "v_conv_predelta", il)

        output = self.build_recurrent_attn(inp, ssm_states_all, q_conv, k_conv, v_conv, gate,
                                           beta, state, il)

        z_2d = ggml.reshape_4d(ctx0, z, head_v_dim, num_v_heads, n_seq_tokens, n_seqs)

        attn_out_norm = self.build_norm_gated(output, layer.ssm_norm, z_2d, il)

        final_output = ggml.reshape_3d(ctx0, attn_out_norm, head_v_dim * num_v_heads,
                                       n_seq_tokens, n_seqs)
        cb(final_output, "final_output", il)

        assert layer.ssm_out is not None
        cur = self.build_lora_mm(layer.ssm_out, final_output, self.ssm_out_s(il))
        cb(cur, "linear_attn_out", il)

        return ggml.reshape_2d(ctx0, cur, self.n_embd, n_seq_tokens * n_seqs)

    def ssm_out_s(self, il: int) -> Tensor | None:
        return None  # qwen3next's build_lora_mm(ssm_out, final_output): no scale

    def repeat_heads(self, q_conv: Tensor, k_conv: Tensor, il: int) -> tuple[Tensor, Tensor]:
        """Repeat q/k to the value heads when their counts differ (repeat-interleave)."""
        ctx0, hp = self.ctx0, self.hparams
        head_k_dim, num_k_heads, num_v_heads = hp.ssm_d_state, hp.ssm_n_group, hp.ssm_dt_rank
        n_seqs, n_seq_tokens = self.n_seqs, self.n_seq_tokens
        if num_k_heads == num_v_heads:
            return q_conv, k_conv
        assert num_v_heads % num_k_heads == 0
        repeat_factor = num_v_heads // num_k_heads
        q_reshaped = ggml.reshape_4d(ctx0, q_conv, head_k_dim, 1, num_k_heads,
                                     n_seq_tokens * n_seqs)
        k_reshaped = ggml.reshape_4d(ctx0, k_conv, head_k_dim, 1, num_k_heads,
                                     n_seq_tokens * n_seqs)
        q_repeated = ggml.repeat_4d(ctx0, q_reshaped, head_k_dim, repeat_factor, num_k_heads,
                                    n_seq_tokens * n_seqs)
        k_repeated = ggml.repeat_4d(ctx0, k_reshaped, head_k_dim, repeat_factor, num_k_heads,
                                    n_seq_tokens * n_seqs)
        q_conv = ggml.reshape_4d(ctx0, q_repeated, head_k_dim, num_k_heads * repeat_factor,
                                 n_seq_tokens, n_seqs)
        k_conv = ggml.reshape_4d(ctx0, k_repeated, head_k_dim, num_k_heads * repeat_factor,
                                 n_seq_tokens, n_seqs)
        return q_conv, k_conv

    def build_layer_ffn(self, cur: Tensor, il: int) -> Tensor:
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        layer = self.model.layers[il]
        if layer.ffn_gate_inp is None:
            # dense FFN branch
            cur = self.build_ffn(cur, layer.ffn_up, None, None, layer.ffn_gate, None, None,
                                 layer.ffn_down, None, None, None, FFN_SILU, FFN_PAR, il)
            cb(cur, "ffn_out", il)
            return cur
        assert layer.ffn_down_exps is not None
        moe_out = self.build_moe_ffn(cur, layer.ffn_gate_inp, None,
                                     layer.ffn_up_exps, None, layer.ffn_gate_exps, None,
                                     layer.ffn_down_exps, None, None,
                                     self.n_expert, self.n_expert_used,
                                     FFN_SILU, True, hp.expert_weights_scale,
                                     GATING_SOFTMAX, il,
                                     None, layer.ffn_gate_up_exps,
                                     layer.ffn_up_exps_s, layer.ffn_gate_exps_s,
                                     layer.ffn_down_exps_s)
        cb(moe_out, "ffn_moe_out", il)

        if layer.ffn_up_shexp is None:
            return moe_out
        ffn_shexp = self.build_ffn(cur, layer.ffn_up_shexp, None, layer.ffn_up_shexp_s,
                                   layer.ffn_gate_shexp, None, layer.ffn_gate_shexp_s,
                                   layer.ffn_down_shexp, None, layer.ffn_down_shexp_s,
                                   None, FFN_SILU, FFN_PAR, il)
        cb(ffn_shexp, "ffn_shexp", il)

        assert layer.ffn_gate_inp_shexp is not None
        shared_gate = self.build_lora_mm(layer.ffn_gate_inp_shexp, cur)
        cb(shared_gate, "shared_expert_gate", il)

        shared_gate = ggml.sigmoid(ctx0, shared_gate)
        cb(shared_gate, "shared_expert_gate_sigmoid", il)

        ffn_shexp = ggml.mul(ctx0, ffn_shexp, shared_gate)
        cb(ffn_shexp, "ffn_shexp_gated", il)

        cur = ggml.add(ctx0, moe_out, ffn_shexp)
        cb(cur, "ffn_out", il)
        return cur
