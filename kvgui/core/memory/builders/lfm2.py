"""src/models/lfm2.cpp: llama_model_lfm2::graph<iswa> (LFM2: gated short convolutions with a
recurrent state between attention layers; llama_memory_hybrid)."""

from __future__ import annotations

import math
from typing import ClassVar

from kvgui.core.memory.builders.common import (
    FFN_PAR,
    FFN_SILU,
    NORM_RMS,
    GraphContext,
    InpAttnKV,
    InpAttnKVIswa,
    InpRS,
    RecurrentMemory,
    Result,
)
from kvgui.core.memory.builders.hparams import Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Tensor
from kvgui.core.model.info import ModelInfo

N_RS_SEQ = 0  # cparams.n_rs_seq: no partial rollback states (llama-cli's default)


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: the short-conv cache length; every layer dense (no MoE here)."""
    hp.n_shortconv_l_cache = hp.key_int("shortconv.l_cache")
    hp.n_layer_dense_lead = hp.n_layer


class Lfm2Graph(GraphContext):
    # LLM_TENSOR_OUTPUT_NORM_LFM2 ("a fix for a wrong tensor name")
    model_names: ClassVar[dict[str, str]] = {"output_norm": "token_embd_norm.weight"}

    def build_dense_feed_forward(self, cur: Tensor, il: int) -> Tensor:
        layer = self.model.layers[il]
        assert layer.ffn_up_b is None and layer.ffn_gate_b is None and layer.ffn_down_b is None
        return self.build_ffn(cur,
                              layer.ffn_up, None, None,
                              layer.ffn_gate, None, None,
                              layer.ffn_down, None, None,
                              None, FFN_SILU, FFN_PAR, il)

    def build_attn_block(self, cur: Tensor, inp_pos: Tensor, inp_attn: InpAttnKV | InpAttnKVIswa,
                         il: int) -> Tensor:
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        layer = self.model.layers[il]
        assert hp.n_embd_v_gqa(il) == hp.n_embd_k_gqa(il)
        n_embd_head = hp.n_embd_head_v()
        n_head_kv = hp.n_head_kv(il)

        q, k, v = self.build_qkv(layer, cur, n_embd_head, self.n_head, n_head_kv, il)

        # qk norm
        q = self.build_norm(q, layer.attn_q_norm, None, NORM_RMS, il)
        cb(q, "model.layers.{}.self_attn.q_layernorm", il)
        k = self.build_norm(k, layer.attn_k_norm, None, NORM_RMS, il)
        cb(k, "model.layers.{}.self_attn.k_layernorm", il)

        # RoPE
        q = ggml.rope_ext(ctx0, q, inp_pos, None)
        k = ggml.rope_ext(ctx0, k, inp_pos, None)

        cur = self.build_attn(inp_attn, layer.wo, None, layer.wo_s, q, k, v, None, None, None,
                              1.0 / math.sqrt(n_embd_head), il)

        cb(cur, "model.layers.{}.self_attn.out_proj", il)

        return cur

    def build_shortconv_block(self, cur: Tensor, inp_recr: InpRS, il: int) -> Tensor:
        ctx0, hp, cb, gf = self.ctx0, self.hparams, self.cb, self.gf
        layer = self.model.layers[il]
        mctx_cur: RecurrentMemory = inp_recr.mctx
        kv_head = mctx_cur.get_head()
        n_seq_tokens = self.n_seq_tokens
        n_seqs = self.n_seqs

        assert hp.n_shortconv_l_cache > 1
        d_conv = hp.n_shortconv_l_cache - 1

        # {n_embd, n_tokens} => {n_embd, n_seq_tokens, n_seqs}
        cur = ggml.reshape_3d(ctx0, cur, cur.ne[0], n_seq_tokens, n_seqs)

        shortconv = layer.shortconv
        in_proj, conv_kernel, out_proj = shortconv.in_proj, shortconv.conv, shortconv.out_proj
        assert in_proj is not None and conv_kernel is not None and out_proj is not None
        bcx = self.build_lora_mm(in_proj, cur)
        cb(bcx, "model.layers.{}.conv.in_proj", il)

        n_chunks = 3
        chunk_size = bcx.ne[0] // n_chunks
        es = ggml.element_size(bcx)
        b = ggml.view_3d(ctx0, bcx, chunk_size, bcx.ne[1], bcx.ne[2], bcx.nb[1], bcx.nb[2],
                         0 * chunk_size * es)
        c = ggml.view_3d(ctx0, bcx, chunk_size, bcx.ne[1], bcx.ne[2], bcx.nb[1], bcx.nb[2],
                         1 * chunk_size * es)
        x = ggml.view_3d(ctx0, bcx, chunk_size, bcx.ne[1], bcx.ne[2], bcx.nb[1], bcx.nb[2],
                         2 * chunk_size * es)

        bx = ggml.transpose(ctx0, ggml.mul(ctx0, b, x))

        # read conv state
        conv_state = mctx_cur.get_r_l(il)
        conv_rs = self.build_rs(inp_recr, conv_state, hp.n_embd_r(), n_seqs)
        conv = ggml.reshape_3d(ctx0, conv_rs, d_conv, hp.n_embd, n_seqs)

        # causal prepends the state, non-causal pads symmetrically for a centered window
        if hp.causal_attn:
            bx = ggml.concat(ctx0, conv, bx, 0)
        else:
            pad = (hp.n_shortconv_l_cache - 1) // 2
            left = ggml.cont(ctx0, ggml.view_3d(ctx0, conv, pad, hp.n_embd, n_seqs, conv.nb[1],
                                                conv.nb[2], (d_conv - pad) * conv.nb[0]))
            bx = ggml.pad_ext(ctx0, ggml.concat(ctx0, left, bx, 0), 0, pad, 0, 0, 0, 0, 0, 0)

        # write conv states: slot 0 = the final state, slot s = s tokens back (rollback)
        k = N_RS_SEQ + 1 if hp.causal_attn and N_RS_SEQ > 0 else 1
        n_written = min(n_seq_tokens, k) if isinstance(n_seq_tokens, int) else k
        mem_size = mctx_cur.get_size()
        row_size = ggml.row_size(conv_state.type, d_conv * self.n_embd)

        for slot in range(n_written):
            conv_snap = ggml.view_3d(ctx0, bx, d_conv, bx.ne[1], bx.ne[2], bx.nb[1], bx.nb[2],
                                     (bx.ne[0] - d_conv - slot) * ggml.element_size(bx))
            gf.expand(ggml.cpy(ctx0, conv_snap, ggml.view_2d(
                ctx0, conv_state, d_conv * self.n_embd, n_seqs, conv_state.nb[1],
                (slot * mem_size + kv_head) * row_size)))

        conv_out = ggml.ssm_conv(ctx0, bx, conv_kernel)
        cb(conv_out, "model.layers.{}.conv.conv", il)

        y = ggml.mul(ctx0, c, conv_out)
        y = self.build_lora_mm(out_proj, y)
        cb(y, "model.layers.{}.conv.out_proj", il)
        # {n_embd, n_seq_tokens, n_seqs} => {n_embd, n_tokens}
        y = ggml.reshape_2d(ctx0, y, y.ne[0], n_seq_tokens * n_seqs)

        return y

    def build(self) -> Result:
        ctx0, hp, model, cb = self.ctx0, self.hparams, self.model, self.cb
        iswa = hp.n_swa > 0  # build_arch_graph: graph<true> for LLAMA_SWA_TYPE_STANDARD

        assert model.tok_embd is not None
        cur = self.build_inp_embd(model.tok_embd)
        cb(cur, "model.embed_tokens", -1)

        self.gf.expand(cur)

        inp_hybrid = self.build_inp_mem_hybrid_iswa() if iswa else self.build_inp_mem_hybrid()

        inp_pos = self.build_inp_pos()
        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            is_moe_layer = il >= hp.n_layer_dense_lead
            assert not is_moe_layer, "LFM2 has no MoE layers (lfm2moe is its own architecture)"

            prev_cur = cur
            cur = self.build_norm(cur, layer.attn_norm, None, NORM_RMS, il)
            cb(cur, "model.layers.{}.operator_norm", il)

            cur = self.build_shortconv_block(cur, inp_hybrid.get_recr(), il) if hp.is_recr(il) \
                else self.build_attn_block(cur, inp_pos, inp_hybrid.get_attn(), il)

            if il == self.n_layer - 1:
                cur = ggml.get_rows(ctx0, cur, inp_out_ids)
                prev_cur = ggml.get_rows(ctx0, prev_cur, inp_out_ids)

            cur = ggml.add(ctx0, prev_cur, cur)

            ffn_norm_out = self.build_norm(cur, layer.ffn_norm, None, NORM_RMS, il)
            cb(ffn_norm_out, "model.layers.{}.ffn_norm", il)

            ffn_out = self.build_dense_feed_forward(ffn_norm_out, il)
            cb(ffn_norm_out, "model.layers.{}.ffn_out", il)

            cur = ggml.add(ctx0, cur, ffn_out)

            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

        cur = self.build_norm(cur, model.output_norm, None, NORM_RMS, -1)
        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)
        cb(cur, "result_output", -1)

        self.res.t_logits = cur

        return self.finish(cur)
