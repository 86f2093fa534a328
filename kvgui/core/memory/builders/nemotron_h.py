"""src/models/nemotron-h.cpp: llama_model_nemotron_h::graph (Nemotron-H: each block is a
Mamba-2 mixer, an attention layer or a squared-ReLU MLP, by the file's per-layer head and FFN
counts; llama_memory_hybrid whose filters leave the MLP blocks with neither KV nor state)."""

from __future__ import annotations

import math

from kvgui.core.memory.builders import hparams as hp_mod
from kvgui.core.memory.builders.common import (
    FFN_PAR,
    FFN_RELU_SQR,
    NORM_RMS,
    InpAttnKV,
    InpAttnKVIswa,
    Result,
)
from kvgui.core.memory.builders.hparams import GATING_SIGMOID, Hparams
from kvgui.core.memory.builders.mamba_base import MambaBase
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Tensor
from kvgui.core.model.info import ModelInfo

EMBEDDINGS_NEXTN_MASKED = False  # cparams.embeddings_nextn_masked (llama_context's default)


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: the SSM sizes, the MoE options (nemotron_h_moe shares this graph)."""
    hp_mod.ssm_hparams(hp)
    hp.n_ff_shexp = hp.key_int("expert_shared_feed_forward_length")
    hp.expert_weights_norm = bool(hp.key("expert_weights_norm", False))
    hp.expert_weights_scale = hp.key_float("expert_weights_scale", 0.0)


class NemotronHGraph(MambaBase):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k()

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)
        self.gf.expand(inpL)

        inp = self.build_inp_mem_hybrid()

        inp_out_ids = self.build_inp_out_ids()
        extract_final_inp = False  # cparams.embeddings_layer_inp is empty

        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            if hp.is_recr(il):
                cur = self.build_mamba2_layer(inp.get_recr(), cur, il)
            elif hp.n_ff(il) == 0:
                cur = self.build_attention_layer(cur, inp.get_attn(), n_embd_head, il)
            else:
                cur = self.build_ffn_layer(cur, il)

            if il == self.n_layer - 1 and EMBEDDINGS_NEXTN_MASKED and not extract_final_inp:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)

            # add residual
            cur = ggml.add(ctx0, cur, inpSA)
            cb(cur, "nemotron_h_block_out", il)

            inpL = cur

        cur = inpL

        cur = self.build_norm(cur, model.output_norm, None, NORM_RMS, -1)

        # seed for the MTP/NextN draft head
        cb(cur, "h_nextn", -1)
        self.res.t_h_nextn = cur

        if not EMBEDDINGS_NEXTN_MASKED:
            cur = ggml.get_rows(ctx0, cur, inp_out_ids)

        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)
        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)

    def build_attention_layer(self, cur: Tensor, inp_attn: InpAttnKV | InpAttnKVIswa,
                              n_embd_head: int, il: int) -> Tensor:
        hp = self.hparams
        layer = self.model.layers[il]
        Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, hp.n_head(il),
                                          hp.n_head_kv(il), il)
        kq_scale = 1.0 / math.sqrt(n_embd_head) if hp.f_attention_scale == 0.0 \
            else hp.f_attention_scale
        cur = self.build_attn(inp_attn, layer.wo, layer.wo_b, layer.wo_s, Qcur, Kcur, Vcur,
                              None, None, None, kq_scale, il)
        self.cb(cur, "attn_out", il)
        return cur

    def build_ffn_layer(self, cur: Tensor, il: int) -> Tensor:
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        layer = self.model.layers[il]
        if layer.ffn_gate_inp is None:
            cur = self.build_ffn(cur, layer.ffn_up, layer.ffn_up_b, layer.ffn_up_s,
                                 None, None, None,
                                 layer.ffn_down, layer.ffn_down_b, layer.ffn_down_s,
                                 None, FFN_RELU_SQR, FFN_PAR, il)
            cb(cur, "ffn_out", il)
        else:
            inp_emb = cur
            inp_latent = cur
            if layer.ffn_latent_down is not None:
                inp_latent = ggml.mul_mat(ctx0, layer.ffn_latent_down, cur)

            router_logits = self.build_lora_mm(layer.ffn_gate_inp, cur)
            cb(router_logits, "ffn_moe_logits", il)

            assert layer.ffn_down_exps is not None
            moe_out = self.build_moe_ffn(inp_latent, layer.ffn_gate_inp, None,
                                         layer.ffn_up_exps, None, None, None,
                                         layer.ffn_down_exps, None, layer.ffn_exp_probs_b,
                                         self.n_expert, hp.n_expert_used(il),
                                         FFN_RELU_SQR, hp.expert_weights_norm,
                                         hp.expert_weights_scale, GATING_SIGMOID, il,
                                         router_logits, None,
                                         layer.ffn_up_exps_s, None, layer.ffn_down_exps_s)
            cb(moe_out, "ffn_moe_out", il)

            if layer.ffn_latent_up is not None:
                moe_out = ggml.mul_mat(ctx0, layer.ffn_latent_up, moe_out)

            ffn_shexp = self.build_ffn(inp_emb, layer.ffn_up_shexp, None, layer.ffn_up_shexp_s,
                                       None, None, None,
                                       layer.ffn_down_shexp, None, layer.ffn_down_shexp_s,
                                       None, FFN_RELU_SQR, FFN_PAR, il)
            cb(ffn_shexp, "ffn_shexp", il)

            cur = ggml.add(ctx0, moe_out, ffn_shexp)
            cb(cur, "ffn_out", il)

        cur = self.build_cvec(cur, il)
        cb(cur, "l_out", il)
        return cur
