"""src/models/granite.cpp: llama_model_granite::graph (Granite 3.x dense and MoE; MiniCPM and
granitemoe reuse it: models.h ``using graph = llama_model_granite::graph``). muP scales: the
embeddings (build_inp_embd), each residual branch and the logits; RoPE switched per layer by
rope_pattern (granite: every layer iff rope.scaling.finetuned, default true; minicpm: always).

Granite Vision's deepstack injection (``deepstack_mapping``: views of a wider input
embedding, n_embd_inp > n_embd) is not followed: such a file asserts here, and its compute
buffer comes from the stage model."""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import (
    FFN_PAR,
    FFN_SILU,
    NORM_RMS,
    GraphContext,
    InpAttnKV,
    Result,
)
from kvgui.core.memory.builders.hparams import GATING_SOFTMAX, Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Tensor
from kvgui.core.model.info import ModelInfo


def minicpm_hparams(hp: Hparams, model: ModelInfo) -> None:
    """llama_model_minicpm::load_arch_hparams: older MiniCPM files carry no scales, the
    defaults stand in (embedding 12, residual 1.4/sqrt(n_layer), logits 256/n_embd)."""
    hp.f_embedding_scale = hp.key_float("embedding_scale", 12.0)


class GraniteGraph(GraphContext):
    def _residual_scale(self) -> float:
        hp = self.hparams
        default = 1.4 / math.sqrt(hp.n_layer) if hp.arch == "minicpm" else 0.0
        return hp.key_float("residual_scale", default)

    def _logit_scale(self) -> float:
        hp = self.hparams
        if hp.arch == "minicpm":
            return hp.key_float("logit_scale", 256.0 / hp.n_embd if hp.n_embd else 1.0)
        return hp.key_float("logit_scale")  # required for granite

    def _has_rope(self, il: int) -> bool:
        """hparams.has_rope(il): rope_pattern filled with rope_finetuned (granite) or 1
        (minicpm; granitemoe, whose load_arch_hparams never reads rope.scaling.finetuned)."""
        if self.hparams.arch in ("minicpm", "granitemoe"):
            return True
        return bool(self.hparams.key("rope.scaling.finetuned", True))

    def build(self) -> Result:
        hp, model, cb = self.hparams, self.model, self.cb
        ctx0 = self.ctx0
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k() and n_embd_head == self.n_rot
        assert hp.key("deepstack_mapping") is None, "Granite Vision deepstack not followed"

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # inp_pos - built only if rope enabled
        inp_pos = self.build_inp_pos() if self._has_rope(0) else None
        inp_attn = self.build_attn_inp_kv()

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            # norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self-attention
            cur = self.build_attention_layer(cur, inp_pos, inp_attn, n_embd_head, il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)
            # ffn
            cur = self.build_layer_ffn(cur, inpSA, il)

            # input for next layer
            inpL = cur
        cur = inpL

        cur = self.build_norm(cur, model.output_norm, None, NORM_RMS, -1)

        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        # lm_head
        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)

        # For Granite architectures - scale logits
        cur = ggml.scale(ctx0, cur, 1.0 / self._logit_scale())
        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)

    def build_attention_layer(self, cur: Tensor, inp_pos: Tensor | None, inp_attn: InpAttnKV,
                              n_embd_head: int, il: int) -> Tensor:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        layer = model.layers[il]
        Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, hp.n_head(il),
                                          hp.n_head_kv(il), il)

        if self._has_rope(il):
            assert inp_pos is not None
            rope_factors = model.get_rope_factors(il)
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
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        layer = model.layers[il]
        f_residual_scale = self._residual_scale()
        n_ff_shexp = hp.key_int("expert_shared_feed_forward_length", 0)

        # For Granite architectures - scale residual
        if f_residual_scale:
            cur = ggml.scale(ctx0, cur, f_residual_scale)
        ffn_inp = ggml.add(ctx0, cur, inpSA)
        cb(ffn_inp, "ffn_inp", il)

        if layer.ffn_gate_inp is None:
            # feed-forward network (non-MoE)
            cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            cur = self.build_ffn(cur,
                                 layer.ffn_up, layer.ffn_up_b, None,
                                 layer.ffn_gate, layer.ffn_gate_b, None,
                                 layer.ffn_down, layer.ffn_down_b, None,
                                 None, FFN_SILU, FFN_PAR, il)
            cb(cur, "ffn_out", il)
        else:
            # MoE branch
            cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            assert layer.ffn_up_exps is not None and layer.ffn_down_exps is not None
            moe_out = self.build_moe_ffn(cur, layer.ffn_gate_inp, None,
                                         layer.ffn_up_exps, None, layer.ffn_gate_exps, None,
                                         layer.ffn_down_exps, None, None,
                                         self.n_expert, self.n_expert_used,
                                         FFN_SILU, True, hp.expert_weights_scale,
                                         GATING_SOFTMAX, il)
            cb(moe_out, "ffn_moe_out", il)

            # For Granite MoE Shared
            if n_ff_shexp > 0:
                ffn_shexp = self.build_ffn(cur,
                                           layer.ffn_up_shexp, None, None,
                                           layer.ffn_gate_shexp, None, None,
                                           layer.ffn_down_shexp, None, None,
                                           None, FFN_SILU, FFN_PAR, il)
                cb(ffn_shexp, "ffn_shexp", il)

                cur = ggml.add(ctx0, moe_out, ffn_shexp)
                cb(cur, "ffn_out", il)
            else:
                cur = moe_out

        # For Granite architectures - scale residual
        if f_residual_scale:
            cur = ggml.scale(ctx0, cur, f_residual_scale)
        cur = ggml.add(ctx0, cur, ffn_inp)
        cb(cur, "ffn_out", il)

        cur = self.build_cvec(cur, il)
        cb(cur, "l_out", il)

        return cur
