"""src/models/jamba.cpp: llama_model_jamba::graph (Jamba: Mamba-1 layers with an attention
layer where the file gives KV heads, no RoPE; a dense FFN or a routed MoE by layer;
llama_memory_hybrid)."""

from __future__ import annotations

import math

from kvgui.core.memory.builders import hparams as hp_mod
from kvgui.core.memory.builders.common import FFN_PAR, FFN_SILU, NORM_RMS, Result
from kvgui.core.memory.builders.hparams import GATING_SOFTMAX, Hparams
from kvgui.core.memory.builders.mamba_base import MambaBase
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.model.info import ModelInfo


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: the SSM sizes (Jamba's dt/B/C norms are tensors of the file)."""
    hp_mod.ssm_hparams(hp)


class JambaGraph(MambaBase):
    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        n_embd_head = hp.n_embd_head_v()

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        inp_hybrid = self.build_inp_mem_hybrid()

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            n_head_kv = hp.n_head_kv(il)

            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            if n_head_kv == 0:
                cur = self.build_mamba_layer(inp_hybrid.get_recr(), cur, il)
            else:
                Qcur, Kcur, Vcur = self.build_qkv(layer, cur, n_embd_head, self.n_head,
                                                  n_head_kv, il)
                # no RoPE
                cur = self.build_attn(inp_hybrid.get_attn(), layer.wo, None, layer.wo_s,
                                      Qcur, Kcur, Vcur, None, None, None,
                                      1.0 / math.sqrt(n_embd_head), il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpL = ggml.get_rows(ctx0, inpL, inp_out_ids)

            # residual
            ffn_inp = ggml.add(ctx0, inpL, cur)
            cb(cur, "ffn_inp", il)

            cur = self.build_norm(ffn_inp, layer.ffn_norm, None, NORM_RMS, il)
            cb(cur, "ffn_norm", il)

            if layer.ffn_gate_inp is None:
                cur = self.build_ffn(cur, layer.ffn_up, None, None, layer.ffn_gate, None, None,
                                     layer.ffn_down, None, None, None, FFN_SILU, FFN_PAR, il)
                cb(cur, "ffn_out", il)
            else:
                assert layer.ffn_down_exps is not None
                cur = self.build_moe_ffn(cur, layer.ffn_gate_inp, None,
                                         layer.ffn_up_exps, None, layer.ffn_gate_exps, None,
                                         layer.ffn_down_exps, None, None,
                                         self.n_expert, self.n_expert_used,
                                         FFN_SILU, False, hp.expert_weights_scale,
                                         GATING_SOFTMAX, il)
                cb(cur, "ffn_moe_out", il)

            # residual
            cur = ggml.add(ctx0, ffn_inp, cur)

            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

            inpL = cur

        # final rmsnorm
        cur = self.build_norm(inpL, model.output_norm, None, NORM_RMS, -1)
        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)
        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)
