"""src/models/glm4.cpp: llama_model_glm4::graph (GLM-4-0414, GLM-4.1V / GLM-OCR text: q/k/v
biases, post-attention and post-MLP norms, ffn_up holding gate and up for one SWIGLU; M-RoPE
when the file has rope sections; a NextN block is loaded but not run)."""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import FFN_SEQ, FFN_SWIGLU, NORM_RMS, GraphContext, Result
from kvgui.core.memory.builders.hparams import Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.model.info import ModelInfo

GGML_MROPE_SECTIONS = 4


def use_mrope(hp: Hparams) -> bool:
    """llama_hparams::use_mrope: rope_sections[0] > 0 && rope_sections[1] > 0."""
    sections = hp.key("rope.dimension_sections")
    if isinstance(sections, (list, tuple)):
        values = [int(v) for v in sections] + [0, 0]
    elif isinstance(sections, (int, float)):
        values = [int(sections)] * GGML_MROPE_SECTIONS  # get_key_or_arr: one value for all
    else:
        values = [0, 0]
    return values[0] > 0 and values[1] > 0


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """llama_model_rope_type: M-RoPE when the file has sections, whose positions are
    n_pos_per_embd (4) per token."""
    if use_mrope(hp):
        hp.n_pos_per_embd_ = GGML_MROPE_SECTIONS


class Glm4Graph(GraphContext):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k()

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        mrope = use_mrope(hp)

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        inp_attn = self.build_attn_inp_kv()

        inp_out_ids = self.build_inp_out_ids()

        # Only process up to last layer (skip final NextN layer)
        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            # Pre-attention norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self-attention
            Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, self.n_head,
                                              self.n_head_kv, il)

            if mrope:
                Qcur = ggml.rope_multi(ctx0, Qcur, inp_pos, None)
                Kcur = ggml.rope_multi(ctx0, Kcur, inp_pos, None)
            else:
                # Normal RoPE
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
            # Post-attention norm (new!)
            cur = self.build_norm(cur, layer.attn_post_norm, None, NORM_RMS, il)
            cb(cur, "post_attn_norm", il)

            # Add the input (residual connection after post-attention norm)
            ffn_inp = ggml.add(ctx0, cur, inpSA)
            cb(ffn_inp, "ffn_inp", il)

            # FF
            # Pre-MLP norm
            cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            # MLP
            cur = self.build_ffn(cur,
                                 layer.ffn_up, None, None,
                                 None, None, None,
                                 layer.ffn_down, None, None,
                                 None, FFN_SWIGLU, FFN_SEQ, il)
            cb(cur, "ffn_out", il)

            # Post-MLP norm
            cur = self.build_norm(cur, layer.ffn_post_norm, None, NORM_RMS, il)
            cb(cur, "post_mlp_norm", il)

            cur = ggml.add(ctx0, cur, ffn_inp)

            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

            # input for next layer
            inpL = cur

        # Final norm
        cur = self.build_norm(inpL, model.output_norm, None, NORM_RMS, -1)

        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        # Output projection
        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)

        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)
