"""src/models/deepseek2.cpp: llama_model_deepseek2::graph (DeepSeek-V2/V3 family: multi-head
latent attention, absorbed (MLA, a K-only cache) or decompressed; shared and routed experts)."""

from __future__ import annotations

import math
from typing import ClassVar

from kvgui.core.memory.builders.common import FFN_PAR, FFN_SILU, NORM_RMS, GraphContext, Result
from kvgui.core.memory.builders.hparams import GATING_NONE, GATING_SIGMOID, GATING_SOFTMAX, Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Tensor
from kvgui.core.model.info import ModelInfo

# cparams.embeddings_nextn / embeddings_nextn_masked (off for a llama-cli context)
EMBEDDINGS_NEXTN = False
EMBEDDINGS_NEXTN_MASKED = False


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams."""
    hp.n_layer_dense_lead = hp.key_int("leading_dense_block_count")
    hp.n_lora_q = hp.key_int("attention.q_lora_rank")
    hp.n_lora_kv = hp.key_int("attention.kv_lora_rank")
    hp.n_embd_head_k_mla_impl = hp.key_int("attention.key_length_mla")
    hp.n_embd_head_v_mla_impl = hp.key_int("attention.value_length_mla")
    hp.n_expert_shared = hp.key_int("expert_shared_count")
    hp.expert_weights_scale = hp.key_float("expert_weights_scale")
    hp.expert_weights_norm = bool(hp.key("expert_weights_norm", False))
    hp.expert_gating_func = hp.key_int("expert_gating_func", GATING_NONE)
    if hp.expert_gating_func == GATING_NONE:
        # existing DeepSeek V2 / V2.5 files have no gating function key
        glm47_lite = hp.n_layer in (47, 48) and hp.n_vocab == 154880
        hp.expert_gating_func = GATING_SIGMOID if glm47_lite else GATING_SOFTMAX
    hp.f_attn_temp_scale = hp.key_float("attention.temperature_scale")


class Deepseek2Graph(GraphContext):
    layer_names: ClassVar[dict[str, str]] = {"wq_b": "attn_q_b.weight", "wk_b": "attn_k_b.weight",
                   "wv_b": "attn_v_b.weight"}

    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_tokens = self.n_tokens
        is_mla = hp.is_mla()

        # the head sizes when treated as MHA, or after "decompression" with wv_b for MLA
        n_embd_head_k = hp.n_embd_head_k_mla()

        n_embd_head_qk_rope = hp.n_rot()
        n_embd_head_qk_nope = n_embd_head_k - n_embd_head_qk_rope
        n_embd_head_v = hp.n_embd_head_v_mla()

        kv_lora_rank = hp.n_lora_kv
        kq_scale = 1.0 / math.sqrt(n_embd_head_k)  # (the YaRN pre-scaling changes no tensor)

        # {n_embd, n_tokens}
        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # (optional) temperature tuning - used by mistral-large
        inp_attn_scale: Tensor | None = None
        if hp.f_attn_temp_scale != 0.0:
            inp_attn_scale = self.build_inp_attn_scale()

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        inp_attn_kv = self.build_attn_inp_kv() if not is_mla else None
        inp_attn_k = self.build_attn_inp_k() if is_mla else None

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            # norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self_attention
            is_lite = layer.wq is not None

            if not is_lite:
                assert layer.wq_a is not None and layer.wq_b is not None
                q = ggml.mul_mat(ctx0, layer.wq_a, cur)
                cb(q, "q", il)

                q = self.build_norm(q, layer.attn_q_a_norm, None, NORM_RMS, il)
                cb(q, "q", il)

                q = ggml.mul_mat(ctx0, layer.wq_b, q)
                cb(q, "q", il)
            else:
                assert layer.wq is not None
                q = ggml.mul_mat(ctx0, layer.wq, cur)
                cb(q, "q", il)
            # {n_embd_head_k, n_head, n_tokens}
            q = ggml.reshape_3d(ctx0, q, n_embd_head_k, self.n_head, n_tokens)
            cb(q, "q", il)

            assert layer.wkv_a_mqa is not None
            kv_cmpr_pe = ggml.mul_mat(ctx0, layer.wkv_a_mqa, cur)
            cb(kv_cmpr_pe, "kv_cmpr_pe", il)

            rs = ggml.row_size
            # split into {kv_lora_rank, n_tokens}
            kv_cmpr = ggml.view_2d(ctx0, kv_cmpr_pe, kv_lora_rank, n_tokens,
                                   rs(kv_cmpr_pe.type, kv_lora_rank + n_embd_head_qk_rope), 0)
            cb(kv_cmpr, "kv_cmpr", il)

            # and {n_embd_head_qk_rope, 1, n_tokens}
            k_pe = ggml.view_3d(ctx0, kv_cmpr_pe, n_embd_head_qk_rope, 1, n_tokens,
                                rs(kv_cmpr_pe.type, kv_lora_rank + n_embd_head_qk_rope),
                                rs(kv_cmpr_pe.type, kv_lora_rank + n_embd_head_qk_rope),
                                rs(kv_cmpr_pe.type, kv_lora_rank))
            cb(k_pe, "k_pe", il)

            k_pe = ggml.rope_ext(ctx0, k_pe, inp_pos, None)
            cb(k_pe, "k_pe", il)

            kv_cmpr = self.build_norm(kv_cmpr, layer.attn_kv_a_norm, None, NORM_RMS, il)
            cb(kv_cmpr, "kv_cmpr", il)

            if is_mla:
                assert inp_attn_k is not None
                assert layer.wk_b is not None and layer.wv_b is not None
                # split into {n_embd_head_qk_nope, n_head, n_tokens}
                q_nope = ggml.view_3d(ctx0, q, n_embd_head_qk_nope, self.n_head, n_tokens,
                                      q.nb[1], q.nb[2], 0)
                cb(q_nope, "q_nope", il)

                # and {n_embd_head_qk_rope, n_head, n_tokens}
                q_pe = ggml.view_3d(ctx0, q, n_embd_head_qk_rope, self.n_head, n_tokens,
                                    q.nb[1], q.nb[2], rs(q.type, n_embd_head_qk_nope))
                cb(q_pe, "q_pe", il)

                q_pe = ggml.rope_ext(ctx0, q_pe, inp_pos, None)
                cb(q_pe, "q_pe", il)

                # {n_embd_head_qk_nope, n_tokens, n_head}
                q_nope = ggml.permute(ctx0, q_nope, 0, 2, 1, 3)
                cb(q_nope, "q_nope_perm", il)

                # {n_embd_head_qk_nope, kv_lora_rank, n_head} x {.., n_tokens, n_head}
                q_nope_absorbed = ggml.mul_mat(ctx0, layer.wk_b, q_nope)
                cb(q_nope_absorbed, "q_nope_absorbed", il)

                # {kv_lora_rank, n_head, n_tokens}
                q_nope_absorbed = ggml.permute(ctx0, q_nope_absorbed, 0, 2, 1, 3)
                cb(q_nope_absorbed, "q_nope_absorbed_perm", il)

                # {n_embd_head_qk_rope + kv_lora_rank, n_head, n_tokens}
                # note: rope must go first for in-place context shifting in build_rope_shift()
                Qcur = ggml.concat(ctx0, q_nope_absorbed, q_pe, 0)
                cb(Qcur, "Qcur", il)

                kv_cmpr = ggml.reshape_3d(ctx0, kv_cmpr, kv_lora_rank, 1, n_tokens)
                cb(kv_cmpr, "kv_cmpr_reshape", il)

                # {n_embd_head_qk_rope + kv_lora_rank, 1, n_tokens}
                Kcur = ggml.concat(ctx0, kv_cmpr, k_pe, 0)
                cb(Kcur, "Kcur", il)

                # {kv_lora_rank, 1, n_tokens}
                Vcur = kv_cmpr
                cb(Vcur, "Vcur", il)

                if inp_attn_scale is not None:
                    # apply llama 4 temperature scaling
                    Qcur = ggml.mul(ctx0, Qcur, inp_attn_scale)
                    cb(Qcur, "Qcur_attn_temp_scaled", il)

                # note: MLA with the absorption optimization converts into MQA
                cur = self.build_attn(inp_attn_k, layer.wo, None, layer.wo_s, Qcur, Kcur, Vcur,
                                      None, None, layer.wv_b, kq_scale, il)
            else:
                assert inp_attn_kv is not None and layer.wkv_b is not None
                kv = ggml.mul_mat(ctx0, layer.wkv_b, kv_cmpr)
                cb(kv, "kv", il)

                # split into {n_embd_head_qk_nope, n_head, n_tokens}
                width = rs(kv.type, n_embd_head_qk_nope + n_embd_head_v)
                k_nope = ggml.view_3d(ctx0, kv, n_embd_head_qk_nope, self.n_head, n_tokens,
                                      width, width * self.n_head, 0)
                cb(k_nope, "k_nope_view", il)

                # and {n_embd_head_v, n_head, n_tokens}
                Vcur = ggml.view_3d(ctx0, kv, n_embd_head_v, self.n_head, n_tokens, width,
                                    width * self.n_head, rs(kv.type, n_embd_head_qk_nope))
                cb(Vcur, "Vcur_view", il)

                Vcur = ggml.cont(ctx0, Vcur)
                cb(Vcur, "Vcur_cont", il)

                # RoPE is applied to the trailing dims only
                Qcur = ggml.rope_ext(ctx0, q, inp_pos, None)
                cb(Qcur, "Qcur", il)

                Kcur = ggml.concat(ctx0, k_nope, ggml.repeat_4d(
                    ctx0, k_pe, n_embd_head_qk_rope, self.n_head, n_tokens, 1), 0)
                cb(Kcur, "Kcur", il)

                if inp_attn_scale is not None:
                    # apply llama 4 temperature scaling
                    Qcur = ggml.mul(ctx0, Qcur, inp_attn_scale)
                    cb(Qcur, "Qcur_attn_temp_scaled", il)

                # note: MLA without the absorption optimization converts into MHA
                cur = self.build_attn(inp_attn_kv, layer.wo, None, layer.wo_s, Qcur, Kcur,
                                      Vcur, None, None, None, kq_scale, il)

            if il == self.n_layer - 1 and (not EMBEDDINGS_NEXTN or EMBEDDINGS_NEXTN_MASKED):
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)
            ffn_inp = ggml.add(ctx0, cur, inpSA)
            cb(ffn_inp, "ffn_inp", il)

            cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            if il < hp.n_layer_dense_lead:
                cur = self.build_ffn(cur,
                                     layer.ffn_up, None, None,
                                     layer.ffn_gate, None, None,
                                     layer.ffn_down, None, None,
                                     None, FFN_SILU, FFN_PAR, il)
                cb(cur, "ffn_out", il)
            else:
                # MoE branch
                assert layer.ffn_gate_inp is not None and layer.ffn_down_exps is not None
                moe_out = self.build_moe_ffn(cur, layer.ffn_gate_inp, None,
                                             layer.ffn_up_exps, None,
                                             layer.ffn_gate_exps, None,
                                             layer.ffn_down_exps, None,
                                             layer.ffn_exp_probs_b,
                                             self.n_expert, self.n_expert_used,
                                             FFN_SILU, hp.expert_weights_norm,
                                             hp.expert_weights_scale, hp.expert_gating_func,
                                             il, None, layer.ffn_gate_up_exps)
                cb(moe_out, "ffn_moe_out", il)

                # FFN shared expert
                ffn_shexp = self.build_ffn(cur,
                                           layer.ffn_up_shexp, None, None,
                                           layer.ffn_gate_shexp, None, None,
                                           layer.ffn_down_shexp, None, None,
                                           None, FFN_SILU, FFN_PAR, il)
                cb(ffn_shexp, "ffn_shexp", il)

                cur = ggml.add(ctx0, moe_out, ffn_shexp)
                cb(cur, "ffn_out", il)
            cur = ggml.add(ctx0, cur, ffn_inp)

            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

            # input for next layer
            inpL = cur
        cur = inpL

        cur = self.build_norm(cur, model.output_norm, None, NORM_RMS, -1)

        cb(cur, "h_nextn", -1)
        self.res.t_h_nextn = cur

        if EMBEDDINGS_NEXTN and not EMBEDDINGS_NEXTN_MASKED:
            cur = ggml.get_rows(ctx0, cur, inp_out_ids)

        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        # lm_head
        assert model.output is not None
        cur = ggml.mul_mat(ctx0, model.output, cur)

        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)
