"""src/models/olmo2.cpp: llama_model_olmo2::graph<iswa> (OLMo 2 and Olmo 3, one architecture
in llama.cpp: q/k norms over the whole projection before the heads are split, post-attention
and post-FFN norms only; Olmo 3 slides three layers in four, llama_kv_cache_iswa)."""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import FFN_PAR, FFN_SILU, NORM_RMS, GraphContext, Result
from kvgui.core.memory.graph import ops as ggml


class Olmo2Graph(GraphContext):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        # build_arch_graph: graph<true> when load_arch_hparams found sliding_window > 0
        iswa = hp.n_swa > 0
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k() and n_embd_head == self.n_rot
        n_tokens = self.n_tokens

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        inp_attn = self.build_attn_inp_kv_iswa() if iswa else self.build_attn_inp_kv()

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            cur = inpL

            # self_attention
            Qcur, Kcur, Vcur = self.build_qkv_heads(layer, cur, n_embd_head, self.n_head,
                                                    n_embd_head, self.n_head_kv,
                                                    n_embd_head, self.n_head_kv,
                                                    il, False)
            cb(Qcur, "Qcur", il)
            cb(Kcur, "Kcur", il)
            cb(Vcur, "Vcur", il)

            Qcur = self.build_norm(Qcur, layer.attn_q_norm, None, NORM_RMS, il)
            cb(Qcur, "Qcur_normed", il)

            Kcur = self.build_norm(Kcur, layer.attn_k_norm, None, NORM_RMS, il)
            cb(Kcur, "Kcur_normed", il)

            Qcur = ggml.reshape_3d(ctx0, Qcur, n_embd_head, self.n_head, n_tokens)
            Kcur = ggml.reshape_3d(ctx0, Kcur, n_embd_head, self.n_head_kv, n_tokens)
            Vcur = ggml.reshape_3d(ctx0, Vcur, n_embd_head, self.n_head_kv, n_tokens)

            # (sliding layers rope without yarn scaling: other parameters, the same op)
            Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, None)
            Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, None)
            cb(Qcur, "Qcur", il)
            cb(Kcur, "Kcur", il)
            cb(Vcur, "Vcur", il)

            cur = self.build_attn(inp_attn, layer.wo, None, layer.wo_s, Qcur, Kcur, Vcur,
                                  None, None, None, 1.0 / math.sqrt(n_embd_head), il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)
            cur = self.build_norm(cur, layer.attn_post_norm, None, NORM_RMS, il)
            cb(cur, "attn_post_norm", il)

            ffn_inp = ggml.add(ctx0, cur, inpSA)
            cb(ffn_inp, "ffn_inp", il)

            # feed-forward network
            cur = self.build_ffn(ffn_inp,
                                 layer.ffn_up, None, None,
                                 layer.ffn_gate, None, None,
                                 layer.ffn_down, None, None,
                                 None, FFN_SILU, FFN_PAR, il)
            cb(cur, "ffn_out", il)

            cur = self.build_norm(cur, layer.ffn_post_norm, None, NORM_RMS, -1)
            cb(cur, "ffn_post_norm", -1)

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
