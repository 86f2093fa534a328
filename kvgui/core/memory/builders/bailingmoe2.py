"""src/models/bailingmoe2.cpp: llama_model_bailingmoe2::graph (Ling / Ring 2.0: a fused
attn_qkv, q/k norms, dense lead layers, sigmoid-routed experts with exp_probs_b and expert
groups, shared experts). Its NextN layers are loaded with TENSOR_SKIP and never built: the
loop stops at n_layer."""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import FFN_PAR, FFN_SILU, NORM_RMS, GraphContext, Result
from kvgui.core.memory.builders.dots1 import hparams as dots1_hparams
from kvgui.core.memory.builders.hparams import Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.model.info import ModelInfo


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: dots1's MoE keys (expert_gating_func is required here)."""
    dots1_hparams(hp, model)


class BailingMoe2Graph(GraphContext):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k()

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        inp_attn = self.build_attn_inp_kv()

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            # norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self_attention
            Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, self.n_head,
                                              self.n_head_kv, il)

            Qcur = self.build_norm(Qcur, layer.attn_q_norm, None, NORM_RMS, il)
            cb(Qcur, "Qcur_normed", il)

            Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, None)

            Kcur = self.build_norm(Kcur, layer.attn_k_norm, None, NORM_RMS, il)
            cb(Kcur, "Kcur_normed", il)

            Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, None)

            cb(Qcur, "Qcur", il)
            cb(Kcur, "Kcur", il)
            cb(Vcur, "Vcur", il)

            cur = self.build_attn(inp_attn, layer.wo, layer.wo_b, layer.wo_s, Qcur, Kcur, Vcur,
                                  None, None, None, 1.0 / math.sqrt(n_embd_head), il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)

            sa_out = ggml.add(ctx0, cur, inpSA)
            cb(sa_out, "sa_out", il)

            # MoE branch
            cur = self.build_norm(sa_out, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            if il < hp.n_layer_dense_lead:
                cur = self.build_ffn(cur,
                                     layer.ffn_up, None, None,
                                     layer.ffn_gate, None, None,
                                     layer.ffn_down, None, None,
                                     None, FFN_SILU, FFN_PAR, il)
                cb(cur, "ffn_out", il)
            else:
                assert layer.ffn_gate_inp is not None and layer.ffn_down_exps is not None
                moe_out = self.build_moe_ffn(cur, layer.ffn_gate_inp, None,
                                             layer.ffn_up_exps, None,
                                             layer.ffn_gate_exps, None,
                                             layer.ffn_down_exps, None,
                                             layer.ffn_exp_probs_b,
                                             self.n_expert, self.n_expert_used,
                                             FFN_SILU, hp.expert_weights_norm,
                                             hp.expert_weights_scale,
                                             hp.expert_gating_func, il)
                cb(moe_out, "ffn_moe_out", il)

                ffn_shexp = self.build_ffn(cur,
                                           layer.ffn_up_shexp, None, None,
                                           layer.ffn_gate_shexp, None, None,
                                           layer.ffn_down_shexp, None, None,
                                           None, FFN_SILU, FFN_PAR, il)
                cb(ffn_shexp, "ffn_shexp", il)

                cur = ggml.add(ctx0, moe_out, ffn_shexp)
                cb(cur, "ffn_out", il)

            cur = ggml.add(ctx0, cur, sa_out)

            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

            # input for next layer
            inpL = cur

        cur = inpL

        cur = self.build_norm(cur, model.output_norm, None, NORM_RMS, -1)

        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        # lm_head
        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)

        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)
