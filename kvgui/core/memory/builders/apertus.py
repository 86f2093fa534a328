"""src/models/apertus.cpp: llama_model_apertus::graph (Apertus: q/k norms, an ungated FFN
with the xIELU activation)."""

from __future__ import annotations

import math
from typing import ClassVar

from kvgui.core.memory.builders.common import NORM_RMS, GraphContext, Result
from kvgui.core.memory.graph import ops as ggml


class ApertusGraph(GraphContext):
    layer_names: ClassVar[dict[str, str]] = {"attn_q_norm_b": "attn_q_norm.bias",
                                             "attn_k_norm_b": "attn_k_norm.bias"}

    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k() and n_embd_head == self.n_rot

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        inp_pos = self.build_inp_pos()
        inp_attn = self.build_attn_inp_kv()

        kq_scale = 1.0 / math.sqrt(n_embd_head) if hp.f_attention_scale == 0.0 \
            else hp.f_attention_scale

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self-attention
            rope_factors = model.get_rope_factors(il)

            # compute Q and K and RoPE them
            Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, self.n_head,
                                              self.n_head_kv, il)

            # (the optional q/k norm biases are loaded but not added)
            _ = layer.attn_q_norm_b, layer.attn_k_norm_b
            Qcur = self.build_norm(Qcur, layer.attn_q_norm, None, NORM_RMS, il)
            cb(Qcur, "Qcur_normed", il)

            Kcur = self.build_norm(Kcur, layer.attn_k_norm, None, NORM_RMS, il)
            cb(Kcur, "Kcur_normed", il)

            Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, rope_factors)
            Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, rope_factors)

            cb(Qcur, "Qcur_pos", il)
            cb(Kcur, "Kcur_pos", il)
            cb(Vcur, "Vcur_pos", il)

            cur = self.build_attn(inp_attn, layer.wo, layer.wo_b, layer.wo_s, Qcur, Kcur, Vcur,
                                  None, None, None, kq_scale, il)
            cb(cur, "attn_out", il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)

            ffn_inp = ggml.add(ctx0, cur, inpSA)
            cb(ffn_inp, "ffn_inp", il)

            # feed-forward network with xIELU activation
            cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            # Up projection
            assert layer.ffn_up is not None and layer.ffn_down is not None
            up = self.build_lora_mm(layer.ffn_up, cur)
            cb(up, "ffn_up", il)

            # Apply xIELU activation (its four parameters change nothing planned)
            activated = ggml.xielu(ctx0, up, 0.0, 0.0, 0.0, 0.0)
            cb(activated, "ffn_xielu", il)

            # Down projection
            cur = self.build_lora_mm(layer.ffn_down, activated)
            cb(cur, "ffn_down", il)

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
