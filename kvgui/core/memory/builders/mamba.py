"""src/models/mamba.cpp: llama_model_mamba::graph, also mamba2's (models.h: ``using graph =
llama_model_mamba::graph``): a stack of Mamba-1 or Mamba-2 mixers over
llama_memory_recurrent."""

from __future__ import annotations

from kvgui.core.memory.builders import hparams as hp_mod
from kvgui.core.memory.builders.common import NORM_RMS, Result
from kvgui.core.memory.builders.hparams import Hparams
from kvgui.core.memory.builders.mamba_base import MambaBase
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.model.info import ModelInfo


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: the SSM sizes; Falcon-Mamba's dt/B/C RMS norms (mamba only)."""
    hp_mod.ssm_hparams(hp)
    hp.ssm_dt_b_c_rms = bool(hp.key("ssm.dt_b_c_rms", False))


class MambaGraph(MambaBase):
    def build(self) -> Result:
        ctx0, model, cb = self.ctx0, self.model, self.cb

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)

        rs_inp = self.build_rs_inp()

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            cur = self.build_norm(inpL, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "attn_norm", il)

            if self.arch == "mamba2":
                cur = self.build_mamba2_layer(rs_inp, cur, il)
            else:
                cur = self.build_mamba_layer(rs_inp, cur, il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                inpL = ggml.get_rows(ctx0, inpL, inp_out_ids)

            # residual
            cur = ggml.add(ctx0, cur, inpL)

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
