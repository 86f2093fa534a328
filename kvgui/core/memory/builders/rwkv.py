"""src/models/rwkv6.cpp + rwkv6-base.cpp and rwkv7.cpp + rwkv7-base.cpp:
llama_model_rwkv6::graph and llama_model_rwkv7::graph (RWKV-6 "Finch" and RWKV-7 "Goose":
token shift and WKV state in llama_memory_recurrent, time mix and channel mix per layer).

The time mix's ggml_new_tensor_4d "dummy" / "tmp" shapes for ggml_repeat are graph leafs
that ggml-alloc places like any other tensor (they are in the compute buffer)."""

from __future__ import annotations

from typing import ClassVar

from kvgui.core.memory.builders.common import NORM, GraphContext, InpRS, LayerWeights, Result
from kvgui.core.memory.builders.hparams import Hparams
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Loc, Tensor
from kvgui.core.memory.graph.ops import F32
from kvgui.core.model.info import ModelInfo

_MIX = ("w0", "w1", "w2", "a0", "a1", "a2", "v0", "v1", "v2", "g1", "g2", "k_k", "k_a", "r_k",
        "lerp_x", "lerp_w", "lerp_k", "lerp_v", "lerp_r", "lerp_g", "lerp_fused", "first",
        "decay", "decay_w1", "decay_w2", "key", "value", "receptance", "gate", "ln", "output")
RWKV_TENSORS = {f"time_mix_{m}": f"time_mix_{m}.weight" for m in _MIX} | {
    "time_mix_ln_b": "time_mix_ln.bias", "time_mix_receptance_b": "time_mix_receptance.bias",
    "time_mix_key_b": "time_mix_key.bias", "time_mix_value_b": "time_mix_value.bias",
    "attn_norm_2_b": "attn_norm_2.bias",
} | {f"channel_mix_{m}": f"channel_mix_{m}.weight"
     for m in ("lerp_k", "lerp_r", "key", "value", "receptance")}


def hparams(hp: Hparams, model: ModelInfo) -> None:
    """load_arch_hparams: the WKV head size, the token shift count (2), RWKV-6's rescale."""
    hp.wkv_head_size = hp.key_int("wkv.head_size")
    hp.rescale_every_n_layers = hp.key_int("rescale_every_n_layers")
    hp.token_shift_count = hp.key_int("token_shift_count", 2)


class RwkvGraph(GraphContext):
    """The layer loop both versions share (they differ in the time / channel mix)."""

    layer_names: ClassVar[dict[str, str]] = RWKV_TENSORS

    def time_mix(self, inp: InpRS, cur: Tensor, x_prev: Tensor, il: int) -> Tensor:
        raise NotImplementedError

    def channel_mix(self, layer: LayerWeights, cur: Tensor, x_prev: Tensor) -> Tensor:
        raise NotImplementedError

    def build(self) -> Result:
        ctx0, hp, model, cb, gf = self.ctx0, self.hparams, self.model, self.cb, self.gf
        assert hp.token_shift_count == 2
        n_embd, n_seq_tokens, n_seqs, n_tokens = self.n_embd, self.n_seq_tokens, self.n_seqs, \
            self.n_tokens

        assert model.tok_embd is not None
        inpL = self.build_inp_embd(model.tok_embd)
        inpL = self.build_norm(inpL, model.tensor("token_embd_norm.weight", Loc("layer", 0)),
                               model.tensor("token_embd_norm.bias", Loc("layer", 0)), NORM, 0)

        rs_inp = self.build_rs_inp()

        inp_out_ids = self.build_inp_out_ids()

        for il in self.layers():
            layer = model.layers[il]
            inpL = ggml.reshape_3d(ctx0, inpL, n_embd, n_seq_tokens, n_seqs)

            token_shift = self.build_rwkv_token_shift_load(rs_inp, il)

            att_shift = ggml.view_3d(ctx0, token_shift, n_embd, 1, n_seqs, token_shift.nb[1],
                                     token_shift.nb[2], 0)
            ffn_shift = ggml.view_3d(ctx0, token_shift, n_embd, 1, n_seqs, token_shift.nb[1],
                                     token_shift.nb[2], n_embd * ggml.element_size(token_shift))

            att_norm = self.build_norm(inpL, layer.attn_norm, layer.attn_norm_b, NORM, il)
            cb(att_norm, "attn_norm", il)

            x_prev = ggml.concat(ctx0, att_shift, ggml.view_3d(
                ctx0, att_norm, n_embd, n_seq_tokens - 1, n_seqs, att_norm.nb[1], att_norm.nb[2],
                0), 1)

            cur = self.time_mix(rs_inp, att_norm, x_prev, il)

            ffn_inp = ggml.add(ctx0, cur, inpL)
            cb(ffn_inp, "ffn_inp", il)

            ffn_norm = self.build_norm(ffn_inp, layer.attn_norm_2, layer.attn_norm_2_b, NORM, il)
            cb(ffn_norm, "ffn_norm", il)

            x_prev = ggml.concat(ctx0, ffn_shift, ggml.view_3d(
                ctx0, ffn_norm, n_embd, n_seq_tokens - 1, n_seqs, ffn_norm.nb[1], ffn_norm.nb[2],
                0), 1)

            es = ggml.element_size(att_norm)
            token_shift = ggml.concat(
                ctx0,
                ggml.view_3d(ctx0, att_norm, n_embd, 1, n_seqs, att_norm.nb[1], att_norm.nb[2],
                             (n_seq_tokens - 1) * n_embd * es),
                ggml.view_3d(ctx0, ffn_norm, n_embd, 1, n_seqs, ffn_norm.nb[1], ffn_norm.nb[2],
                             (n_seq_tokens - 1) * n_embd * ggml.element_size(ffn_norm)),
                1)
            gf.expand(self.build_rwkv_token_shift_store(rs_inp, token_shift, il))

            ffn_inp = ggml.reshape_2d(ctx0, ffn_inp, n_embd, n_tokens)
            ffn_norm = ggml.reshape_2d(ctx0, ffn_norm, n_embd, n_tokens)
            x_prev = ggml.reshape_2d(ctx0, x_prev, n_embd, n_tokens)
            cur = self.reshape_cur(cur)

            if il == self.n_layer - 1:
                ffn_inp = ggml.get_rows(ctx0, ffn_inp, inp_out_ids)
                ffn_norm = ggml.get_rows(ctx0, ffn_norm, inp_out_ids)
                x_prev = ggml.get_rows(ctx0, x_prev, inp_out_ids)
                cur = self.rows_of_cur(cur, inp_out_ids)
            cur = self.channel_mix(layer, ffn_norm, x_prev)
            cur = ggml.add(ctx0, cur, ffn_inp)

            cur = self.rescale(cur, il)
            cur = self.build_cvec(cur, il)
            cb(cur, "l_out", il)

            inpL = cur
        cur = inpL
        cur = self.build_norm(cur, model.output_norm,
                               model.tensor("output_norm.bias", Loc("output")), NORM, -1)
        cb(cur, "result_norm", -1)
        self.res.t_embd = cur

        assert model.output is not None
        cur = self.build_lora_mm(model.output, cur, model.output_s)
        cb(cur, "result_output", -1)
        self.res.t_logits = cur

        return self.finish(cur)

    def reshape_cur(self, cur: Tensor) -> Tensor:
        return cur

    def rows_of_cur(self, cur: Tensor, inp_out_ids: Tensor) -> Tensor:
        return cur

    def rescale(self, cur: Tensor, il: int) -> Tensor:
        return cur

    def store_wkv_state(self, wkv_output: Tensor, il: int, inp: InpRS) -> Tensor:
        """The output rows of a WKV op and the copy of its new state into the cache."""
        ctx0, hp = self.ctx0, self.hparams
        n_embd, n_tokens, n_seqs = self.n_embd, self.n_tokens, self.n_seqs
        s_l = inp.mctx.get_s_l(il)
        cur = ggml.view_1d(ctx0, wkv_output, n_embd * n_tokens, 0)
        wkv_state = ggml.view_1d(ctx0, wkv_output, n_embd * hp.wkv_head_size * n_seqs,
                                 n_embd * n_tokens * 4)
        self.gf.expand(ggml.cpy(ctx0, wkv_state, ggml.view_1d(
            ctx0, s_l, hp.n_embd_s() * n_seqs,
            hp.n_embd_s() * inp.mctx.get_head() * ggml.element_size(s_l))))
        return cur


class Rwkv6Graph(RwkvGraph):
    def reshape_cur(self, cur: Tensor) -> Tensor:
        return ggml.reshape_2d(self.ctx0, cur, self.n_embd, self.n_tokens)

    def rows_of_cur(self, cur: Tensor, inp_out_ids: Tensor) -> Tensor:
        return ggml.get_rows(self.ctx0, cur, inp_out_ids)

    def rescale(self, cur: Tensor, il: int) -> Tensor:
        every = self.hparams.rescale_every_n_layers
        if every != 0 and (il + 1) % every == 0:
            cur = ggml.scale(self.ctx0, cur, 0.5)
        return cur

    def channel_mix(self, layer: LayerWeights, cur: Tensor, x_prev: Tensor) -> Tensor:
        ctx0 = self.ctx0
        sx = ggml.sub(ctx0, x_prev, cur)
        assert layer.channel_mix_lerp_k is not None and layer.channel_mix_lerp_r is not None
        assert layer.channel_mix_receptance is not None and layer.channel_mix_key is not None
        assert layer.channel_mix_value is not None
        xk = ggml.add(ctx0, ggml.mul(ctx0, sx, layer.channel_mix_lerp_k), cur)
        xr = ggml.add(ctx0, ggml.mul(ctx0, sx, layer.channel_mix_lerp_r), cur)
        r = ggml.sigmoid(ctx0, self.build_lora_mm(layer.channel_mix_receptance, xr))
        k = ggml.sqr(ctx0, ggml.relu(ctx0, self.build_lora_mm(layer.channel_mix_key, xk)))
        return ggml.mul(ctx0, r, self.build_lora_mm(layer.channel_mix_value, k))

    def time_mix(self, inp: InpRS, cur: Tensor, x_prev: Tensor, il: int) -> Tensor:
        ctx0, hp = self.ctx0, self.hparams
        layer = self.model.layers[il]
        n_tokens, n_seqs, n_seq_tokens = self.n_tokens, self.n_seqs, self.n_seq_tokens
        n_embd = hp.n_embd
        head_size = hp.wkv_head_size
        n_head = n_embd // head_size
        n_head_kv = hp.n_head_kv(il)

        is_qrwkv = layer.time_mix_first is None

        sx = ggml.sub(ctx0, x_prev, cur)
        sx = ggml.reshape_2d(ctx0, sx, n_embd, n_tokens)
        cur = ggml.reshape_2d(ctx0, cur, n_embd, n_tokens)

        w1, w2 = layer.time_mix_w1, layer.time_mix_w2
        assert w1 is not None and w2 is not None and layer.time_mix_lerp_x is not None
        xxx = ggml.add(ctx0, ggml.mul(ctx0, sx, layer.time_mix_lerp_x), cur)
        n5 = w1.ne[1]
        assert isinstance(n5, int)
        xxx = ggml.reshape_4d(ctx0, ggml.tanh(ctx0, ggml.mul_mat(ctx0, w1, xxx)), n5 // 5, 1, 5,
                              n_tokens)
        xxx = ggml.cont(ctx0, ggml.permute(ctx0, xxx, 0, 1, 3, 2))
        xxx = ggml.mul_mat(ctx0, ggml.reshape_4d(ctx0, w2, w2.ne[0], w2.ne[1], 1, 5), xxx)

        def part(i: int) -> Tensor:
            return ggml.view_2d(ctx0, xxx, n_embd, n_tokens, xxx.nb[1], n_embd * n_tokens * 4 * i)

        if layer.time_mix_lerp_fused is not None:
            sx = ggml.reshape_3d(ctx0, sx, n_embd, 1, n_tokens)
            cur = ggml.reshape_3d(ctx0, cur, n_embd, 1, n_tokens)
            xxx = ggml.add(ctx0, ggml.mul(ctx0, ggml.add(ctx0, xxx, layer.time_mix_lerp_fused),
                                          sx), cur)
            xw, xk, xv, xr, xg = (part(i) for i in range(5))
        else:
            xw, xk, xv, xr, xg = (part(i) for i in range(5))
            lerps = (layer.time_mix_lerp_w, layer.time_mix_lerp_k, layer.time_mix_lerp_v,
                     layer.time_mix_lerp_r, layer.time_mix_lerp_g)
            assert all(t is not None for t in lerps)
            xw, xk, xv, xr, xg = (ggml.add(ctx0, ggml.mul(ctx0, ggml.add(ctx0, x, lerp), sx), cur)
                                  for x, lerp in zip((xw, xk, xv, xr, xg), lerps, strict=True)
                                  if lerp is not None)
        assert layer.time_mix_receptance is not None and layer.time_mix_key is not None
        assert layer.time_mix_value is not None and layer.time_mix_gate is not None
        r = self.build_lora_mm(layer.time_mix_receptance, xr)
        k = self.build_lora_mm(layer.time_mix_key, xk)
        v = self.build_lora_mm(layer.time_mix_value, xv)
        if layer.time_mix_receptance_b is not None:
            r = ggml.add(ctx0, r, layer.time_mix_receptance_b)
        if layer.time_mix_key_b is not None:
            k = ggml.add(ctx0, k, layer.time_mix_key_b)
        if layer.time_mix_value_b is not None:
            v = ggml.add(ctx0, v, layer.time_mix_value_b)
        g = self.build_lora_mm(layer.time_mix_gate, xg)
        g = ggml.sigmoid(ctx0, g) if is_qrwkv else ggml.silu(ctx0, g)
        if n_head_kv not in (0, n_head):
            assert n_head % n_head_kv == 0
            k = ggml.reshape_4d(ctx0, k, head_size, 1, n_head_kv, n_tokens)
            v = ggml.reshape_4d(ctx0, v, head_size, 1, n_head_kv, n_tokens)
            tmp = ggml.new_tensor_4d(ctx0, F32, head_size, n_head // n_head_kv, n_head_kv,
                                     n_tokens)
            k = ggml.repeat(ctx0, k, tmp)
            v = ggml.repeat(ctx0, v, tmp)
        k = ggml.reshape_3d(ctx0, k, head_size, n_head, n_tokens)
        v = ggml.reshape_3d(ctx0, v, head_size, n_head, n_tokens)
        r = ggml.reshape_3d(ctx0, r, head_size, n_head, n_tokens)

        assert layer.time_mix_decay_w1 is not None and layer.time_mix_decay_w2 is not None
        assert layer.time_mix_decay is not None
        w = ggml.mul_mat(ctx0, layer.time_mix_decay_w2,
                         ggml.tanh(ctx0, ggml.mul_mat(ctx0, layer.time_mix_decay_w1, xw)))
        w = ggml.add(ctx0, w, layer.time_mix_decay)
        w = ggml.exp(ctx0, ggml.neg(ctx0, ggml.exp(ctx0, w)))
        w = ggml.reshape_3d(ctx0, w, head_size, n_head, n_tokens)

        if is_qrwkv:
            k = ggml.sub(ctx0, k, ggml.mul(ctx0, k, w))
        wkv_state = self.build_rs(inp, inp.mctx.get_s_l(il), hp.n_embd_s(), n_seqs)

        if is_qrwkv:
            raise NotImplementedError("qrwkv (ggml_gated_linear_attn) is rwkv6qwen2's")
        assert layer.time_mix_first is not None
        wkv_output = ggml.rwkv_wkv6(ctx0, k, v, r, layer.time_mix_first, w, wkv_state)
        cur = self.store_wkv_state(wkv_output, il, inp)

        # group norm with head_count groups
        cur = ggml.reshape_3d(ctx0, cur, n_embd // n_head, n_head, n_tokens)
        cur = ggml.norm(ctx0, cur, 64e-5)
        cur = ggml.reshape_2d(ctx0, cur, n_embd, n_tokens)
        assert layer.time_mix_ln is not None and layer.time_mix_ln_b is not None
        cur = ggml.add(ctx0, ggml.mul(ctx0, cur, layer.time_mix_ln), layer.time_mix_ln_b)
        cur = ggml.mul(ctx0, cur, g)
        assert layer.time_mix_output is not None
        cur = self.build_lora_mm(layer.time_mix_output, cur)

        return ggml.reshape_3d(ctx0, cur, n_embd, n_seq_tokens, n_seqs)


class Rwkv7Graph(RwkvGraph):
    v_first: Tensor | None = None

    def channel_mix(self, layer: LayerWeights, cur: Tensor, x_prev: Tensor) -> Tensor:
        ctx0 = self.ctx0
        sx = ggml.sub(ctx0, x_prev, cur)
        assert layer.channel_mix_lerp_k is not None and layer.channel_mix_key is not None
        assert layer.channel_mix_value is not None
        xk = ggml.add(ctx0, ggml.mul(ctx0, sx, layer.channel_mix_lerp_k), cur)
        k = ggml.sqr(ctx0, ggml.relu(ctx0, self.build_lora_mm(layer.channel_mix_key, xk)))
        return self.build_lora_mm(layer.channel_mix_value, k)

    def time_mix(self, inp: InpRS, cur: Tensor, x_prev: Tensor, il: int) -> Tensor:
        ctx0, hp = self.ctx0, self.hparams
        layer = self.model.layers[il]
        n_tokens, n_seqs, n_seq_tokens = self.n_tokens, self.n_seqs, self.n_seq_tokens
        n_embd = hp.n_embd
        head_size = hp.wkv_head_size
        head_count = n_embd // head_size

        has_gating = layer.time_mix_g1 is not None and layer.time_mix_g2 is not None

        sx = ggml.sub(ctx0, x_prev, cur)
        dummy = ggml.new_tensor_4d(ctx0, F32, n_embd, n_seq_tokens, n_seqs, 6 if has_gating else 5)
        sx = ggml.repeat(ctx0, sx, dummy)

        assert layer.time_mix_lerp_fused is not None
        xxx = ggml.add(ctx0, ggml.mul(ctx0, sx, layer.time_mix_lerp_fused), cur)

        def part(i: int) -> Tensor:
            return ggml.view_2d(ctx0, xxx, n_embd, n_tokens, xxx.nb[1], n_embd * n_tokens * 4 * i)

        xr, xw, xk, xv, xa = (part(i) for i in range(5))
        xg = part(5) if has_gating else None

        assert layer.time_mix_receptance is not None and layer.time_mix_w1 is not None
        assert layer.time_mix_w2 is not None and layer.time_mix_w0 is not None
        r = self.build_lora_mm(layer.time_mix_receptance, xr)
        w = ggml.add(ctx0, ggml.mul_mat(ctx0, layer.time_mix_w2, ggml.tanh(
            ctx0, ggml.mul_mat(ctx0, layer.time_mix_w1, xw))), layer.time_mix_w0)
        w = ggml.exp(ctx0, ggml.scale(ctx0, ggml.sigmoid(ctx0, w), -0.606531))

        assert layer.time_mix_key is not None and layer.time_mix_value is not None
        k = self.build_lora_mm(layer.time_mix_key, xk)
        v = self.build_lora_mm(layer.time_mix_value, xv)
        if self.v_first is None:
            self.v_first = v
            # layer 0's value-residual weights are loaded and never used (load_arch_tensors)
            _ = (layer.time_mix_v0, layer.time_mix_v1, layer.time_mix_v2)
        else:
            assert layer.time_mix_v0 is not None and layer.time_mix_v1 is not None
            assert layer.time_mix_v2 is not None
            v = ggml.add(ctx0, v, ggml.mul(
                ctx0, ggml.sub(ctx0, self.v_first, v),
                ggml.sigmoid(ctx0, ggml.add(ctx0, ggml.mul_mat(
                    ctx0, layer.time_mix_v2, ggml.mul_mat(ctx0, layer.time_mix_v1, xv)),
                    layer.time_mix_v0))))
        g = None
        if has_gating:
            assert layer.time_mix_g1 is not None and layer.time_mix_g2 is not None
            assert xg is not None
            g = ggml.mul_mat(ctx0, layer.time_mix_g2,
                             ggml.sigmoid(ctx0, ggml.mul_mat(ctx0, layer.time_mix_g1, xg)))
        assert layer.time_mix_a0 is not None and layer.time_mix_a1 is not None
        assert layer.time_mix_a2 is not None
        a = ggml.sigmoid(ctx0, ggml.add(ctx0, ggml.mul_mat(
            ctx0, layer.time_mix_a2, ggml.mul_mat(ctx0, layer.time_mix_a1, xa)),
            layer.time_mix_a0))

        assert layer.time_mix_k_k is not None and layer.time_mix_k_a is not None
        kk = ggml.reshape_3d(ctx0, ggml.mul(ctx0, k, layer.time_mix_k_k), head_size, head_count,
                             n_tokens)
        kk = ggml.l2_norm(ctx0, kk, 1e-12)

        ka = ggml.mul(ctx0, k, layer.time_mix_k_a)
        k = ggml.add(ctx0, k, ggml.sub(ctx0, ggml.mul(ctx0, a, ka), ka))

        r = ggml.reshape_3d(ctx0, r, head_size, head_count, n_tokens)
        w = ggml.reshape_3d(ctx0, w, head_size, head_count, n_tokens)
        k = ggml.reshape_3d(ctx0, k, head_size, head_count, n_tokens)
        v = ggml.reshape_3d(ctx0, v, head_size, head_count, n_tokens)
        a = ggml.reshape_3d(ctx0, a, head_size, head_count, n_tokens)

        wkv_state = self.build_rs(inp, inp.mctx.get_s_l(il), hp.n_embd_s(), n_seqs)

        wkv_output = ggml.rwkv_wkv7(ctx0, r, w, k, v, ggml.neg(ctx0, kk), ggml.mul(ctx0, kk, a),
                                    wkv_state)
        cur = self.store_wkv_state(wkv_output, il, inp)

        if layer.time_mix_ln is not None and layer.time_mix_ln_b is not None:
            # group norm with head_count groups
            cur = ggml.reshape_3d(ctx0, cur, n_embd // head_count, head_count, n_tokens)
            cur = ggml.norm(ctx0, cur, 64e-5)
            cur = ggml.reshape_2d(ctx0, cur, n_embd, n_tokens)
            cur = ggml.add(ctx0, ggml.mul(ctx0, cur, layer.time_mix_ln), layer.time_mix_ln_b)
        else:
            cur = ggml.reshape_2d(ctx0, cur, n_embd, n_tokens)
        assert layer.time_mix_r_k is not None
        rk = ggml.sum_rows(ctx0, ggml.mul(ctx0, ggml.mul(ctx0, k, r), ggml.reshape_2d(
            ctx0, layer.time_mix_r_k, head_size, head_count)))
        cur = ggml.add(ctx0, cur, ggml.reshape_2d(ctx0, ggml.mul(ctx0, v, rk), n_embd, n_tokens))

        if g is not None:
            cur = ggml.mul(ctx0, cur, g)
        assert layer.time_mix_output is not None
        cur = self.build_lora_mm(layer.time_mix_output, cur)

        return ggml.reshape_3d(ctx0, cur, n_embd, n_seq_tokens, n_seqs)
