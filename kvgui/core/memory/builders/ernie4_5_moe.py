"""src/models/ernie4-5-moe.cpp: llama_model_ernie4_5_moe::graph (ERNIE 4.5 MoE: dense lead
layers, then experts every n_moe_layer_step-th layer with an optional exp_probs_b and shared
experts). Its hparams come from ernie4-5.cpp's load_arch_hparams."""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import FFN_PAR, FFN_SILU, NORM_RMS, GraphContext, Result
from kvgui.core.memory.builders.hparams import GATING_SOFTMAX, Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.model.info import ModelInfo


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """llama_model_ernie4_5::load_arch_hparams, the LLM_ARCH_ERNIE4_5_MOE part."""
    hp.n_ff_shexp = hp.key_int("expert_shared_feed_forward_length")
    hp.n_moe_layer_step = hp.key_int("interleave_moe_layer_step")
    hp.n_layer_dense_lead = hp.key_int("leading_dense_block_count")


class Ernie45MoeGraph(GraphContext):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k() and n_embd_head == self.n_rot

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        inp_attn = self.build_attn_inp_kv()

        inp_out_ids = self.build_inp_out_ids()

        assert hp.n_moe_layer_step > 0, "Ernie 4.5 MoE requires n_moe_layer_step > 0"
        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL
            # norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self-attention: compute Q and K and RoPE them
            Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, self.n_head,
                                              self.n_head_kv, il)

            Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, None)
            Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, None)

            cb(Qcur, "Qcur", il)
            cb(Kcur, "Kcur", il)
            cb(Vcur, "Vcur", il)

            cur = self.build_attn(inp_attn, layer.wo, None, layer.wo_s, Qcur, Kcur, Vcur,
                                  None, None, None, 1.0 / math.sqrt(n_embd_head), il)
            cb(cur, "attn_out", il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)
            ffn_inp = ggml.add(ctx0, cur, inpSA)
            cb(ffn_inp, "ffn_inp", il)

            # feed-forward network
            is_moe_layer = il >= hp.n_layer_dense_lead and (il + 1) % hp.n_moe_layer_step == 0

            if not is_moe_layer:
                cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
                cb(cur, "ffn_norm", il)

                cur = self.build_ffn(cur,
                                     layer.ffn_up, None, None,
                                     layer.ffn_gate, None, None,
                                     layer.ffn_down, None, None,
                                     None, FFN_SILU, FFN_PAR, il)
                cb(cur, "ffn_out", il)
            else:
                # MoE branch
                cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
                cb(cur, "ffn_norm", il)

                assert layer.ffn_gate_inp is not None and layer.ffn_down_exps is not None
                moe_out = self.build_moe_ffn(cur, layer.ffn_gate_inp, None,
                                             layer.ffn_up_exps, None,
                                             layer.ffn_gate_exps, None,
                                             layer.ffn_down_exps, None,
                                             layer.ffn_exp_probs_b,
                                             self.n_expert, self.n_expert_used,
                                             FFN_SILU, True, hp.expert_weights_scale,
                                             GATING_SOFTMAX, il)
                cb(moe_out, "ffn_moe_out", il)

                # Shared expert (if present)
                if hp.n_ff_shexp > 0:
                    ffn_shexp = self.build_ffn(cur,
                                               layer.ffn_up_shexp, None, None,
                                               layer.ffn_gate_shexp, None, None,
                                               layer.ffn_down_shexp, None, None,
                                               None, FFN_SILU, FFN_PAR, il)
                    cb(ffn_shexp, "ffn_shexp", il)

                    cur = ggml.add(ctx0, moe_out, ffn_shexp)
                else:
                    cur = moe_out
                cb(cur, "ffn_out", il)
            cur = ggml.add(ctx0, cur, ffn_inp)
            cb(cur, "ffn_out", il)

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
