"""src/models/glm4-moe.cpp: llama_model_glm4_moe::graph (GLM-4.5 / 4.6 / 4.7, Solar Open:
q/k/v biases, optional q/k norms, dense lead layers, a sigmoid router with exp_probs_b and a
shared expert).

The NextN (MTP) block after the trunk is neither loaded (llama_model_params.load_mtp is off
for llama-cli / llama-server: TENSOR_SKIP) nor cached, and the main graph never runs it: its
layers are past ``n_layer`` (hparams.n_layer() = n_layer_all - n_layer_nextn), so the loop,
the KV cache and builders.unread_tensors all stop before them. graph_mtp is built only for a
LLAMA_CONTEXT_TYPE_MTP context, which a plain llama-cli run never creates.
"""

from __future__ import annotations

import math

from kvgui.core.memory.builders.common import FFN_PAR, FFN_SILU, NORM_RMS, GraphContext, Result
from kvgui.core.memory.builders.hparams import GATING_NONE, GATING_SIGMOID, Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.model.info import ModelInfo

# cparams.embeddings_nextn / embeddings_nextn_masked (off for a llama-cli context)
EMBEDDINGS_NEXTN = False
EMBEDDINGS_NEXTN_MASKED = False


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: MoE parameters; the gating function defaults to sigmoid."""
    hp.n_expert_shared = hp.key_int("expert_shared_count")
    hp.n_layer_dense_lead = hp.key_int("leading_dense_block_count")
    hp.expert_weights_scale = hp.key_float("expert_weights_scale")
    hp.expert_weights_norm = bool(hp.key("expert_weights_norm", False))
    hp.expert_gating_func = hp.key_int("expert_gating_func", GATING_NONE)
    if hp.expert_gating_func == GATING_NONE:
        hp.expert_gating_func = GATING_SIGMOID


class Glm4MoeGraph(GraphContext):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()
        assert n_embd_head == hp.n_embd_head_k()

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        # (use_mrope: ggml_rope_multi has rope_ext's shape, type and sources)

        # inp_pos - contains the positions
        inp_pos = self.build_inp_pos()

        inp_attn = self.build_attn_inp_kv()

        inp_out_ids = self.build_inp_out_ids()

        # NextN layers are processed by graph_mtp.
        for il in self.layers():
            layer = model.layers[il]
            inpSA = inpL

            # Pre-attention norm
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            # self-attention
            Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, self.n_head,
                                              self.n_head_kv, il)

            # Apply Q/K norm if available (GLM-4.5 355B variant)
            if layer.attn_q_norm is not None:
                Qcur = self.build_norm(Qcur, layer.attn_q_norm, None, NORM_RMS, il)
                cb(Qcur, "Qcur_normed", il)
            if layer.attn_k_norm is not None:
                Kcur = self.build_norm(Kcur, layer.attn_k_norm, None, NORM_RMS, il)
                cb(Kcur, "Kcur_normed", il)

            Qcur = ggml.rope_ext(ctx0, Qcur, inp_pos, None)
            Kcur = ggml.rope_ext(ctx0, Kcur, inp_pos, None)

            cb(Qcur, "Qcur", il)
            cb(Kcur, "Kcur", il)
            cb(Vcur, "Vcur", il)

            cur = self.build_attn(inp_attn, layer.wo, None, layer.wo_s, Qcur, Kcur, Vcur,
                                  None, None, None, 1.0 / math.sqrt(n_embd_head), il)

            if il == self.n_layer - 1 and (not EMBEDDINGS_NEXTN or EMBEDDINGS_NEXTN_MASKED):
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpSA = ggml.get_rows(ctx0, inpSA, inp_out_ids)
            ffn_inp = ggml.add(ctx0, cur, inpSA)
            cb(ffn_inp, "ffn_inp", il)

            # Post-attention norm
            cur = self.build_norm(ffn_inp, layer.attn_post_norm, None, NORM_RMS, il)
            cb(cur, "post_attn_norm", il)

            if il < hp.n_layer_dense_lead:
                # Dense FFN layer
                cur = self.build_ffn(cur,
                                     layer.ffn_up, None, None,
                                     layer.ffn_gate, None, None,
                                     layer.ffn_down, None, None,
                                     None, FFN_SILU, FFN_PAR, il)
                cb(cur, "ffn_out", il)
            else:
                # Process routed experts using existing MoE infrastructure
                assert layer.ffn_gate_inp is not None and layer.ffn_down_exps is not None
                routed_out = self.build_moe_ffn(cur, layer.ffn_gate_inp, None,
                                                layer.ffn_up_exps, None,
                                                layer.ffn_gate_exps, None,
                                                layer.ffn_down_exps, None,
                                                layer.ffn_exp_probs_b,
                                                self.n_expert, self.n_expert_used,
                                                FFN_SILU, hp.expert_weights_norm,
                                                hp.expert_weights_scale,
                                                hp.expert_gating_func, il)
                cb(routed_out, "ffn_moe_out", il)

                # Process shared expert on original input
                shared_out = self.build_ffn(cur,
                                            layer.ffn_up_shexp, None, None,
                                            layer.ffn_gate_shexp, None, None,
                                            layer.ffn_down_shexp, None, None,
                                            None, FFN_SILU, FFN_PAR, il)
                cb(shared_out, "ffn_shexp_out", il)

                # Final output: routed_output + shared_output
                cur = ggml.add(ctx0, routed_out, shared_out)
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
        cur = self.build_lora_mm(model.output, cur, model.output_s)

        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)
