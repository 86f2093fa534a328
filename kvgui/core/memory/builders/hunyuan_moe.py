"""src/models/hunyuan-moe.cpp: llama_model_hunyuan_moe::graph (Hunyuan-A13B: q/k norms
after the RoPE, a dense "shared" FFN beside the routed experts in every layer)."""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import FFN_PAR, FFN_SILU, NORM_RMS, GraphContext, Result
from kvgui.core.memory.builders.hparams import GATING_SOFTMAX
from kvgui.core.memory.graph import ops as ggml


class HunyuanMoeGraph(GraphContext):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k() and n_embd_head == self.n_rot

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        inp_attn = self.build_attn_inp_kv()

        kq_scale = 1.0 / math.sqrt(n_embd_head)

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            # norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self-attention
            # rope freq factors for llama3; may return nullptr for llama2 and other models
            rope_factors = layer.rope_freqs

            # compute Q and K and RoPE them
            Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, self.n_head,
                                              self.n_head_kv, il)

            Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, rope_factors)

            cb(Qcur, "Qcur", il)
            cb(Kcur, "Kcur", il)
            cb(Vcur, "Vcur", il)

            Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, rope_factors)

            Kcur = self.build_norm(Kcur, layer.attn_k_norm, None, NORM_RMS, il)
            cb(Kcur, "Kcur_norm", il)

            Qcur = self.build_norm(Qcur, layer.attn_q_norm, None, NORM_RMS, il)
            cb(Qcur, "Qcur_norm", il)

            cur = self.build_attn(inp_attn, layer.wo, layer.wo_b, layer.wo_s, Qcur, Kcur, Vcur,
                                  None, None, None, kq_scale, il)
            cb(cur, "attn_out", il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)
            ffn_inp = ggml.add(ctx0, cur, inpSA)
            cb(ffn_inp, "ffn_inp", il)

            cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            # feed-forward network (non-MoE)
            cur_mlp = self.build_ffn(cur,
                                     layer.ffn_up_shexp, None, None,
                                     layer.ffn_gate_shexp, None, None,
                                     layer.ffn_down_shexp, None, None,
                                     None, FFN_SILU, FFN_PAR, il)
            cb(cur_mlp, "ffn_mlp", il)

            # MoE branch
            assert layer.ffn_gate_inp is not None and layer.ffn_down_exps is not None
            cur_moe = self.build_moe_ffn(cur, layer.ffn_gate_inp, None,
                                         layer.ffn_up_exps, None,
                                         layer.ffn_gate_exps, None,
                                         layer.ffn_down_exps, None, None,
                                         self.n_expert, self.n_expert_used,
                                         FFN_SILU, True,  # norm_topk_prob
                                         hp.expert_weights_scale, GATING_SOFTMAX, il)
            cb(cur_moe, "ffn_moe_out", il)

            ffn_out = ggml.add(ctx0, cur_moe, cur_mlp)
            cb(ffn_out, "ffn_out", il)

            cur = ggml.add(ctx0, ffn_out, ffn_inp)

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
