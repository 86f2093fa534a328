"""src/models/ernie4-5.cpp: llama_model_ernie4_5::graph (ERNIE 4.5 dense, 0.3B: llama's
layers; the attention output bias is loaded but never added)."""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import FFN_PAR, FFN_SILU, NORM_RMS, GraphContext, Result
from kvgui.core.memory.graph import ops as ggml


class Ernie45Graph(GraphContext):
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

        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            # norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self-attention
            Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, self.n_head,
                                              self.n_head_kv, il)

            Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, None)
            Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, None)

            cb(Qcur, "Qcur", il)
            cb(Kcur, "Kcur", il)
            cb(Vcur, "Vcur", il)

            # (load_arch_tensors loads the optional wo_b; the graph never adds it)
            _ = layer.wo_b
            cur = self.build_attn(inp_attn, layer.wo, None, layer.wo_s, Qcur, Kcur, Vcur,
                                  None, None, None, 1.0 / math.sqrt(n_embd_head), il)

            if il == self.n_layer - 1:
                # skip computing output for unused tokens
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)
            ffn_inp = ggml.add(ctx0, cur, inpSA)
            cb(ffn_inp, "ffn_inp", il)

            # feed-forward network
            cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            cur = self.build_ffn(cur,
                                 layer.ffn_up, None, None,
                                 layer.ffn_gate, None, None,
                                 layer.ffn_down, None, None,
                                 None, FFN_SILU, FFN_PAR, il)
            cb(cur, "ffn_out", il)

            cur = ggml.add(ctx0, cur, ffn_inp)

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
