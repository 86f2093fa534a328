"""src/models/granite-hybrid.cpp: llama_model_granite_hybrid::graph (Granite 4.0 H: Mamba-2
layers with an attention layer where the file gives KV heads, Granite's residual / logit
scales, a dense FFN or a routed MoE with a shared expert; llama_memory_hybrid)."""

from __future__ import annotations

import math

from kvgui.core.memory.builders import hparams as hp_mod
from kvgui.core.memory.builders.common import (
    FFN_PAR,
    FFN_SILU,
    NORM_RMS,
    InpAttnKV,
    InpAttnKVIswa,
    Result,
)
from kvgui.core.memory.builders.hparams import GATING_SOFTMAX, Hparams
from kvgui.core.memory.builders.mamba_base import MambaBase
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Tensor
from kvgui.core.model.info import ModelInfo


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: logit and residual scales, the SSM sizes, the shared expert; rope
    on every layer unless rope.scaling.finetuned is false (rope_pattern)."""
    hp.f_logit_scale = hp.key_float("logit_scale", 0.0)
    hp.f_residual_scale = hp.key_float("residual_scale", 0.0)
    hp_mod.ssm_hparams(hp)
    hp.n_ff_shexp = hp.key_int("expert_shared_feed_forward_length")


def has_rope(hp: Hparams, il: int) -> bool:
    """llama_hparams::has_rope: rope_pattern, filled with rope.scaling.finetuned."""
    return bool(hp.key("rope.scaling.finetuned", True))


class GraniteHybridGraph(MambaBase):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k()

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        inp = self.build_inp_mem_hybrid()

        inp_out_ids = self.build_inp_out_ids()

        # positional embeddings populated if rope enabled
        inp_pos = self.build_inp_pos() if has_rope(hp, 0) else None

        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            if hp.is_recr(il):
                cur = self.build_mamba2_layer(inp.get_recr(), cur, il)
            else:
                cur = self.build_attention_layer(cur, inp_pos, inp.get_attn(), n_embd_head, il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)

            cur = self.build_layer_ffn(cur, inpSA, il)

            inpL = cur

        cur = inpL

        cur = self.build_norm(cur, model.output_norm, None, NORM_RMS, -1)
        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)

        # Granite: scale the logits
        if hp.f_logit_scale:
            cur = ggml.scale(ctx0, cur, 1.0 / hp.f_logit_scale)
        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)

    def build_attention_layer(self, cur: Tensor, inp_pos: Tensor | None,
                              inp_attn: InpAttnKV | InpAttnKVIswa, n_embd_head: int,
                              il: int) -> Tensor:
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        layer = self.model.layers[il]
        Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, hp.n_head(il),
                                          hp.n_head_kv(il), il)

        if has_rope(hp, il):
            assert inp_pos is not None
            rope_factors = layer.rope_freqs
            Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, rope_factors)
            Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, rope_factors)

        cb(Qcur, "Qcur", il)
        cb(Kcur, "Kcur", il)
        cb(Vcur, "Vcur", il)

        kq_scale = 1.0 / math.sqrt(n_embd_head) if hp.f_attention_scale == 0.0 \
            else hp.f_attention_scale
        cur = self.build_attn(inp_attn, layer.wo, layer.wo_b, layer.wo_s, Qcur, Kcur, Vcur,
                              None, None, None, kq_scale, il)
        cb(cur, "attn_out", il)
        return cur

    def build_layer_ffn(self, cur: Tensor, inpSA: Tensor, il: int) -> Tensor:
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        layer = self.model.layers[il]

        # Granite: scale the residual
        if hp.f_residual_scale:
            cur = ggml.scale(ctx0, cur, hp.f_residual_scale)
        ffn_inp = ggml.add(ctx0, cur, inpSA)
        cb(ffn_inp, "ffn_inp", il)

        if layer.ffn_gate_inp is None:
            cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)
            cur = self.build_ffn(cur, layer.ffn_up, layer.ffn_up_b, None,
                                 layer.ffn_gate, layer.ffn_gate_b, None,
                                 layer.ffn_down, layer.ffn_down_b, None,
                                 None, FFN_SILU, FFN_PAR, il)
            cb(cur, "ffn_out", il)
        else:
            cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)
            assert layer.ffn_down_exps is not None
            moe_out = self.build_moe_ffn(cur, layer.ffn_gate_inp, None,
                                         layer.ffn_up_exps, None, layer.ffn_gate_exps, None,
                                         layer.ffn_down_exps, None, None,
                                         self.n_expert, self.n_expert_used,
                                         FFN_SILU, True, hp.expert_weights_scale,
                                         GATING_SOFTMAX, il)
            cb(moe_out, "ffn_moe_out", il)

            # Granite MoE Shared
            if hp.n_ff_shexp > 0:
                ffn_shexp = self.build_ffn(cur, layer.ffn_up_shexp, None, None,
                                           layer.ffn_gate_shexp, None, None,
                                           layer.ffn_down_shexp, None, None,
                                           None, FFN_SILU, FFN_PAR, il)
                cb(ffn_shexp, "ffn_shexp", il)
                cur = ggml.add(ctx0, moe_out, ffn_shexp)
                cb(cur, "ffn_out", il)
            else:
                cur = moe_out

        # Granite: scale the residual
        if hp.f_residual_scale:
            cur = ggml.scale(ctx0, cur, hp.f_residual_scale)
        cur = ggml.add(ctx0, cur, ffn_inp)
        cb(cur, "ffn_out", il)

        cur = self.build_cvec(cur, il)
        cb(cur, "l_out", il)
        return cur
