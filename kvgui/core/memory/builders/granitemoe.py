"""src/models/granite.cpp: llama_model_granite::graph, which granite-moe.cpp's
llama_model_granite_moe uses as its graph (``using graph = llama_model_granite::graph``):
muP scales (embedding, attention, residual, logits), routed experts with an optional shared
expert (Granite MoE Shared), dense FFN layers when the file has no experts.

Granite MoE's load_arch_hparams leaves rope_pattern at its default (every layer ropes:
hparams.has_rope is true) and has no deepstack mapping (deepstack_mapping_arr is empty, so
no layer adds a projector stream). Dense Granite (granite.cpp's own load_arch_hparams, with
rope_finetuned and Granite Vision's deepstack) is not built here.
"""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import (
    FFN_PAR,
    FFN_SILU,
    NORM_RMS,
    GraphContext,
    InpAttnKV,
    Result,
)
from kvgui.core.memory.builders.hparams import GATING_SOFTMAX, Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Tensor
from kvgui.core.model.info import ModelInfo


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """llama_model_granite_moe::load_arch_hparams (the muP scales; the shared expert)."""
    hp.f_logit_scale = hp.key_float("logit_scale")
    hp.f_residual_scale = hp.key_float("residual_scale")
    hp.n_ff_shexp = hp.key_int("expert_shared_feed_forward_length")


class GraniteGraph(GraphContext):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k() and n_embd_head == self.n_rot

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # inp_pos - built only if rope enabled (hparams.has_rope(0): always for Granite MoE)
        inp_pos = self.build_inp_pos()
        inp_attn = self.build_attn_inp_kv()

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            # (no deepstack_mapping_arr: no projector stream is injected)
            inpSA = inpL

            # norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self-attention
            cur = self.build_attention_layer(cur, inp_pos, inp_attn, n_embd_head, il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)
            # ffn
            cur = self.build_layer_ffn(cur, inpSA, il)

            # input for next layer
            inpL = cur
        cur = inpL

        cur = self.build_norm(cur, model.output_norm, None, NORM_RMS, -1)

        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        # lm_head
        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)

        # For Granite architectures - scale logits
        cur = ggml.scale(ctx0, cur, 1.0 / hp.f_logit_scale if hp.f_logit_scale else math.inf)
        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)

    def build_attention_layer(self, cur: Tensor, inp_pos: Tensor, inp_attn: InpAttnKV,
                              n_embd_head: int, il: int) -> Tensor:
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        layer = self.model.layers[il]
        Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, hp.n_head(il),
                                          hp.n_head_kv(il), il)

        rope_factors = layer.rope_freqs  # (no LongRoPE file in this family)
        Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, rope_factors)
        Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, rope_factors)

        cb(Qcur, "Qcur", il)
        cb(Kcur, "Kcur", il)
        cb(Vcur, "Vcur", il)

        kq_scale = 1.0 / math.sqrt(n_embd_head) if hp.f_attention_scale == 0.0 \
            else hp.f_attention_scale
        cur = self.build_attn(inp_attn, layer.wo, layer.wo_b, layer.wo_s, Qcur, Kcur, Vcur,
                              None, None, None, kq_scale, il)
        cb(cur, "attn_out", il)
        return cur

    def build_layer_ffn(self, cur: Tensor, inpSA: Tensor, il: int) -> Tensor:
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        layer = self.model.layers[il]

        # For Granite architectures - scale residual
        if hp.f_residual_scale:
            cur = ggml.scale(ctx0, cur, hp.f_residual_scale)
        ffn_inp = ggml.add(ctx0, cur, inpSA)
        cb(ffn_inp, "ffn_inp", il)

        if layer.ffn_gate_inp is None:
            # feed-forward network (non-MoE)
            cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            cur = self.build_ffn(cur,
                                 layer.ffn_up, layer.ffn_up_b, None,
                                 layer.ffn_gate, layer.ffn_gate_b, None,
                                 layer.ffn_down, layer.ffn_down_b, None,
                                 None, FFN_SILU, FFN_PAR, il)
            cb(cur, "ffn_out", il)
        else:
            # MoE branch
            cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            assert layer.ffn_up_exps is not None and layer.ffn_down_exps is not None
            moe_out = self.build_moe_ffn(cur, layer.ffn_gate_inp, None,
                                         layer.ffn_up_exps, None,
                                         layer.ffn_gate_exps, None,
                                         layer.ffn_down_exps, None, None,
                                         self.n_expert, self.n_expert_used,
                                         FFN_SILU, True, hp.expert_weights_scale,
                                         GATING_SOFTMAX, il)
            cb(moe_out, "ffn_moe_out", il)

            # For Granite MoE Shared
            if hp.n_ff_shexp > 0:
                ffn_shexp = self.build_ffn(cur,
                                           layer.ffn_up_shexp, None, None,
                                           layer.ffn_gate_shexp, None, None,
                                           layer.ffn_down_shexp, None, None,
                                           None, FFN_SILU, FFN_PAR, il)
                cb(ffn_shexp, "ffn_shexp", il)

                cur = ggml.add(ctx0, moe_out, ffn_shexp)
                cb(cur, "ffn_out", il)
            else:
                cur = moe_out

        # For Granite architectures - scale residual
        if hp.f_residual_scale:
            cur = ggml.scale(ctx0, cur, hp.f_residual_scale)
        cur = ggml.add(ctx0, cur, ffn_inp)
        cb(cur, "ffn_out", il)

        cur = self.build_cvec(cur, il)
        cb(cur, "l_out", il)

        return cur
