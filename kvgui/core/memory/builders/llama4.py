"""src/models/llama4.cpp: llama_model_llama4::graph<iswa> (Llama 4 Scout / Maverick: chunked
attention on three of every four layers, no RoPE but a temperature-scaled query on the
fourth, L2-normed q/k on the RoPE layers, MoE every n-th layer with a shared expert and the
router weights applied before the experts)."""

from __future__ import annotations

from kvgui.core.memory.builders.common import FFN_PAR, FFN_SILU, NORM_RMS, GraphContext, Result
from kvgui.core.memory.builders.hparams import GATING_SIGMOID, Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.model.info import ModelInfo


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: a file whose sliding_window key is 0 has no chunked attention and
    ropes every layer; otherwise n_no_rope_layer_step keeps its default of 4. The 128-expert
    model (Maverick) has no q/k norm."""
    hp.n_moe_layer_step = hp.key_int("interleave_moe_layer_step")
    found_swa = hp.key("attention.sliding_window") is not None
    hp.swa_off = found_swa and hp.key_int("attention.sliding_window") == 0
    hp.n_no_rope_layer_step = hp.n_layer if hp.swa_off else 4
    hp.use_kq_norm = hp.n_expert != 128


class Llama4Graph(GraphContext):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k() and n_embd_head == self.n_rot

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        # temperature tuning
        inp_attn_scale = self.build_inp_attn_scale()

        # build_arch_graph: graph<true> unless the file turned the chunked window off
        inp_attn = self.build_attn_inp_kv() if hp.swa_off else self.build_attn_inp_kv_iswa()

        kq_scale = 1.0 / n_embd_head ** 0.5 if hp.f_attention_scale == 0.0 \
            else hp.f_attention_scale

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            use_rope = hp.n_no_rope_layer_step > 0 and (il + 1) % hp.n_no_rope_layer_step != 0

            # norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self-attention
            # rope freq factors for llama3; may return nullptr for llama2 and other models
            rope_factors = layer.rope_freqs

            # compute Q and K and RoPE them
            Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, self.n_head,
                                              self.n_head_kv, il)

            if use_rope:
                Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, rope_factors)
                Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, rope_factors)
            else:
                Qcur = ggml.mul(ctx0, Qcur, inp_attn_scale)
            cb(Qcur, "Qcur", il)
            cb(Kcur, "Kcur", il)
            cb(Vcur, "Vcur", il)

            if use_rope and hp.use_kq_norm:
                # Llama4TextL2Norm
                Qcur = ggml.rms_norm(ctx0, Qcur, 0.0)
                Kcur = ggml.rms_norm(ctx0, Kcur, 0.0)
                cb(Qcur, "Qcur_normed", il)
                cb(Kcur, "Kcur_normed", il)
            cur = self.build_attn(inp_attn, layer.wo, layer.wo_b, layer.wo_s, Qcur, Kcur, Vcur,
                                  None, None, None, kq_scale, il)
            cb(cur, "attn_out", il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)
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
                ffn_inp_normed = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
                cb(cur, "ffn_norm", il)  # (sic: names cur, as the C++ does)

                assert layer.ffn_up_exps is not None and layer.ffn_down_exps is not None
                moe_out = self.build_moe_ffn(ffn_inp_normed, layer.ffn_gate_inp, None,
                                             layer.ffn_up_exps, None,
                                             layer.ffn_gate_exps, None,
                                             layer.ffn_down_exps, None, None,
                                             self.n_expert, self.n_expert_used,
                                             FFN_SILU, False, hp.expert_weights_scale,
                                             GATING_SIGMOID, il)

                # Shared experts
                shexp_out = self.build_ffn(ffn_inp_normed,
                                           layer.ffn_up_shexp, None, None,
                                           layer.ffn_gate_shexp, None, None,
                                           layer.ffn_down_shexp, None, None,
                                           None, FFN_SILU, FFN_PAR, il)
                cb(shexp_out, "ffn_moe_shexp", il)

                cur = ggml.add(ctx0, moe_out, shexp_out)
                cb(cur, "ffn_moe_out_merged", il)
            cur = ggml.add(ctx0, cur, ffn_inp)
            cb(cur, "ffn_out", il)

            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

            # input for next layer
            inpL = cur
        cur = inpL

        cur = self.build_norm(cur, model.output_norm, None, NORM_RMS, -1)

        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        # lm_head
        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)

        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)
