"""src/models/command-r.cpp: llama_model_command_r::graph (Command R, Command R+, Aya: a
parallel block -- attention and FFN both read the one LayerNorm; q/k LayerNorms for models of
64 layers or more; output tied to token_embd, logits scaled)."""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import FFN_PAR, FFN_SILU, NORM, GraphContext, Result
from kvgui.core.memory.graph import ops as ggml


class CommandRGraph(GraphContext):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k()

        f_logit_scale = hp.key_float("logit_scale", 0.0)  # load_arch_hparams: optional

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        inp_attn = self.build_attn_inp_kv()

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]

            # norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM, il)
            cb(cur, "attn_norm", il)

            ffn_inp = cur

            # self-attention: compute Q and K and RoPE them
            Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, self.n_head,
                                              self.n_head_kv, il)

            # (the q/k norms are loaded only for n_layer >= 64)
            attn_q_norm = layer.attn_q_norm if self.n_layer >= 64 else None
            attn_k_norm = layer.attn_k_norm if self.n_layer >= 64 else None
            if attn_q_norm is not None:
                Qcur = self.build_norm(Qcur, attn_q_norm, None, NORM, il)
                cb(Qcur, "Qcur", il)
            Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, None)

            if attn_k_norm is not None:
                Kcur = self.build_norm(Kcur, attn_k_norm, None, NORM, il)
                cb(Kcur, "Kcur", il)
            Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, None)

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
                                 layer.ffn_up, None, None,
                                 layer.ffn_gate, None, None,
                                 layer.ffn_down, None, None,
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
