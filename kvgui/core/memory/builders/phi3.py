"""src/models/phi3.cpp: llama_model_phi3::graph<iswa> (Phi-3, Phi-3.5, Phi-4: fused attn_qkv,
ffn_up holding gate and up for one SWIGLU, the query scaled before attention, LongRoPE
factors). load_arch_hparams disables a file's sliding window (swa_type NONE), so the graph is
always graph<false>: one KV cache."""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import FFN_SEQ, FFN_SWIGLU, NORM_RMS, GraphContext, Result
from kvgui.core.memory.graph import ops as ggml


class Phi3Graph(GraphContext):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k()

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        inp_attn = self.build_attn_inp_kv()  # (swa_type is always NONE: graph<false>)
        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            residual = inpL

            # self-attention
            # rope freq factors for 128k context
            rope_factors = model.get_rope_factors(il)

            # (attn_norm_b is not loaded by load_arch_tensors)
            attn_norm_output = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(attn_norm_output, "attn_norm", il)

            Qcur, Kcur, Vcur = self.build_qkv(layer, attn_norm_output, n_embd_head,
                                              self.n_head, self.n_head_kv, il)
            Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, rope_factors)
            Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, rope_factors)

            cb(Qcur, "Qcur", il)
            cb(Kcur, "Kcur", il)
            cb(Vcur, "Vcur", il)

            Qcur = ggml.scale(ctx0, Qcur, 1.0 / math.sqrt(n_embd_head))
            cb(Qcur, "Qcur", il)

            cur = self.build_attn(inp_attn, layer.wo, layer.wo_b, layer.wo_s, Qcur, Kcur, Vcur,
                                  None, None, None, 1.0, il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                residual = ggml.get_rows(ctx0, residual, inp_out_ids)
            cur = ggml.add(ctx0, cur, residual)
            residual = cur

            # (ffn_norm_b is not loaded)
            cur = self.build_norm(cur, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            # feed-forward network (ffn_gate_inp is never loaded for phi3: no MoE branch)
            cur = self.build_ffn(cur,
                                 layer.ffn_up, None, None,
                                 None, None, None,
                                 layer.ffn_down, None, None,
                                 None, FFN_SWIGLU, FFN_SEQ, il)
            cb(cur, "ffn_out", il)

            cur = ggml.add(ctx0, residual, cur)

            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

            # input for next layer
            inpL = cur

        cur = self.build_norm(inpL, model.output_norm, None, NORM_RMS, -1)

        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)
        # (output_b is not loaded)

        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)
