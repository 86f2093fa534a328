"""src/models/gemma4.cpp: llama_model_gemma4::graph (Gemma 4: per-layer head sizes for the
sliding and full layers, V from K where the file has no V projection, a dense GELU FFN or a
shared-expert MLP beside a routed MoE, optional per-layer embeddings and layer scales;
llama_kv_cache_iswa whose last attention.shared_kv_layers layers read an earlier cache)."""

from __future__ import annotations

import math
from typing import ClassVar

from kvgui.core.memory.builders.common import (
    FFN_GELU,
    FFN_PAR,
    NORM_RMS,
    GraphContext,
    KVCache,
    Result,
)
from kvgui.core.memory.builders.gemma3n import kv_reuse, view_2d_slice
from kvgui.core.memory.builders.hparams import GATING_SOFTMAX, Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Loc, Tensor
from kvgui.core.memory.graph.ops import I32
from kvgui.core.model.info import ModelInfo

EMBEDDINGS_NEXTN_MASKED = False  # cparams.embeddings_nextn_masked (llama_context's default)


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: no pre-attention scaling; the final soft-cap (llama_hparams'
    default 30 unless the file sets one); the per-layer embedding width."""
    hp.f_attention_scale = 1.0
    hp.f_final_logit_softcapping = hp.key_float("final_logit_softcapping", 30.0)


class Gemma4Graph(GraphContext):
    layer_names: ClassVar[dict[str, str]] = {
        "per_layer_inp_gate": "inp_gate.weight", "per_layer_proj": "proj.weight",
        "per_layer_post_norm": "post_norm.weight",
        "out_scale": "layer_output_scale.weight", "ffn_gate_inp_s": "ffn_gate_inp.scale",
        "ffn_pre_norm_2": "pre_ffw_norm_2.weight", "ffn_post_norm_1": "post_ffw_norm_1.weight",
        "ffn_post_norm_2": "post_ffw_norm_2.weight",
    }

    @property
    def n_embd_per_layer(self) -> int:
        return self.hparams.key_int("embedding_length_per_layer_input")

    @property
    def n_layer_kv_from_start(self) -> int:
        hp = self.hparams
        return hp.n_layer_all - hp.key_int("attention.shared_kv_layers")

    def _iswa_memory(self, layers: list[int]) -> tuple[KVCache, KVCache]:
        base, swa = super()._iswa_memory(layers)
        base.reuse = swa.reuse = kv_reuse(self.hparams, self.n_layer_kv_from_start)
        return base, swa

    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd, n_tokens = self.n_embd, self.n_tokens

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # do not normalize weights for raw embeddings input (a reserve has tokens)
        inpL = ggml.scale(ctx0, inpL, math.sqrt(n_embd))
        cb(inpL, "inp_scaled", -1)

        inp_pos = self.build_inp_pos()

        inp_attn = self.build_attn_inp_kv_iswa()

        inp_out_ids = self.build_inp_out_ids()

        inp_per_layer = None
        per_layer_tok_embd = model.tensor("per_layer_token_embd.weight", Loc("input"))
        if per_layer_tok_embd is not None:
            inp_per_layer = self.build_inp_per_layer(per_layer_tok_embd)
            self.gf.expand(inp_per_layer)
            inp_per_layer = self.project_per_layer_inputs(inpL, inp_per_layer)

        for il in self.layers():
            layer = model.layers[il]
            n_embd_head = hp.n_embd_head_k(il)
            assert n_embd_head == hp.n_embd_head_v(il)
            n_head, n_head_kv = hp.n_head(il), hp.n_head_kv(il)

            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # full attention layers use rope_freqs for proportional rope
            freq_factors = layer.rope_freqs if not hp.is_swa(il) else None

            # Q projection (shared by the KV and the non-KV layers)
            qkv_fused = None
            if layer.wqkv is not None:
                qkv_fused = self.build_lora_mm(layer.wqkv, cur, layer.wqkv_s)
                cb(qkv_fused, "wqkv", il)
                q_dim = n_embd_head * n_head
                Qcur = ggml.cont(ctx0, ggml.view_2d(ctx0, qkv_fused, q_dim, n_tokens,
                                                    qkv_fused.nb[1], 0))
            else:
                assert layer.wq is not None
                Qcur = self.build_lora_mm(layer.wq, cur, layer.wq_s)
            cb(Qcur, "Qcur", il)
            Qcur = ggml.reshape_3d(ctx0, Qcur, n_embd_head, n_head, n_tokens)
            Qcur = self.build_norm(Qcur, layer.attn_q_norm, None, NORM_RMS, il)
            cb(Qcur, "Qcur_normed", il)
            Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, freq_factors)
            cb(Qcur, "Qcur_pos", il)

            if hp.has_kv(il):
                if qkv_fused is not None:
                    q_dim = n_embd_head * n_head
                    k_dim = v_dim = n_embd_head * n_head_kv
                    esize = ggml.element_size(qkv_fused)
                    Kcur = ggml.cont(ctx0, ggml.view_2d(ctx0, qkv_fused, k_dim, n_tokens,
                                                        qkv_fused.nb[1], q_dim * esize))
                    Vcur = ggml.cont(ctx0, ggml.view_2d(ctx0, qkv_fused, v_dim, n_tokens,
                                                        qkv_fused.nb[1],
                                                        (q_dim + k_dim) * esize))
                else:
                    assert layer.wk is not None
                    Kcur = self.build_lora_mm(layer.wk, cur, layer.wk_s)
                    # without a v_proj, V is K
                    Vcur = self.build_lora_mm(layer.wv, cur, layer.wv_s) \
                        if layer.wv is not None else Kcur
                cb(Kcur, "Kcur", il)
                cb(Vcur, "Vcur", il)

                Kcur = ggml.reshape_3d(ctx0, Kcur, n_embd_head, n_head_kv, n_tokens)
                Vcur = ggml.reshape_3d(ctx0, Vcur, n_embd_head, n_head_kv, n_tokens)

                Kcur = self.build_norm(Kcur, layer.attn_k_norm, None, NORM_RMS, il)
                Vcur = ggml.rms_norm(ctx0, Vcur, 0.0)
                cb(Kcur, "Kcur_normed", il)
                cb(Vcur, "Vcur_normed", il)

                Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, freq_factors)
                cb(Kcur, "Kcur_pos", il)

                cur = self.build_attn(inp_attn, layer.wo, None, layer.wo_s, Qcur, Kcur, Vcur,
                                      None, None, None, hp.f_attention_scale, il)
            else:
                # reuse the KV cache of an earlier layer (K/V weights the file may still hold
                # are loaded and never read, in llama.cpp as here)
                _ = (layer.wk, layer.wv, layer.attn_k_norm)
                cur = self.build_attn(inp_attn, layer.wo, None, layer.wo_s, Qcur, None, None,
                                      None, None, None, hp.f_attention_scale, il)

            if il == self.n_layer - 1 and EMBEDDINGS_NEXTN_MASKED:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpL = ggml.get_rows(ctx0, inpL, inp_out_ids)
            cur = self.build_norm(cur, layer.attn_post_norm, None, NORM_RMS, il)
            cb(cur, "attn_post_norm", il)

            attn_out = ggml.add(ctx0, cur, inpL)
            cb(attn_out, "attn_out", il)

            if layer.ffn_gate_inp is not None:
                # MLP (shared expert)
                cur_mlp = self.build_norm(attn_out, layer.ffn_norm, None, NORM_RMS, il)
                cb(cur_mlp, "ffn_norm_1", il)
                cur_mlp = self.build_ffn(cur_mlp, layer.ffn_up, None, layer.ffn_up_s,
                                         layer.ffn_gate, None, layer.ffn_gate_s,
                                         layer.ffn_down, None, layer.ffn_down_s,
                                         None, FFN_GELU, FFN_PAR, il)
                cur_mlp = self.build_norm(cur_mlp, layer.ffn_post_norm_1, None, NORM_RMS, il)
                cb(cur_mlp, "ffn_mlp", il)

                # expert FFN
                cur_moe = self.build_norm(attn_out, layer.ffn_pre_norm_2, None, NORM_RMS, il)
                cb(cur_moe, "ffn_norm_2", il)

                # the router reads attn_out, not cur
                tmp = ggml.rms_norm(ctx0, attn_out, 0.0)
                tmp = ggml.scale(ctx0, tmp, 1.0 / math.sqrt(n_embd))
                assert layer.ffn_gate_inp_s is not None
                tmp = ggml.mul(ctx0, tmp, layer.ffn_gate_inp_s)
                logits = self.build_lora_mm(layer.ffn_gate_inp, tmp)
                cb(logits, "ffn_moe_logits", il)

                assert layer.ffn_down_exps is not None
                cur_moe = self.build_moe_ffn(cur_moe, layer.ffn_gate_inp, None,
                                             layer.ffn_up_exps, None, layer.ffn_gate_exps, None,
                                             layer.ffn_down_exps, None, None,
                                             self.n_expert, self.n_expert_used,
                                             FFN_GELU, True, 1.0, GATING_SOFTMAX, il,
                                             logits, layer.ffn_gate_up_exps,
                                             layer.ffn_up_exps_s, layer.ffn_gate_exps_s,
                                             layer.ffn_down_exps_s)
                cur_moe = self.build_norm(cur_moe, layer.ffn_post_norm_2, None, NORM_RMS, il)
                cb(cur_moe, "ffn_moe", il)

                cur = ggml.add(ctx0, cur_mlp, cur_moe)
                cb(cur, "ffn_moe_combined", il)
            else:
                cur = self.build_norm(attn_out, layer.ffn_norm, None, NORM_RMS, il)
                cb(cur, "ffn_norm", il)
                cur = self.build_ffn(cur, layer.ffn_up, None, layer.ffn_up_s,
                                     layer.ffn_gate, None, layer.ffn_gate_s,
                                     layer.ffn_down, None, layer.ffn_down_s,
                                     None, FFN_GELU, FFN_PAR, il)
                cb(cur, "ffn_out", il)
            cur = self.build_norm(cur, layer.ffn_post_norm, None, NORM_RMS, -1)
            cb(cur, "ffn_post_norm", il)

            # residual connection
            cur = ggml.add(ctx0, cur, attn_out)

            # per-layer embedding
            if inp_per_layer is not None:
                pe_in = cur
                cb(cur, "pe_in", il)
                assert layer.per_layer_inp_gate is not None and layer.per_layer_proj is not None
                cur = self.build_lora_mm(layer.per_layer_inp_gate, cur)
                cur = ggml.gelu(ctx0, cur)

                inp_this_layer = view_2d_slice(ctx0, inp_per_layer, il)
                if il == self.n_layer - 1 and EMBEDDINGS_NEXTN_MASKED:
                    inp_this_layer = ggml.get_rows(ctx0, inp_this_layer, inp_out_ids)

                cur = ggml.mul(ctx0, cur, inp_this_layer)
                cur = self.build_lora_mm(layer.per_layer_proj, cur)
                cur = self.build_norm(cur, layer.per_layer_post_norm, None, NORM_RMS, il)
                cb(cur, "per_layer_embd_out", il)

                cur = ggml.add(ctx0, pe_in, cur)

            # layer scalar
            if layer.out_scale is not None:
                cur = ggml.mul(ctx0, cur, layer.out_scale)
                cb(cur, "out_scaled", il)

            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

            inpL = cur
        cur = inpL

        cur = self.build_norm(cur, model.output_norm, None, NORM_RMS, -1)

        # the post-norm hidden state, for MTP draft contexts
        cb(cur, "h_nextn", -1)
        self.res.t_h_nextn = cur

        if not EMBEDDINGS_NEXTN_MASKED:
            cur = ggml.get_rows(ctx0, cur, inp_out_ids)

        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)

        if hp.f_final_logit_softcapping:
            cur = ggml.scale(ctx0, cur, 1.0 / hp.f_final_logit_softcapping)
            cur = ggml.tanh(ctx0, cur)
            cur = ggml.scale(ctx0, cur, hp.f_final_logit_softcapping)

        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)

    def build_inp_per_layer(self, per_layer_tok_embd: Tensor) -> Tensor:
        """[n_embd_per_layer, n_layer, n_tokens] (the token path: a reserve has tokens)."""
        ctx0 = self.ctx0
        tokens = ggml.new_tensor_1d(ctx0, I32, self.n_tokens)
        ggml.set_input(tokens)
        inp_per_layer = ggml.get_rows(ctx0, per_layer_tok_embd, tokens)
        inp_per_layer = ggml.reshape_3d(ctx0, inp_per_layer, self.n_embd_per_layer,
                                        self.n_layer, self.n_tokens)
        inp_per_layer = ggml.scale(ctx0, inp_per_layer, math.sqrt(self.n_embd_per_layer))
        self.cb(inp_per_layer, "inp_per_layer_selected", -1)
        return inp_per_layer

    def project_per_layer_inputs(self, inp_batch: Tensor, inp_per_layer: Tensor) -> Tensor:
        ctx0, cb, model = self.ctx0, self.cb, self.model
        proj = model.tensor("per_layer_model_proj.weight", Loc("layer", 0))
        norm = model.tensor("per_layer_proj_norm.weight", Loc("layer", 0))
        assert proj is not None
        per_layer_proj = ggml.mul_mat(ctx0, proj, inp_batch)
        per_layer_proj = ggml.scale(ctx0, per_layer_proj, 1.0 / math.sqrt(self.n_embd))
        per_layer_proj = ggml.reshape_3d(ctx0, per_layer_proj, self.n_embd_per_layer,
                                         self.n_layer, self.n_tokens)
        per_layer_proj = self.build_norm(per_layer_proj, norm, None, NORM_RMS, -1)
        cb(per_layer_proj, "per_layer_proj", -1)

        inp_per_layer = ggml.add(ctx0, per_layer_proj, inp_per_layer)
        inp_per_layer = ggml.scale(ctx0, inp_per_layer, 1.0 / math.sqrt(2.0))
        cb(inp_per_layer, "inp_per_layer", -1)

        # permute to [n_embd_per_layer, n_tokens, n_layer]
        return ggml.cont(ctx0, ggml.permute(ctx0, inp_per_layer, 0, 2, 1, 3))
