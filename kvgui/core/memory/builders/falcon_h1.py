"""src/models/falcon-h1.cpp: llama_model_falcon_h1::graph (Falcon-H1: every layer runs
attention and a Mamba-2 mixer side by side on the same norm; llama_memory_hybrid whose
attention and recurrent filters both take every layer)."""

from __future__ import annotations

import math
from typing import ClassVar

from kvgui.core.memory.builders import hparams as hp_mod
from kvgui.core.memory.builders.common import FFN_PAR, FFN_SILU, NORM_RMS, Result
from kvgui.core.memory.builders.hparams import Hparams
from kvgui.core.memory.builders.mamba_base import MambaBase
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.model.info import ModelInfo


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: the SSM sizes (every layer recurrent: in the layer rules)."""
    hp_mod.ssm_hparams(hp)


class FalconH1Graph(MambaBase):
    # tn(LLM_TENSOR_FFN_NORM, i): the name has no ".weight"
    layer_names: ClassVar[dict[str, str]] = {"ffn_norm": "ffn_norm"}

    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        # the inputs of the recurrent state and the KV cache
        inp = self.build_inp_mem_hybrid()

        kq_scale = 1.0 / math.sqrt(n_embd_head) if hp.f_attention_scale == 0.0 \
            else hp.f_attention_scale

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self-attention
            Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, self.n_head,
                                              self.n_head_kv, il)

            Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, None)
            Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, None)

            cb(Qcur, "Qcur-post-rope", il)
            cb(Kcur, "Kcur-post-rope", il)
            cb(Vcur, "Vcur-post-rope", il)

            attn_out = self.build_attn(inp.get_attn(), layer.wo, None, layer.wo_s, Qcur, Kcur,
                                       Vcur, None, None, None, kq_scale, il)
            cb(attn_out, "attn_out", il)

            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            # Mamba2 layer
            cb(cur, "ssm_in", il)

            ssm_out = self.build_mamba2_layer(inp.get_recr(), cur, il)
            cb(ssm_out, "ssm_out", il)

            # aggregation
            cur = ggml.add(ctx0, attn_out, ssm_out)
            inpSA = ggml.add(ctx0, cur, inpSA)
            cb(cur, "layer_out", il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)
            ffn_inp = inpSA
            cb(ffn_inp, "ffn_inp", il)

            # feed-forward network
            cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            cur = self.build_ffn(cur, layer.ffn_up, layer.ffn_up_b, None,
                                 layer.ffn_gate, layer.ffn_gate_b, None,
                                 layer.ffn_down, layer.ffn_down_b, None,
                                 None, FFN_SILU, FFN_PAR, il)
            cb(cur, "ffn_out", il)

            cur = ggml.add(ctx0, cur, inpSA)

            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

            inpL = cur
        cur = inpL

        cur = self.build_norm(cur, model.output_norm, None, NORM_RMS, -1)
        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)
        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)
