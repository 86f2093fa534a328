"""src/models/delta-net-base.cpp: llm_build_delta_net_base, the gated delta net of Qwen3-Next
and Qwen3.5 (and the conv state they share).

llama_context sets ``cparams.fused_gdn_ar`` and ``fused_gdn_ch`` to true with no auto
resolution (llama-context.cpp), so build_delta_net always takes build_delta_net_fused
(ggml_gated_delta_net); the chunked and autoregressive decompositions are unreachable in
this llama.cpp and are not rebuilt. ``cparams.n_rs_seq`` is 0 (llama-cli's default: no
rollback snapshots), so build_conv_state and build_recurrent_attn write one slot.
"""

from __future__ import annotations

from kvgui.core.memory.builders.common import GraphContext, InpRS
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Tensor


class DeltaNetBase(GraphContext):
    def build_delta_net_fused(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor, b: Tensor,
                              s: Tensor, il: int) -> tuple[Tensor, Tensor]:
        ctx0 = self.ctx0
        n_tokens, n_seqs = q.ne[2], q.ne[3]
        s_v, h_v = v.ne[0], v.ne[1]
        # K=1: the output carries the final state only
        result = ggml.gated_delta_net(ctx0, q, k, v, g, b, s, 1)
        rs = ggml.row_size
        output = ggml.view_4d(ctx0, result, s_v, h_v, n_tokens, n_seqs,
                              rs(result.type, s_v), rs(result.type, s_v * h_v),
                              rs(result.type, s_v * h_v * n_tokens), 0)
        new_state = ggml.view_4d(ctx0, result, s_v, s_v, h_v, n_seqs,
                                 rs(result.type, s_v), rs(result.type, s_v * s_v),
                                 rs(result.type, s_v * s_v * h_v),
                                 rs(result.type, s_v * h_v * n_tokens * n_seqs))
        return output, new_state

    def build_delta_net(self, q: Tensor, k: Tensor, v: Tensor, g: Tensor, b: Tensor,
                        s: Tensor, il: int) -> tuple[Tensor, Tensor]:
        # fused_gdn_ar and fused_gdn_ch are always on (see the module docstring)
        return self.build_delta_net_fused(q, k, v, g, b, s, il)

    def build_conv_state(self, inp: InpRS, conv_states_all: Tensor, qkv_mixed: Tensor,
                         conv_kernel_size: int, conv_channels: int, il: int) -> Tensor:
        ctx0, cb, gf = self.ctx0, self.cb, self.gf
        mctx_cur = inp.mctx
        kv_head, mem_size = mctx_cur.get_head(), mctx_cur.get_size()
        n_seqs = self.n_seqs

        conv_states = self.build_rs(inp, conv_states_all, self.hparams.n_embd_r(), n_seqs)
        cb(conv_states, "conv_states", il)

        conv_states = ggml.reshape_3d(ctx0, conv_states, conv_kernel_size - 1, conv_channels,
                                      n_seqs)
        cb(conv_states, "conv_states_reshaped", il)

        qkv_mixed = ggml.transpose(ctx0, qkv_mixed)
        cb(qkv_mixed, "qkv_mixed_transposed", il)

        conv_input = ggml.concat(ctx0, conv_states, qkv_mixed, 0)
        cb(conv_input, "conv_input", il)

        row_count = (conv_kernel_size - 1) * conv_channels
        row_size = ggml.row_size(conv_states_all.type, row_count)

        # cparams.n_rs_seq == 0
        s_idx = conv_input.ne[0] - conv_states.ne[0]
        s_slot = 0
        conv_state_last = ggml.view_3d(ctx0, conv_input, conv_kernel_size - 1, conv_channels,
                                       n_seqs, conv_input.nb[1], conv_input.nb[2],
                                       ggml.row_size(conv_input.type, s_idx))
        cb(conv_state_last, "conv_state_last", il)
        conv_state_update = ggml.view_2d(ctx0, conv_states_all, row_count, n_seqs,
                                         conv_states_all.nb[1],
                                         (s_slot * mem_size + kv_head) * row_size)
        cb(conv_state_update, "conv_state_update", il)
        gf.expand(ggml.cpy(ctx0, conv_state_last, conv_state_update))
        return conv_input

    def build_recurrent_attn(self, inp: InpRS, ssm_states_all: Tensor, q: Tensor, k: Tensor,
                             v: Tensor, g: Tensor, b: Tensor, s: Tensor, il: int) -> Tensor:
        ctx0, cb, hp = self.ctx0, self.cb, self.hparams
        kv_head = inp.mctx.get_head()
        n_seqs = s.ne[3]
        # cparams.n_rs_seq == 0: no snapshots kept
        output, new_state = self.build_delta_net(q, k, v, g, b, s, il)
        cb(output, "attn_output", il)
        cb(new_state, "new_state", il)
        self.gf.expand(ggml.cpy(ctx0, new_state, ggml.view_2d(
            ctx0, ssm_states_all, hp.n_embd_s(), n_seqs, ssm_states_all.nb[1],
            kv_head * hp.n_embd_s() * ggml.element_size(ssm_states_all))))
        return output


def build_gdn_l2_norm(ctx: ggml.Context, x: Tensor, eps: float) -> Tensor:
    """models.h build_gdn_l2_norm: an RMS norm scaled by 1/sqrt(n)."""
    n = x.ne[0]
    assert isinstance(n, int)
    return ggml.scale(ctx, ggml.rms_norm(ctx, x, eps / n), 1.0 / n ** 0.5)
