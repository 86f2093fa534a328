"""src/models/cohere2.cpp: llama_model_cohere2::graph (Command R7B, Command A: a parallel
block -- attention and FFN both read the one LayerNorm; three sliding layers in four, RoPE
only on those; llama_kv_cache_iswa; output tied to token_embd, logits scaled)."""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import FFN_PAR, FFN_SILU, NORM, GraphContext, Result
from kvgui.core.memory.graph import ops as ggml


class Cohere2Graph(GraphContext):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k()

        f_logit_scale = hp.key_float("logit_scale", 0.0)  # load_arch_hparams: LLM_KV_LOGIT_SCALE

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        inp_attn = self.build_attn_inp_kv_iswa()

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            is_swa = hp.is_swa(il)

            # norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM, il)
            cb(cur, "attn_norm", il)
            ffn_inp = cur

            # self-attention
            # rope freq factors for 128k context
            rope_factors = model.get_rope_factors(il)

            # compute Q and K and RoPE them
            Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, self.n_head,
                                              self.n_head_kv, il)

            if is_swa:
                Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, rope_factors)
                Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, rope_factors)

            cb(Qcur, "Qcur", il)
            cb(Kcur, "Kcur", il)
            cb(Vcur, "Vcur", il)

            # (wo_b is not loaded)
            cur = self.build_attn(inp_attn, layer.wo, None, layer.wo_s, Qcur, Kcur, Vcur,
                                  None, None, None, 1.0 / math.sqrt(n_embd_head), il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpL = ggml.get_rows(ctx0, inpL, inp_out_ids)
                ffn_inp = ggml.get_rows(ctx0, ffn_inp, inp_out_ids)

            attn_out = cur

            # feed-forward network
            cur = self.build_ffn(ffn_inp,
                                 layer.ffn_up, None, layer.ffn_up_s,
                                 layer.ffn_gate, None, layer.ffn_gate_s,
                                 layer.ffn_down, None, layer.ffn_down_s,
                                 None, FFN_SILU, FFN_PAR, il)
            cb(cur, "ffn_out", il)

            # add together residual + FFN + self-attention
            cur = ggml.add(ctx0, cur, inpL)
            cur = ggml.add(ctx0, cur, attn_out)

            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

            # input for next layer
            inpL = cur

        cur = inpL

        cur = self.build_norm(cur, model.output_norm, None, NORM, -1)

        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        # lm_head (load_arch_tensors: token_embd, duplicated for the output layer)
        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)

        if f_logit_scale:
            cur = ggml.scale(ctx0, cur, f_logit_scale)

        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)
