"""src/models/openai-moe.cpp: llama_model_openai_moe::graph (gpt-oss: attention sinks,
sliding-window layers, biased experts with the OAI SwiGLU)."""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import FFN_SWIGLU_OAI_MOE, NORM_RMS, GraphContext, Result
from kvgui.core.memory.builders.hparams import GATING_SOFTMAX_WEIGHT
from kvgui.core.memory.graph import ops as ggml

EMBEDDINGS_NEXTN_MASKED = False  # cparams.embeddings_nextn_masked (llama-cli's default)


class OpenaiMoeGraph(GraphContext):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        inp_attn = self.build_attn_inp_kv_iswa()

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            # norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self-attention: compute Q and K and RoPE them
            Qcur, Kcur, Vcur = self.build_qkv(layer, cur, self.n_rot, self.n_head,
                                              self.n_head_kv, il)

            Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, None)
            Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, None)

            cb(Qcur, "Qcur", il)
            cb(Kcur, "Kcur", il)
            cb(Vcur, "Vcur", il)

            cur = self.build_attn(inp_attn, layer.wo, layer.wo_b, layer.wo_s, Qcur, Kcur, Vcur,
                                  None, layer.attn_sinks, None, 1.0 / math.sqrt(self.n_rot), il)

            cb(cur, "attn_out", il)

            if il == self.n_layer - 1 and EMBEDDINGS_NEXTN_MASKED:
                # skip computing output for unused tokens
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)
            ffn_inp = ggml.add(ctx0, cur, inpSA)
            cb(ffn_inp, "ffn_inp", il)

            cur = ffn_inp
            cur = self.build_norm(cur, layer.attn_post_norm, None, NORM_RMS, il)
            cb(cur, "attn_post_norm", il)

            # MoE branch
            assert layer.ffn_gate_inp is not None and layer.ffn_up_exps is not None
            assert layer.ffn_down_exps is not None
            cur = self.build_moe_ffn(cur,
                                     layer.ffn_gate_inp, layer.ffn_gate_inp_b,
                                     layer.ffn_up_exps, layer.ffn_up_exps_b,
                                     layer.ffn_gate_exps, layer.ffn_gate_exps_b,
                                     layer.ffn_down_exps, layer.ffn_down_exps_b,
                                     None,
                                     self.n_expert, self.n_expert_used,
                                     FFN_SWIGLU_OAI_MOE, False, hp.expert_weights_scale,
                                     GATING_SOFTMAX_WEIGHT, il)
            cb(cur, "ffn_moe_out", il)

            cur = ggml.add(ctx0, cur, ffn_inp)

            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

            # input for next layer
            inpL = cur
        cur = inpL

        self.res.t_h_nextn = cur

        if not EMBEDDINGS_NEXTN_MASKED:
            cur = ggml.get_rows(ctx0, cur, inp_out_ids)

        cur = self.build_norm(cur, model.output_norm, None, NORM_RMS, -1)

        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        # lm_head
        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)

        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)
