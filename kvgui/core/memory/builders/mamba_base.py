"""src/models/mamba-base.cpp: llm_build_mamba_base, the Mamba-1 and Mamba-2 mixers of mamba,
mamba2, jamba, falcon-h1, granitehybrid and nemotron_h.

``cparams.n_rs_seq`` is 0 (llama-cli's default), so the scan returns one state (K = 1) and one
conv / SSM state slot is written per sequence.
"""

from __future__ import annotations

from kvgui.core.memory.builders.common import NORM_RMS, GraphContext, InpRS
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Tensor

N_RS_SEQ = 0  # cparams.n_rs_seq


class MambaBase(GraphContext):
    def build_mamba_layer(self, inp: InpRS, cur: Tensor, il: int) -> Tensor:
        ctx0, hp, gf = self.ctx0, self.hparams, self.gf
        mctx_cur = inp.mctx
        kv_head = mctx_cur.get_head()
        layer = self.model.layers[il]

        d_conv, d_inner, d_state = hp.ssm_d_conv, hp.ssm_d_inner, hp.ssm_d_state
        dt_rank = hp.ssm_dt_rank
        n_head, head_dim = d_inner, 1
        n_seqs, n_seq_tokens = self.n_seqs, self.n_seq_tokens

        conv_states_all = mctx_cur.get_r_l(il)
        ssm_states_all = mctx_cur.get_s_l(il)

        conv = self.build_rs(inp, conv_states_all, hp.n_embd_r(), n_seqs)
        conv = ggml.reshape_3d(ctx0, conv, d_conv - 1, d_inner, n_seqs)

        # {n_embd, n_tokens} => {n_embd, n_seq_tokens, n_seqs}
        cur = ggml.reshape_3d(ctx0, cur, cur.ne[0], n_seq_tokens, n_seqs)

        assert layer.ssm_in is not None
        xz = self.build_lora_mm(layer.ssm_in, cur, layer.ssm_in_s)
        x = ggml.view_3d(ctx0, xz, d_inner, xz.ne[1], xz.ne[2], xz.nb[1], xz.nb[2], 0)
        z = ggml.view_3d(ctx0, xz, d_inner, xz.ne[1], xz.ne[2], xz.nb[1], xz.nb[2],
                         d_inner * ggml.element_size(xz))

        # conv
        conv_x = ggml.concat(ctx0, conv, ggml.transpose(ctx0, x), 0)
        last_conv = ggml.view_3d(ctx0, conv_x, d_conv - 1, d_inner, n_seqs, conv_x.nb[1],
                                 conv_x.nb[2], n_seq_tokens * conv_x.nb[0])
        gf.expand(ggml.cpy(ctx0, last_conv, ggml.view_1d(
            ctx0, conv_states_all, (d_conv - 1) * d_inner * n_seqs,
            kv_head * (d_conv - 1) * d_inner * ggml.element_size(conv_states_all))))

        assert layer.ssm_conv1d is not None and layer.ssm_conv1d_b is not None
        x = ggml.ssm_conv(ctx0, conv_x, layer.ssm_conv1d)
        x = ggml.add(ctx0, x, layer.ssm_conv1d_b)
        x = ggml.silu(ctx0, x)

        # ssm
        assert layer.ssm_x is not None
        x_db = self.build_lora_mm(layer.ssm_x, x)
        dt = ggml.view_3d(ctx0, x_db, dt_rank, n_seq_tokens, n_seqs, x_db.nb[1], x_db.nb[2], 0)
        B = ggml.view_4d(ctx0, x_db, d_state, 1, n_seq_tokens, n_seqs, d_state * x_db.nb[0],
                         x_db.nb[1], x_db.nb[2], ggml.element_size(x_db) * dt_rank)
        C = ggml.view_4d(ctx0, x_db, d_state, 1, n_seq_tokens, n_seqs, d_state * x_db.nb[0],
                         x_db.nb[1], x_db.nb[2], ggml.element_size(x_db) * (dt_rank + d_state))

        # some Mamba variants (FalconMamba, Jamba) apply RMS norm in B, C and dt
        if hp.ssm_dt_b_c_rms or (layer.ssm_dt_norm is not None and layer.ssm_b_norm is not None
                                 and layer.ssm_c_norm is not None):
            dt = self.build_norm(dt, layer.ssm_dt_norm, None, NORM_RMS, il)
            B = self.build_norm(B, layer.ssm_b_norm, None, NORM_RMS, il)
            C = self.build_norm(C, layer.ssm_c_norm, None, NORM_RMS, il)
        else:
            dt = ggml.cont(ctx0, dt)

        assert layer.ssm_dt is not None and layer.ssm_dt_b is not None
        dt = self.build_lora_mm(layer.ssm_dt, dt)
        dt = ggml.add(ctx0, dt, layer.ssm_dt_b)

        cur = x
        x = ggml.reshape_4d(ctx0, x, head_dim, n_head, n_seq_tokens, n_seqs)

        A = layer.ssm_a
        assert A is not None
        size = mctx_cur.get_size()

        def get_ssm_rows(ctx: ggml.Context, states: Tensor, ids: Tensor) -> Tensor:
            ssm = ggml.reshape_4d(ctx, states, d_state, head_dim, n_head, size)
            return ggml.ssm_scan(ctx, ssm, x, dt, A, B, C, ids, 1)

        y_ssm = self.build_rs(inp, ssm_states_all, hp.n_embd_s(), n_seqs, get_ssm_rows)

        # store last states
        gf.expand(ggml.cpy(ctx0,
                           ggml.view_1d(ctx0, y_ssm, d_state * d_inner * n_seqs,
                                        x.nb[3] * x.ne[3]),
                           ggml.view_1d(ctx0, ssm_states_all, d_state * d_inner * n_seqs,
                                        kv_head * d_state * d_inner
                                        * ggml.element_size(ssm_states_all))))

        y = ggml.view_3d(ctx0, y_ssm, d_inner, n_seq_tokens, n_seqs, x.nb[2], x.nb[3], 0)

        assert layer.ssm_d is not None and layer.ssm_out is not None
        y = ggml.add(ctx0, y, ggml.mul(ctx0, cur, layer.ssm_d))
        y = ggml.swiglu_split(ctx0, ggml.cont(ctx0, z), y)

        cur = self.build_lora_mm(layer.ssm_out, y, layer.ssm_out_s)

        # {n_embd, n_seq_tokens, n_seqs} => {n_embd, n_tokens}
        return ggml.reshape_2d(ctx0, cur, cur.ne[0], n_seq_tokens * n_seqs)

    def build_mamba2_layer(self, inp: InpRS, cur: Tensor, il: int) -> Tensor:
        ctx0, hp, gf, cb = self.ctx0, self.hparams, self.gf, self.cb
        mctx_cur = inp.mctx
        kv_head, mem_size = mctx_cur.get_head(), mctx_cur.get_size()
        layer = self.model.layers[il]

        d_conv, d_inner, d_state = hp.ssm_d_conv, hp.ssm_d_inner, hp.ssm_d_state
        n_head = hp.ssm_dt_rank
        head_dim = d_inner // n_head
        n_group = hp.ssm_n_group
        n_seqs, n_seq_tokens = self.n_seqs, self.n_seq_tokens
        K = N_RS_SEQ + 1 if N_RS_SEQ > 0 else 1

        conv_states_all = mctx_cur.get_r_l(il)
        ssm_states_all = mctx_cur.get_s_l(il)
        state_slots = ssm_states_all.ne[1]

        conv = self.build_rs(inp, conv_states_all, hp.n_embd_r(), n_seqs)
        conv = ggml.reshape_3d(ctx0, conv, d_conv - 1, d_inner + 2 * n_group * d_state, n_seqs)

        # {n_embd, d_in_proj} @ {n_embd, n_tokens} => {d_in_proj, n_tokens}
        assert layer.ssm_in is not None
        zxBCdt = self.build_lora_mm(layer.ssm_in, cur, layer.ssm_in_s)
        zxBCdt = ggml.reshape_3d(ctx0, zxBCdt, zxBCdt.ne[0], n_seq_tokens, n_seqs)

        es = ggml.element_size(zxBCdt)
        z = ggml.view_4d(ctx0, zxBCdt, head_dim, n_head, n_seq_tokens, n_seqs,
                         head_dim * zxBCdt.nb[0], zxBCdt.nb[1], zxBCdt.nb[2], 0)
        xBC = ggml.view_3d(ctx0, zxBCdt, d_inner + 2 * n_group * d_state, n_seq_tokens, n_seqs,
                           zxBCdt.nb[1], zxBCdt.nb[2], d_inner * es)
        dt = ggml.view_3d(ctx0, zxBCdt, n_head, n_seq_tokens, n_seqs, zxBCdt.nb[1],
                          zxBCdt.nb[2], (2 * d_inner + 2 * n_group * d_state) * es)

        # conv
        conv_x = ggml.concat(ctx0, conv, ggml.transpose(ctx0, xBC), 0)

        row_count = (d_conv - 1) * (d_inner + 2 * n_group * d_state)
        row_size = ggml.row_size(conv_states_all.type, row_count)
        n_written = min(n_seq_tokens, K) if isinstance(n_seq_tokens, int) else K

        for slot in range(n_written):
            last_conv = ggml.view_3d(ctx0, conv_x, d_conv - 1, d_inner + 2 * n_group * d_state,
                                     n_seqs, conv_x.nb[1], conv_x.nb[2],
                                     (n_seq_tokens - slot) * conv_x.nb[0])
            gf.expand(ggml.cpy(ctx0, last_conv, ggml.view_2d(
                ctx0, conv_states_all, row_count, n_seqs, conv_states_all.nb[1],
                (slot * mem_size + kv_head) * row_size)))

        assert layer.ssm_conv1d is not None and layer.ssm_conv1d_b is not None
        xBC = ggml.ssm_conv(ctx0, conv_x, layer.ssm_conv1d)
        xBC = ggml.add(ctx0, xBC, layer.ssm_conv1d_b)
        xBC = ggml.silu(ctx0, xBC)

        # ssm: V K Q in the SSM/attention duality
        esx = ggml.element_size(xBC)
        x = ggml.view_4d(ctx0, xBC, head_dim, n_head, n_seq_tokens, n_seqs,
                         head_dim * xBC.nb[0], xBC.nb[1], xBC.nb[2], 0)
        B = ggml.view_4d(ctx0, xBC, d_state, n_group, n_seq_tokens, n_seqs,
                         d_state * xBC.nb[0], xBC.nb[1], xBC.nb[2], d_inner * esx)
        C = ggml.view_4d(ctx0, xBC, d_state, n_group, n_seq_tokens, n_seqs,
                         d_state * xBC.nb[0], xBC.nb[1], xBC.nb[2],
                         (d_inner + n_group * d_state) * esx)

        assert layer.ssm_dt_b is not None
        dt = ggml.add(ctx0, ggml.cont(ctx0, dt), layer.ssm_dt_b)

        A = layer.ssm_a
        assert A is not None

        def get_ssm_rows(ctx: ggml.Context, states: Tensor, ids: Tensor) -> Tensor:
            ssm = ggml.reshape_4d(ctx, states, d_state, head_dim, n_head, state_slots)
            return ggml.ssm_scan(ctx, ssm, x, dt, A, B, C, ids, K)

        y_ssm = self.build_rs(inp, ssm_states_all, hp.n_embd_s(), n_seqs, get_ssm_rows)
        D = d_state * d_inner
        state_row = ggml.row_size(ssm_states_all.type, D)
        y_row_size = ggml.row_size(y_ssm.type, D)
        state_offset = ggml.nelements(x) * ggml.element_size(x)

        gf.expand(ggml.cpy(
            ctx0,
            ggml.view_3d(ctx0, y_ssm, D, n_seqs, n_written, y_row_size, y_row_size * n_seqs,
                         state_offset),
            ggml.view_3d(ctx0, ssm_states_all, D, n_seqs, n_written, ssm_states_all.nb[1],
                         mem_size * state_row, kv_head * state_row)))

        y = ggml.view_4d(ctx0, y_ssm, head_dim, n_head, n_seq_tokens, n_seqs, x.nb[1],
                         n_head * x.nb[1], n_seq_tokens * n_head * x.nb[1], 0)

        assert layer.ssm_d is not None and layer.ssm_out is not None
        y = ggml.add(ctx0, y, ggml.mul(ctx0, x, layer.ssm_d))
        cb(y, "mamba2_y_add_d", il)
        y = ggml.swiglu_split(ctx0, ggml.cont(ctx0, z), y)

        # grouped RMS norm
        if layer.ssm_norm is not None:
            y = ggml.reshape_4d(ctx0, y, d_inner // n_group, n_group, n_seq_tokens, n_seqs)
            y = self.build_norm(y, layer.ssm_norm, None, NORM_RMS, il)

        y = ggml.reshape_2d(ctx0, y, d_inner, n_seq_tokens * n_seqs)

        cur = self.build_lora_mm(layer.ssm_out, y, layer.ssm_out_s)
        cb(cur, "mamba_out", il)
        return cur
