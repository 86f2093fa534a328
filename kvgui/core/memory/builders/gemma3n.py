"""src/models/gemma3n.cpp: llama_model_gemma3n::graph (Gemma 3n: AltUp streams, LAuReL,
per-layer token inputs, activation sparsity on the first layers; llama_kv_cache_iswa whose
last layers read the cache of an earlier layer of their kind, layer_reuse_cb)."""

from __future__ import annotations

import math
from typing import ClassVar

from kvgui.core.memory.builders.common import NORM_RMS, GraphContext, KVCache, Result
from kvgui.core.memory.builders.hparams import Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Loc, Tensor
from kvgui.core.memory.graph.ops import I32
from kvgui.core.model.info import ModelInfo

# llama_hparams defaults (gemma3n's load_arch_hparams reads none of them)
N_ALTUP, I_ALTUP_ACT, LAUREL_RANK, N_EMBD_ALTUP = 4, 0, 64, 256
N_LAYER_SPARSITY = 10  # llama_model_gemma3n::graph: layers with activation sparsity
F_SPARSITY_STD_MUL = 1.6448533535003662
N_LAYER_KV_FROM_START = 20  # load_arch_hparams


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: f_attention_scale 1 (the q norm scales), no final soft-cap key."""
    hp.f_attention_scale = 1.0


def view_2d_slice(ctx0: ggml.Context, x: Tensor, idx: int) -> Tensor:
    """gemma3n_view_2d_slice: the idx-th [ne0, ne1] slice of a 3D tensor."""
    return ggml.view_2d(ctx0, x, x.ne[0], x.ne[1], ggml.row_size(x.type, x.ne[0]),
                        idx * x.ne[0] * x.ne[1] * ggml.element_size(x))


def kv_reuse(hp: Hparams, n_layer_kv_from_start: int) -> dict[int, int]:
    """llama_model::create_memory's reuse callback for gemma3n / gemma4."""
    assert n_layer_kv_from_start >= 2
    return {il: n_layer_kv_from_start - (2 if hp.is_swa(il) else 1)
            for il in range(n_layer_kv_from_start, hp.n_layer)}


class Gemma3nGraph(GraphContext):
    layer_names: ClassVar[dict[str, str]] = {
        "per_layer_inp_gate": "inp_gate.weight", "per_layer_proj": "proj.weight",
        "per_layer_post_norm": "post_norm.weight",
        "altup_correct_coef": "altup_correct_coef.weight",
        "altup_correct_scale": "altup_correct_scale.weight",
        "altup_predict_coef": "altup_predict_coef.weight",
        "altup_router": "altup_router.weight", "altup_router_norm": "altup_router_norm.weight",
        "laurel_l": "laurel_l.weight", "laurel_r": "laurel_r.weight",
        "laurel_post_norm": "laurel_post_norm.weight",
    }
    n_layer_kv_from_start = N_LAYER_KV_FROM_START

    def _iswa_memory(self, layers: list[int]) -> tuple[KVCache, KVCache]:
        base, swa = super()._iswa_memory(layers)
        reuse = kv_reuse(self.hparams, self.n_layer_kv_from_start)
        base.reuse = swa.reuse = reuse
        return base, swa

    def model_tensor(self, name: str, loc: Loc) -> Tensor:
        t = self.model.tensor(name, loc)
        assert t is not None, f"the file has no {name}"
        return t

    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd, n_tokens = self.n_embd, self.n_tokens
        n_embd_head = hp.n_embd_head_k()
        n_altup, i_altup_act = N_ALTUP, I_ALTUP_ACT

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # do not normalize weights for raw embeddings input (a reserve has tokens)
        inpL = ggml.scale(ctx0, inpL, math.sqrt(n_embd))
        cb(inpL, "inp_scaled", -1)

        inp_pos = self.build_inp_pos()

        inp_attn = self.build_attn_inp_kv_iswa()

        inp_per_layer = self.build_inp_per_layer()
        self.gf.expand(inp_per_layer)

        # inp_per_layer now has shape: [n_embd_altup, n_tokens, n_layer]
        inp_per_layer = self.project_per_layer_inputs(inpL, inp_per_layer)

        # project the one altup to the others, concatenated along the last dim
        target_magnitude = self.calc_magnitude(inpL)
        inp_repeated = ggml.repeat_4d(ctx0, inpL, n_embd, n_tokens, n_altup - 1, 1)
        altup_added = ggml.mul_mat(ctx0, self.model_tensor("altup_proj.weight", Loc("output")),
                                   inp_repeated)
        new_magnitude = self.calc_magnitude(altup_added)
        altup_added = ggml.div(ctx0, ggml.mul(ctx0, altup_added, target_magnitude),
                               new_magnitude)
        inpL = ggml.concat(ctx0, inpL, altup_added, 2)
        cb(inpL, "inp_stacked", -1)

        for il in self.layers():
            layer = model.layers[il]
            cur = inpL
            predictions = self.altup_predict(cur, il)

            # the predicted value goes through self-attention and laurel
            active_prediction = view_2d_slice(ctx0, predictions, i_altup_act)
            cur = active_prediction
            cb(cur, "active_prediction", il)

            cur = self.build_norm(cur, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            laurel_out = self.laurel(cur, il)

            if hp.has_kv(il):
                Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, self.n_head,
                                                  self.n_head_kv, il)
                Qcur = self.build_norm(Qcur, layer.attn_q_norm, None, NORM_RMS, il)
                Kcur = self.build_norm(Kcur, layer.attn_k_norm, None, NORM_RMS, il)
                Vcur = ggml.rms_norm(ctx0, Vcur, 0.0)
                cb(Qcur, "Qcur_normed", il)
                cb(Kcur, "Kcur_normed", il)
                cb(Vcur, "Vcur_normed", il)

                Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, None)
                Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, None)
                cb(Qcur, "Qcur_pos", il)
                cb(Kcur, "Kcur_pos", il)

                cur = self.build_attn(inp_attn, layer.wo, None, layer.wo_s, Qcur, Kcur, Vcur,
                                      None, None, None, hp.f_attention_scale, il)
            else:
                # reuse the KV cache of an earlier layer: the layer's K/V weights are loaded
                # (create_tensor_qkv) and never read, in llama.cpp as here
                if layer.wqkv is not None:
                    qkv = self.build_lora_mm(layer.wqkv, cur)
                    q_dim = n_embd_head * self.n_head
                    Qcur = ggml.cont(ctx0, ggml.view_2d(ctx0, qkv, q_dim, n_tokens, qkv.nb[1], 0))
                else:
                    assert layer.wq is not None
                    Qcur = self.build_lora_mm(layer.wq, cur)
                    _ = (layer.wk, layer.wv)
                cb(Qcur, "Qcur", il)
                Qcur = ggml.reshape_3d(ctx0, Qcur, n_embd_head, self.n_head, n_tokens)

                Qcur = self.build_norm(Qcur, layer.attn_q_norm, None, NORM_RMS, il)
                cb(Qcur, "Qcur_normed", il)
                _ = layer.attn_k_norm

                Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, None)
                cb(Qcur, "Qcur_pos", il)

                cur = self.build_attn(inp_attn, layer.wo, None, layer.wo_s, Qcur, None, None,
                                      None, None, None, hp.f_attention_scale, il)

            cur = self.build_norm(cur, layer.attn_post_norm, None, NORM_RMS, il)
            cb(cur, "attn_post_norm", il)

            cur = ggml.add(ctx0, cur, active_prediction)
            cb(cur, "attn_gated", il)

            attn_laurel = ggml.scale(ctx0, ggml.add(ctx0, cur, laurel_out), 1.0 / math.sqrt(2.0))
            cb(attn_laurel, "attn_laurel", il)

            cur = self.build_norm(attn_laurel, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            # feed-forward network
            assert layer.ffn_up is not None and layer.ffn_gate is not None
            assert layer.ffn_down is not None
            up_proj = self.build_lora_mm(layer.ffn_up, cur)
            gate_proj = self.build_lora_mm(layer.ffn_gate, cur)
            if il < N_LAYER_SPARSITY:
                gate_proj = self.gaussian_topk(gate_proj)
            gate_proj = ggml.gelu(ctx0, gate_proj)
            cur = ggml.mul(ctx0, up_proj, gate_proj)
            cur = self.build_lora_mm(layer.ffn_down, cur)
            cb(cur, "ffn_out", il)

            cur = self.build_norm(cur, layer.ffn_post_norm, None, NORM_RMS, -1)
            cb(cur, "ffn_post_norm", il)

            attn_ffw_laurel_gated = ggml.add(ctx0, cur, attn_laurel)
            cb(attn_ffw_laurel_gated, "attn_ffw_laurel_gated", il)

            corrected = self.altup_correct(predictions, attn_ffw_laurel_gated, il)

            first_prediction = view_2d_slice(ctx0, corrected, i_altup_act)
            assert layer.altup_correct_scale is not None
            first_prediction = ggml.mul(ctx0, first_prediction, layer.altup_correct_scale)
            assert layer.per_layer_inp_gate is not None and layer.per_layer_proj is not None
            first_prediction = self.build_lora_mm(layer.per_layer_inp_gate, first_prediction)
            first_prediction = ggml.gelu(ctx0, first_prediction)
            cb(first_prediction, "first_prediction_gated", il)

            inp_this_layer = view_2d_slice(ctx0, inp_per_layer, il)
            first_prediction = ggml.mul(ctx0, first_prediction, inp_this_layer)
            cb(first_prediction, "first_prediction_scaled", il)

            first_prediction = self.build_lora_mm(layer.per_layer_proj, first_prediction)
            first_prediction = self.build_norm(first_prediction, layer.per_layer_post_norm, None,
                                               NORM_RMS, il)
            cb(first_prediction, "first_prediction_out", il)

            # corrected_predictions[1:] += first_prediction
            slice_first = view_2d_slice(ctx0, corrected, 0)
            slice_rest = ggml.view_3d(ctx0, corrected, n_embd, n_tokens, n_altup - 1,
                                      ggml.row_size(corrected.type, n_embd),
                                      ggml.row_size(corrected.type, n_embd * n_tokens),
                                      n_embd * n_tokens * ggml.element_size(corrected))
            tmp = ggml.add(ctx0, slice_rest, first_prediction)
            corrected = ggml.concat(ctx0, slice_first, tmp, 2)

            cur = corrected
            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

            inpL = cur
        cur = inpL

        # merge the altups back to one
        target_magnitude = self.calc_magnitude(view_2d_slice(ctx0, cur, i_altup_act))
        alt_slice = ggml.view_3d(ctx0, cur, n_embd, n_tokens, n_altup - 1,
                                 ggml.row_size(cur.type, n_embd),
                                 ggml.row_size(cur.type, n_embd * n_tokens),
                                 n_embd * n_tokens * ggml.element_size(cur))
        altup_unembd = ggml.mul_mat(
            ctx0, self.model_tensor("altup_unembd_proj.weight", Loc("output")), alt_slice)
        new_magnitude = self.calc_magnitude(altup_unembd)
        altup_unembd = ggml.div(ctx0, ggml.mul(ctx0, altup_unembd, target_magnitude),
                                new_magnitude)
        cb(altup_unembd, "altup_unembd", -1)

        cur = view_2d_slice(ctx0, cur, 0)
        for i in range(n_altup - 1):
            cur = ggml.add(ctx0, cur, view_2d_slice(ctx0, altup_unembd, i))
        cur = ggml.scale(ctx0, cur, 1.0 / n_altup)
        cb(cur, "unembd_merged", -1)

        inp_out_ids = self.build_inp_out_ids()
        cur = ggml.get_rows(ctx0, cur, inp_out_ids)

        cur = self.build_norm(cur, model.output_norm, None, NORM_RMS, -1)
        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)

        # final logit soft-capping
        cur = ggml.scale(ctx0, cur, 1.0 / hp.f_final_logit_softcapping)
        cur = ggml.tanh(ctx0, cur)
        cur = ggml.scale(ctx0, cur, hp.f_final_logit_softcapping)
        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)

    def calc_magnitude(self, x: Tensor) -> Tensor:
        ctx0 = self.ctx0
        return ggml.sqrt(ctx0, ggml.sum_rows(ctx0, ggml.sqr(ctx0, x)))

    def build_inp_per_layer(self) -> Tensor:
        """[n_embd_altup, n_layer, n_tokens] (the token path: a reserve has tokens)."""
        ctx0 = self.ctx0
        tokens = ggml.new_tensor_1d(ctx0, I32, self.n_tokens)
        ggml.set_input(tokens)
        inp_per_layer = ggml.get_rows(
            ctx0, self.model_tensor("per_layer_token_embd.weight", Loc("input")), tokens)
        inp_per_layer = ggml.reshape_3d(ctx0, inp_per_layer, N_EMBD_ALTUP, self.n_layer,
                                        self.n_tokens)
        inp_per_layer = ggml.scale(ctx0, inp_per_layer, math.sqrt(N_EMBD_ALTUP))
        self.cb(inp_per_layer, "inp_per_layer_selected", -1)
        return inp_per_layer

    def project_per_layer_inputs(self, inp_batch: Tensor, inp_per_layer: Tensor) -> Tensor:
        ctx0, cb = self.ctx0, self.cb
        per_layer_proj = ggml.mul_mat(
            ctx0, self.model_tensor("per_layer_model_proj.weight", Loc("layer", 0)), inp_batch)
        per_layer_proj = ggml.scale(ctx0, per_layer_proj, 1.0 / math.sqrt(self.n_embd))
        per_layer_proj = ggml.reshape_3d(ctx0, per_layer_proj, N_EMBD_ALTUP, self.n_layer,
                                         self.n_tokens)
        per_layer_proj = self.build_norm(
            per_layer_proj, self.model_tensor("per_layer_proj_norm.weight", Loc("layer", 0)),
            None, NORM_RMS, -1)
        cb(per_layer_proj, "per_layer_proj", -1)

        inp_per_layer = ggml.add(ctx0, per_layer_proj, inp_per_layer)
        inp_per_layer = ggml.scale(ctx0, inp_per_layer, 1.0 / math.sqrt(2.0))
        cb(inp_per_layer, "inp_per_layer", -1)

        # permute to [n_embd_altup, n_tokens, n_layer]
        return ggml.cont(ctx0, ggml.permute(ctx0, inp_per_layer, 0, 2, 1, 3))

    def laurel(self, cur: Tensor, il: int) -> Tensor:
        layer = self.model.layers[il]
        assert layer.laurel_l is not None and layer.laurel_r is not None
        tmp = self.build_lora_mm(layer.laurel_l, cur)
        tmp = self.build_lora_mm(layer.laurel_r, tmp)
        tmp = self.build_norm(tmp, layer.laurel_post_norm, None, NORM_RMS, il)
        tmp = ggml.add(self.ctx0, tmp, cur)
        self.cb(tmp, "laurel_out", il)
        return tmp

    def gaussian_topk(self, x: Tensor) -> Tensor:
        ctx0 = self.ctx0
        mean = ggml.mean(ctx0, x)
        n = x.ne[0]
        assert isinstance(n, int)
        std = ggml.sqrt(ctx0, ggml.scale(ctx0, ggml.sum_rows(ctx0, ggml.sqr(
            ctx0, ggml.sub(ctx0, x, mean))), 1.0 / (n - 1)))
        cutoff_x = ggml.add(ctx0, mean, ggml.scale(ctx0, std, F_SPARSITY_STD_MUL))
        return ggml.relu(ctx0, ggml.sub(ctx0, x, cutoff_x))

    def altup_compute_router_modalities(self, x: Tensor, il: int) -> Tensor:
        ctx0 = self.ctx0
        layer = self.model.layers[il]
        router_inputs = self.build_norm(x, layer.altup_router_norm, None, NORM_RMS, il)
        router_inputs = ggml.scale(ctx0, router_inputs, 1.0 / self.n_embd)
        assert layer.altup_router is not None
        output = ggml.mul_mat(ctx0, layer.altup_router, router_inputs)
        return ggml.tanh(ctx0, output)

    def altup_predict(self, cur: Tensor, il: int) -> Tensor:
        ctx0, cb = self.ctx0, self.cb
        layer = self.model.layers[il]
        activated = view_2d_slice(ctx0, cur, I_ALTUP_ACT)
        modalities = self.altup_compute_router_modalities(activated, il)
        cb(modalities, "modalities", il)

        assert layer.altup_predict_coef is not None
        all_coefs = self.build_lora_mm(layer.altup_predict_coef, modalities)
        cb(all_coefs, "all_coefs", il)
        all_coefs = ggml.reshape_3d(ctx0, all_coefs, N_ALTUP, N_ALTUP, self.n_tokens)

        cur_permuted = ggml.cont(ctx0, ggml.permute(ctx0, cur, 1, 2, 0, 3))
        predictions = ggml.mul_mat(ctx0, cur_permuted, all_coefs)

        predictions = ggml.cont(ctx0, ggml.permute(ctx0, predictions, 0, 2, 1, 3))
        predictions = ggml.add(ctx0, predictions, cur)
        cb(predictions, "predictions", il)
        return predictions

    def altup_correct(self, predictions: Tensor, activated: Tensor, il: int) -> Tensor:
        ctx0, cb = self.ctx0, self.cb
        layer = self.model.layers[il]
        modalities = self.altup_compute_router_modalities(activated, il)
        cb(modalities, "modalities", il)

        active_prediction = view_2d_slice(ctx0, predictions, I_ALTUP_ACT)
        innovation = ggml.sub(ctx0, activated, active_prediction)
        cb(innovation, "innovation", il)

        assert layer.altup_correct_coef is not None
        all_coefs = self.build_lora_mm(layer.altup_correct_coef, modalities)
        all_coefs = ggml.scale_bias(ctx0, all_coefs, 1.0, 1.0)
        cb(all_coefs, "all_coefs", il)
        all_coefs = ggml.transpose(ctx0, all_coefs)
        all_coefs = ggml.cont_3d(ctx0, all_coefs, 1, self.n_tokens, N_ALTUP)

        innovation = ggml.repeat_4d(ctx0, innovation, self.n_embd, self.n_tokens, N_ALTUP, 1)
        corrected = ggml.mul(ctx0, innovation, all_coefs)
        corrected = ggml.add(ctx0, corrected, predictions)
        cb(corrected, "corrected", il)
        return corrected
