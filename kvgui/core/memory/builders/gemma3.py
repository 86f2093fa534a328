"""src/models/gemma3.cpp: llama_model_gemma3::graph<iswa> (q/k norms, post-norms, GELU;
llama_kv_cache_iswa when the file has a sliding window)."""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import FFN_GELU, FFN_PAR, NORM_RMS, GraphContext, Result
from kvgui.core.memory.builders.hparams import Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.model.info import ModelInfo


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: no final soft-capping unless the file sets one."""
    hp.f_final_logit_softcapping = hp.key_float("final_logit_softcapping", 0.0)


class Gemma3Graph(GraphContext):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        iswa = hp.n_swa > 0  # build_arch_graph: graph<true> for LLAMA_SWA_TYPE_STANDARD
        n_embd_head = hp.n_embd_head_k()

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # important: do not normalize weights for raw embeddings input
        inpL = ggml.scale(ctx0, inpL, math.sqrt(self.n_embd))
        cb(inpL, "inp_scaled", -1)

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        inp_attn = self.build_attn_inp_kv_iswa() if iswa else self.build_attn_inp_kv()

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]

            # norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self-attention: compute Q and K and RoPE them
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

            Qcur = ggml.scale(ctx0, Qcur, hp.f_attention_scale)

            cur = self.build_attn(inp_attn, layer.wo, None, layer.wo_s, Qcur, Kcur, Vcur,
                                  None, None, None, 1.0, il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpL = ggml.get_rows(ctx0, inpL, inp_out_ids)

            cur = self.build_norm(cur, layer.attn_post_norm, None, NORM_RMS, il)
            cb(cur, "attn_post_norm", il)

            sa_out = ggml.add(ctx0, cur, inpL)
            cb(sa_out, "sa_out", il)

            cur = self.build_norm(sa_out, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            # feed-forward network
            cur = self.build_ffn(cur,
                                 layer.ffn_up, None, None,
                                 layer.ffn_gate, None, None,
                                 layer.ffn_down, None, None,
                                 None, FFN_GELU, FFN_PAR, il)
            cb(cur, "ffn_out", il)

            cur = self.build_norm(cur, layer.ffn_post_norm, None, NORM_RMS, -1)
            cb(cur, "ffn_post_norm", il)

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

        if hp.f_final_logit_softcapping:
            cur = ggml.scale(ctx0, cur, 1.0 / hp.f_final_logit_softcapping)
            cur = ggml.tanh(ctx0, cur)
            cur = ggml.scale(ctx0, cur, hp.f_final_logit_softcapping)

        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)
