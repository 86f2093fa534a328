"""llm_graph_context (src/llama-graph.cpp) and the memory it reads (src/llama-kv-cache.cpp,
llama-kv-cache-iswa.cpp, llama-memory-recurrent.cpp), over the graph IR.

``GraphContext`` holds what an architecture's graph constructor sees in llama.cpp: ``ctx0``,
``gf``, ``hparams``, ``cparams``, ``ubatch`` sizes (``n_tokens``, ``n_outputs``: symbolic), the
model's weights (``model.tok_embd``, ``model.layers[il].wq``, ...) and the memory context; its
methods are llama.cpp's helpers of the same names (build_inp_embd, build_norm, build_ffn,
build_moe_ffn, build_qkv, build_attn*, build_rs, ...), line by line, so that an architecture
module (builders/<arch>.py) reads like src/models/<arch>.cpp. Only what changes the graph's
tensors is kept: no LoRA adapters, control vectors or sampling (none in a reserve).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from kvgui.core.gguf import ggml_types
from kvgui.core.gguf.ggml_types import GGMLType
from kvgui.core.memory.builders.hparams import (
    GATING_SIGMOID,
    GATING_SOFTMAX,
    GATING_SOFTMAX_WEIGHT,
    GATING_SQRT_SOFTPLUS,
    Hparams,
)
from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import Graph, Loc, Tensor
from kvgui.core.memory.graph.ops import F16, F32, I32, I64
from kvgui.core.memory.graph.sym import Dim, K, O, U, W, gt

if TYPE_CHECKING:
    from kvgui.core.model.info import ModelInfo

# llm_ffn_op_type, llm_ffn_gate_type, llm_norm_type
FFN_SILU, FFN_GELU, FFN_RELU, FFN_RELU_SQR, FFN_SWIGLU, FFN_GEGLU, FFN_SWIGLU_OAI_MOE = range(7)
FFN_SEQ, FFN_PAR = range(2)
NORM, NORM_RMS = range(2)

def is_quantized(t: GGMLType) -> bool:
    """ggml_is_quantized (every block type; the cache types among them: q4_0 ... iq4_nl)."""
    return t.block_size > 1


@dataclass(frozen=True)
class GraphParams:
    """What one reserve graph is built for (llm_graph_params / llama_cparams / the ubatch):
    flash attention, the cache types, ``n_seq_max`` (the ubatch's n_seqs), a unified cache
    (one stream) or one stream per sequence, -nkvo, and the shape variables whose value is 1
    (built as the constant 1; see graph/sym.py)."""

    flash_attn: bool
    type_k: GGMLType
    type_v: GGMLType
    n_seq_max: int = 1
    kv_unified: bool = False
    offload_kqv: bool = True
    ones: frozenset[str] = frozenset()


# llama_layer field -> GGUF name suffix after "blk.N." (src/llama-arch.cpp LLM_TENSOR_NAMES);
# an architecture that names a field otherwise passes its own entries (deepseek2: wq_b).
LAYER_TENSORS: dict[str, str] = {
    "attn_norm": "attn_norm.weight", "attn_norm_b": "attn_norm.bias",
    "attn_norm_2": "attn_norm_2.weight",
    "wq": "attn_q.weight", "wk": "attn_k.weight", "wv": "attn_v.weight",
    "wo": "attn_output.weight", "wqkv": "attn_qkv.weight",
    "wq_b": "attn_q.bias", "wk_b": "attn_k.bias", "wv_b": "attn_v.bias",
    "wo_b": "attn_output.bias", "wqkv_b": "attn_qkv.bias",
    "wq_s": "attn_q.scale", "wk_s": "attn_k.scale", "wv_s": "attn_v.scale",
    "wo_s": "attn_output.scale", "wqkv_s": "attn_qkv.scale",
    "attn_q_norm": "attn_q_norm.weight", "attn_k_norm": "attn_k_norm.weight",
    "attn_post_norm": "post_attention_norm.weight", "attn_sinks": "attn_sinks.weight",
    "wq_a": "attn_q_a.weight", "attn_q_a_norm": "attn_q_a_norm.weight",
    "wkv_a_mqa": "attn_kv_a_mqa.weight", "attn_kv_a_norm": "attn_kv_a_norm.weight",
    "wkv_b": "attn_kv_b.weight",
    "ffn_norm": "ffn_norm.weight", "ffn_post_norm": "post_ffw_norm.weight",
    "ffn_gate": "ffn_gate.weight", "ffn_up": "ffn_up.weight", "ffn_down": "ffn_down.weight",
    "ffn_gate_b": "ffn_gate.bias", "ffn_up_b": "ffn_up.bias", "ffn_down_b": "ffn_down.bias",
    "ffn_gate_s": "ffn_gate.scale", "ffn_up_s": "ffn_up.scale", "ffn_down_s": "ffn_down.scale",
    "ffn_gate_inp": "ffn_gate_inp.weight", "ffn_gate_inp_b": "ffn_gate_inp.bias",
    "ffn_gate_exps": "ffn_gate_exps.weight", "ffn_up_exps": "ffn_up_exps.weight",
    "ffn_down_exps": "ffn_down_exps.weight", "ffn_gate_up_exps": "ffn_gate_up_exps.weight",
    "ffn_gate_exps_b": "ffn_gate_exps.bias", "ffn_up_exps_b": "ffn_up_exps.bias",
    "ffn_down_exps_b": "ffn_down_exps.bias",
    "ffn_gate_exps_s": "ffn_gate_exps.scale", "ffn_up_exps_s": "ffn_up_exps.scale",
    "ffn_down_exps_s": "ffn_down_exps.scale",
    "ffn_exp_probs_b": "exp_probs_b.bias",
    "ffn_gate_shexp": "ffn_gate_shexp.weight", "ffn_up_shexp": "ffn_up_shexp.weight",
    "ffn_down_shexp": "ffn_down_shexp.weight",
    "shortconv.conv": "shortconv.conv.weight", "shortconv.in_proj": "shortconv.in_proj.weight",
    "shortconv.out_proj": "shortconv.out_proj.weight",
}
# fam-hybrid: the state-space / linear-attention / RWKV fields (llama-arch.cpp LLM_TENSOR_NAMES)
LAYER_TENSORS.update({
    "ssm_in": "ssm_in.weight", "ssm_in_s": "ssm_in.scale",
    "ssm_conv1d": "ssm_conv1d.weight", "ssm_conv1d_b": "ssm_conv1d.bias",
    "ssm_x": "ssm_x.weight", "ssm_dt": "ssm_dt.weight", "ssm_dt_b": "ssm_dt.bias",
    "ssm_a": "ssm_a", "ssm_d": "ssm_d", "ssm_norm": "ssm_norm.weight",
    "ssm_out": "ssm_out.weight", "ssm_out_s": "ssm_out.scale",
    "ssm_dt_norm": "ssm_dt_norm.weight", "ssm_b_norm": "ssm_b_norm.weight",
    "ssm_c_norm": "ssm_c_norm.weight",
    "ssm_beta_alpha": "ssm_ba.weight", "ssm_beta": "ssm_beta.weight",
    "ssm_beta_s": "ssm_beta.scale", "ssm_alpha": "ssm_alpha.weight",
    "ssm_alpha_s": "ssm_alpha.scale",
    "wqkv_gate": "attn_gate.weight", "wqkv_gate_s": "attn_gate.scale",
    "ffn_gate_inp_shexp": "ffn_gate_inp_shexp.weight",
    "ffn_up_shexp_s": "ffn_up_shexp.scale", "ffn_gate_shexp_s": "ffn_gate_shexp.scale",
    "ffn_down_shexp_s": "ffn_down_shexp.scale",
    "ffn_latent_down": "ffn_latent_down.weight", "ffn_latent_up": "ffn_latent_up.weight",
})


class Weights:
    """llama_model's tensors as leaves of the graph: each a tensor with the file's type and
    shape and where llama.cpp places it (``Loc``); a field the file lacks is None. Every
    tensor the builder touches is recorded in ``used``: a file tensor the graph never reads
    means a variant the builder does not follow (see builders.supports)."""

    def __init__(self, ctx: ggml.Context, model: ModelInfo,
                 layer_names: dict[str, str] | None = None,
                 model_names: dict[str, str] | None = None) -> None:
        self.ctx = ctx
        self.table = {name: (type_id, shape) for name, type_id, shape in model.tensor_table}
        self.names = {**LAYER_TENSORS, **(layer_names or {})}
        self.model_names = {"tok_embd": "token_embd.weight", "output_norm": "output_norm.weight",
                            "output": "output.weight", "output_b": "output.bias",
                            "output_s": "output.scale", **(model_names or {})}
        self.used: set[str] = set()
        self._made: dict[tuple[str, Loc], Tensor] = {}
        self.layers = [LayerWeights(self, il) for il in range(len(model.layers))]

    def tensor(self, name: str, loc: Loc) -> Tensor | None:
        """The file's tensor ``name`` as placed at ``loc`` (one object per place: llama.cpp
        duplicates a tensor used on several devices, TENSOR_DUPLICATED)."""
        found = self._made.get((name, loc))
        if found is None:
            entry = self.table.get(name)
            if entry is None:
                return None
            self.used.add(name)
            type_id, shape = entry
            found = ggml.external(self.ctx, ggml_types.by_id(type_id), shape, name, loc)
            self._made[(name, loc)] = found
        return found

    @property
    def tok_embd(self) -> Tensor | None:
        return self.tensor(self.model_names["tok_embd"], Loc("input"))

    @property
    def output_norm(self) -> Tensor | None:
        return self.tensor(self.model_names["output_norm"], Loc("output"))

    @property
    def output(self) -> Tensor | None:
        """output.weight, or token_embd duplicated for the output layer (tied embeddings)."""
        return self.tensor(self.model_names["output"], Loc("output")) \
            or self.tensor(self.model_names["tok_embd"], Loc("output"))

    @property
    def output_b(self) -> Tensor | None:
        return self.tensor(self.model_names["output_b"], Loc("output"))

    @property
    def output_s(self) -> Tensor | None:
        return self.tensor(self.model_names["output_s"], Loc("output"))

    # --- fam-dense ---
    def get_rope_factors(self, il: int) -> Tensor | None:
        """llama_model::get_rope_factors: the layer's rope_freqs, else LongRoPE's long or
        short factor table (rope_factors_long / _short.weight, one tensor duplicated into
        each layer's buffer). Which of the two is read depends on n_ctx_seq against
        n_ctx_orig_yarn; both have the same shape and buffer, so the graph plans alike with
        either: the short one stands for both, and the long one counts as read."""
        loc = Loc("layer", il)
        freqs = self.tensor("rope_freqs.weight", loc)
        if freqs is not None:
            return freqs
        long = self.tensor("rope_factors_long.weight", loc)
        short = self.tensor("rope_factors_short.weight", loc)
        return short if short is not None else long


class LayerWeights:
    """``model.layers[il]``: its fields by llama.cpp's names (LAYER_TENSORS)."""

    def __init__(self, weights: Weights, il: int, prefix: str = "") -> None:
        self._weights = weights
        self._il = il
        self._prefix = prefix

    def __getattr__(self, field_name: str) -> Tensor | None:
        if field_name.startswith("_"):
            raise AttributeError(field_name)
        key = self._prefix + field_name
        suffix = self._weights.names.get(key)
        if suffix is None:
            raise AttributeError(f"no llama_layer field {key!r}")
        return self._weights.tensor(f"blk.{self._il}.{suffix}", Loc("layer", self._il))

    @property
    def shortconv(self) -> LayerWeights:
        """``layer.shortconv.in_proj`` and the like (LFM2's llama_layer_shortconv)."""
        return LayerWeights(self._weights, self._il, "shortconv.")

    @property
    def rope_freqs(self) -> Tensor | None:
        """rope_freqs.weight: one tensor for all layers, duplicated into each layer's buffer."""
        return self._weights.tensor("rope_freqs.weight", Loc("layer", self._il))


# --- memory: KV cache, recurrent state ----------------------------------------------------

class KVCache:
    """llama_kv_cache: per layer a K (and V) tensor [n_embd_gqa, kv_size, n_stream] in its own
    buffer; ``get_k``/``get_v`` view it, ``cpy_k``/``cpy_v`` store into it (set_rows)."""

    def __init__(self, g: GraphContext, layers: list[int], kv_size: Dim, tag: str) -> None:
        hp, cp = g.hparams, g.cparams
        self.ctx = g.ctx0
        self.hparams = hp
        self.size = kv_size
        self.n_stream = 1 if cp.kv_unified else cp.n_seq_max
        self.v_trans = not cp.flash_attn
        self.is_mla = hp.is_mla()
        self.type_k, self.type_v = cp.type_k, cp.type_v
        self.k: dict[int, Tensor] = {}
        self.v: dict[int, Tensor] = {}
        # layer -> the earlier layer whose cache it reads (llama_memory_i::layer_reuse_cb:
        # gemma3n / gemma4's last layers); set by the architecture (fam-hybrid)
        self.reuse: dict[int, int] = {}
        self.n_embd_head_k_all = 0
        self.n_embd_head_v_all = 0
        for il in layers:
            hk, hv = hp.n_embd_head_k(il), hp.n_embd_head_v(il)
            if self.n_embd_head_k_all == 0:
                self.n_embd_head_k_all = hk
            elif self.n_embd_head_k_all > 0 and self.n_embd_head_k_all != hk:
                self.n_embd_head_k_all = -1
            if not self.is_mla:
                if self.n_embd_head_v_all == 0:
                    self.n_embd_head_v_all = hv
                elif self.n_embd_head_v_all > 0 and self.n_embd_head_v_all != hv:
                    self.n_embd_head_v_all = -1
            n_embd_k_gqa = hp.n_embd_k_gqa(il)
            n_embd_v_gqa = hp.n_embd_v_gqa(il) if not self.v_trans else hp.n_embd_v_gqa_max()
            self.k[il] = ggml.external(self.ctx, self.type_k,
                                       (n_embd_k_gqa, kv_size, self.n_stream),
                                       f"cache_{tag}k_l{il}", Loc("kv", il))
            if not self.is_mla:
                self.v[il] = ggml.external(self.ctx, self.type_v,
                                           (n_embd_v_gqa, kv_size, self.n_stream),
                                           f"cache_{tag}v_l{il}", Loc("kv", il))
        self.attn_rot_k = (self.n_embd_head_k_all > 0 and is_quantized(self.type_k)
                           and hp.n_embd_head_k() % 64 == 0)
        self.attn_rot_v = (self.n_embd_head_v_all > 0 and is_quantized(self.type_v)
                           and hp.n_embd_head_v() % 64 == 0)

    def get_n_kv(self) -> Dim:
        return self.size  # a reserve sees the whole cache (llama_kv_cache_context: init_full)

    def get_k(self, ctx: ggml.Context, il: int) -> Tensor:
        k = self.k[self.reuse.get(il, il)]
        hp = self.hparams
        n_embd_k_gqa = k.ne[0]
        rs = ggml.row_size
        return ggml.view_4d(ctx, k, hp.n_embd_head_k(il), hp.n_head_kv(il), self.get_n_kv(),
                            self.n_stream, rs(k.type, hp.n_embd_head_k(il)),
                            rs(k.type, n_embd_k_gqa), rs(k.type, n_embd_k_gqa * self.size), 0)

    def get_v(self, ctx: ggml.Context, il: int) -> Tensor:
        v = self.v[self.reuse.get(il, il)]
        hp = self.hparams
        n_embd_v_gqa = v.ne[0]
        rs = ggml.row_size
        if not self.v_trans:
            return ggml.view_4d(ctx, v, hp.n_embd_head_v(il), hp.n_head_kv(il), self.get_n_kv(),
                                self.n_stream, rs(v.type, hp.n_embd_head_v(il)),
                                rs(v.type, n_embd_v_gqa), rs(v.type, n_embd_v_gqa * self.size), 0)
        return ggml.view_4d(ctx, v, self.get_n_kv(), hp.n_head_kv(il), hp.n_embd_head_v(il),
                            self.n_stream, rs(v.type, self.size * hp.n_embd_head_v(il)),
                            rs(v.type, self.size), rs(v.type, self.size * n_embd_v_gqa), 0)

    def cpy_k(self, ctx: ggml.Context, k_cur: Tensor, k_idxs: Tensor, il: int) -> Tensor:
        k = self.k[il]
        n_embd_head, n_head, n_tokens = k_cur.ne[0], k_cur.ne[1], k_cur.ne[2]
        n_embd_gqa = n_embd_head * n_head
        k_cur = ggml.view_2d(ctx, k_cur, n_embd_gqa, n_tokens, k_cur.nb[2], 0)
        if k.ne[2] != 1:  # n_stream > 1: merge the streams (the idxs are global)
            k = ggml.reshape_2d(ctx, k, n_embd_gqa, self.size * k.ne[2])
        return ggml.set_rows(ctx, k, k_cur, k_idxs)

    def cpy_v(self, ctx: ggml.Context, v_cur: Tensor, v_idxs: Tensor, il: int) -> Tensor:
        v = self.v[il]
        n_embd_head, n_head, n_tokens = v_cur.ne[0], v_cur.ne[1], v_cur.ne[2]
        n_embd_gqa = n_embd_head * n_head
        n_stream = v.ne[2]
        if not self.v_trans:
            v_cur = ggml.view_2d(ctx, v_cur, n_embd_gqa, n_tokens, v_cur.nb[2], 0)
            if n_stream != 1:
                v = ggml.reshape_2d(ctx, v, n_embd_gqa, self.size * n_stream)
            return ggml.set_rows(ctx, v, v_cur, v_idxs)
        if ggml.row_size(v_cur.type, n_embd_gqa) == v_cur.nb[2]:
            v_cur = ggml.reshape_2d(ctx, v_cur, n_embd_gqa, n_tokens)
        else:
            v_cur = ggml.cont_2d(ctx, v_cur, n_embd_gqa, n_tokens)
        # [TAG_V_CACHE_VARIABLE]
        if isinstance(v.ne[0], int) and isinstance(n_embd_gqa, int) and n_embd_gqa < v.ne[0]:
            v_cur = ggml.pad(ctx, v_cur, v.ne[0] - n_embd_gqa, 0, 0, 0)
        v_view = ggml.reshape_2d(ctx, v, 1, ggml.nelements(v))
        v_cur = ggml.reshape_2d(ctx, v_cur, 1, ggml.nelements(v_cur))
        return ggml.set_rows(ctx, v_view, v_cur, v_idxs)

    def build_input_k_idxs(self, ctx: ggml.Context, n_tokens: Dim) -> Tensor:
        t = ggml.new_tensor_1d(ctx, I64, n_tokens)
        ggml.set_input(t)
        return ggml.set_name(t, "attn_inp_k_idxs")

    def build_input_v_idxs(self, ctx: ggml.Context, n_tokens: Dim) -> Tensor:
        n = n_tokens if not self.v_trans else n_tokens * self.hparams.n_embd_v_gqa_max()
        t = ggml.new_tensor_1d(ctx, I64, n)
        ggml.set_input(t)
        return ggml.set_name(t, "attn_inp_v_idxs")

    def build_input_k_rot(self, ctx: ggml.Context) -> Tensor | None:
        if not self.attn_rot_k:
            return None
        nrot = 64
        while True:  # the largest power of two (from 64) dividing the head size
            nrot *= 2
            if self.n_embd_head_k_all % nrot != 0:
                break
        nrot //= 2
        t = ggml.new_tensor_2d(ctx, F32, nrot, nrot)
        ggml.set_input(t)
        return ggml.set_name(t, "attn_inp_k_rot")

    def build_input_v_rot(self, ctx: ggml.Context) -> Tensor | None:
        if not self.attn_rot_v:
            return None
        t = ggml.new_tensor_2d(ctx, F32, 64, 64)  # (the smallest matrix for V)
        ggml.set_input(t)
        return ggml.set_name(t, "attn_inp_v_rot")


class RecurrentMemory:
    """llama_memory_recurrent: per recurrent layer r [n_embd_r, n_rows] and s [n_embd_s,
    n_rows] (f32) in their own buffers; a reserve sees them whole (init_full: head 0, rs_z 0,
    n_rs = size)."""

    def __init__(self, g: GraphContext, layers: list[int]) -> None:
        hp = g.hparams
        self.size = max(1, g.cparams.n_seq_max)  # mem_size
        n_rows = self.size * (1 + 0)  # (1 + n_rs_seq), n_rs_seq = 0
        self.r_l = {il: ggml.external(g.ctx0, F32, (hp.n_embd_r(), n_rows), f"cache_r_l{il}",
                                      Loc("rs", il)) for il in layers}
        self.s_l = {il: ggml.external(g.ctx0, F32, (hp.n_embd_s(), n_rows), f"cache_s_l{il}",
                                      Loc("rs", il)) for il in layers}
        self.head = 0
        self.rs_z = 0

    def get_n_rs(self) -> int:
        return self.size

    def get_head(self) -> int:
        return self.head

    def get_rs_z(self) -> int:
        return self.rs_z

    def get_size(self) -> int:
        return self.size

    def get_r_l(self, il: int) -> Tensor:
        return self.r_l[il]

    def get_s_l(self, il: int) -> Tensor:
        return self.s_l[il]


# --- graph inputs (llm_graph_input_*) ----------------------------------------------------

@dataclass
class InpAttnKV:
    """llm_graph_input_attn_kv (and, with k_idxs only and no rotations, _attn_k)."""

    mctx: KVCache
    self_k_idxs: Tensor
    self_v_idxs: Tensor | None
    self_kq_mask: Tensor
    self_k_rot: Tensor | None = None
    self_v_rot: Tensor | None = None

    def get_k_idxs(self) -> Tensor:
        return self.self_k_idxs

    def get_v_idxs(self) -> Tensor:
        assert self.self_v_idxs is not None
        return self.self_v_idxs

    def get_kq_mask(self) -> Tensor:
        return self.self_kq_mask


@dataclass
class InpAttnKVIswa:
    """llm_graph_input_attn_kv_iswa: the full-attention and the sliding-window cache."""

    base: InpAttnKV
    swa: InpAttnKV
    self_k_rot_swa: Tensor | None = field(default=None)
    self_v_rot_swa: Tensor | None = field(default=None)


@dataclass
class InpRS:
    """llm_graph_input_rs: which recurrent states to copy."""

    mctx: RecurrentMemory
    s_copy: Tensor
    s_copy_main: Tensor
    s_copy_extra: Tensor


@dataclass
class InpMemHybrid:
    """llm_graph_input_mem_hybrid(_iswa): the attention inputs and the recurrent ones."""

    attn: InpAttnKV | InpAttnKVIswa
    rs: InpRS

    def get_attn(self) -> InpAttnKV | InpAttnKVIswa:
        return self.attn

    def get_recr(self) -> InpRS:
        return self.rs


@dataclass
class Result:
    """llm_graph_result: the graph and the tensors set as outputs (set_outputs)."""

    gf: Graph
    t_logits: Tensor | None = None
    t_embd: Tensor | None = None
    t_h_nextn: Tensor | None = None
    t_inp_embd: Tensor | None = None


def mul_mat_hadamard(ctx: ggml.Context, cur: Tensor, rot: Tensor) -> Tensor:
    """llama_mul_mat_hadamard (src/llama-impl.h)."""
    n = rot.ne[0]
    assert isinstance(n, int)
    if not ggml.is_contiguous(cur):
        res = ggml.cont_2d(ctx, cur, n, ggml.nelements(cur) // n)
    else:
        res = ggml.reshape_2d(ctx, cur, n, ggml.nelements(cur) // n)
    res = ggml.mul_mat(ctx, rot, res)
    return ggml.reshape_4d(ctx, res, cur.ne[0], cur.ne[1], cur.ne[2], cur.ne[3])


class GraphContext:
    """llm_graph_context for one reserve ubatch: ``n_seq_max`` sequences of U tokens."""

    # an architecture's own names for llama_layer fields (LAYER_TENSORS) and for the model's
    # (tok_embd, output_norm, output, ...)
    layer_names: ClassVar[dict[str, str]] = {}
    model_names: ClassVar[dict[str, str]] = {}

    def __init__(self, model: ModelInfo, hparams: Hparams, params: GraphParams) -> None:
        self.ctx0 = ggml.Context()
        self.gf = Graph()
        self.res = Result(self.gf)
        self.hparams = hp = hparams
        self.cparams = params
        self.arch = model.arch
        self.model = Weights(self.ctx0, model, self.layer_names, self.model_names)
        self.n_embd = hp.n_embd
        self.n_layer = hp.n_layer
        self.n_rot = hp.n_rot()
        self.n_head = hp.n_head()
        self.n_head_kv = hp.n_head_kv()
        self.n_embd_head_k = hp.n_embd_head_k()
        self.n_embd_k_gqa = hp.n_embd_k_gqa()
        self.n_embd_head_v = hp.n_embd_head_v()
        self.n_embd_v_gqa = hp.n_embd_v_gqa()
        self.n_expert = hp.n_expert
        self.n_expert_used = hp.n_expert_used()
        u: Dim = 1 if "U" in params.ones else U
        self.n_seqs = params.n_seq_max  # ubatch.n_seqs (= n_seqs_unq in a reserve)
        self.n_seq_tokens = u
        self.n_tokens = params.n_seq_max * u
        self.n_outputs: Dim = 1 if "O" in params.ones else O
        self.mctx: object = None
        self.pins: list[tuple[Tensor, str, int]] = []  # (tensor, what, layer): sched hints

    def build(self) -> Result:
        """The architecture's graph constructor (src/models/<arch>.cpp)."""
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------------------

    def layers(self) -> Iterator[int]:
        """``for (int il = 0; il < n_layer; ++il)``, tagging what is built with the layer."""
        for il in range(self.n_layer):
            self.ctx0.il = il
            yield il
        self.ctx0.il = -1

    def cb(self, cur: Tensor, name: str, il: int) -> None:
        """llama_context::graph_get_cb: names the tensor; "norm" and "l_last" of a layer are
        pinned to the layer's device when n_tokens < 32 or the model is fully offloaded
        (decided by the scheduler, which knows both)."""
        cur.name = f"{name}-{il}" if il >= 0 else name
        if il != -1 and name in ("norm", "l_last"):
            self.pins.append((cur, "layer", il))

    def build_cvec(self, cur: Tensor, il: int) -> Tensor:
        return cur  # (no control vector in a reserve)

    def build_lora_mm(self, w: Tensor, cur: Tensor, w_s: Tensor | None = None) -> Tensor:
        res = ggml.mul_mat(self.ctx0, w, cur)
        if w_s is not None:
            res = ggml.mul(self.ctx0, res, w_s)
        return res

    def build_lora_mm_id(self, w: Tensor, cur: Tensor, ids: Tensor,
                         w_s: Tensor | None = None) -> Tensor:
        ctx0 = self.ctx0
        res = ggml.mul_mat_id(ctx0, w, cur, ids)
        if w_s is not None:
            n_expert, n_tokens = w_s.ne[0], cur.ne[2]
            s = ggml.reshape_3d(ctx0, w_s, 1, n_expert, 1)
            s = ggml.repeat_4d(ctx0, s, 1, n_expert, n_tokens, 1)
            s = ggml.get_rows(ctx0, s, ids)
            res = ggml.mul(ctx0, res, s)
        return res

    def build_norm(self, cur: Tensor, mw: Tensor | None, mb: Tensor | None, type_: int,
                   il: int) -> Tensor:
        ctx0 = self.ctx0
        cur = ggml.norm(ctx0, cur, 0.0) if type_ == NORM else ggml.rms_norm(ctx0, cur, 0.0)
        if mw is not None or mb is not None:
            self.cb(cur, "norm", il)
        if mw is not None:
            cur = ggml.mul(ctx0, cur, mw)
            if mb is not None:
                self.cb(cur, "norm_w", il)
        if mb is not None:
            cur = ggml.add(ctx0, cur, mb)
        return cur

    def build_qkv(self, layer: LayerWeights, cur: Tensor, n_embd_head: int, n_head: int,
                  n_head_kv: int, il: int) -> tuple[Tensor, Tensor, Tensor]:
        """build_qkv with one head size for Q, K and V."""
        return self.build_qkv_heads(layer, cur, n_embd_head, n_head, n_embd_head, n_head_kv,
                                    n_embd_head, n_head_kv, il)

    def build_qkv_heads(self, layer: LayerWeights, cur: Tensor, n_embd_head_q: int,
                        n_head_q: int, n_embd_head_k: int, n_head_k: int, n_embd_head_v: int,
                        n_head_v: int, il: int, reshape: bool = True
                        ) -> tuple[Tensor, Tensor, Tensor]:
        """build_qkv (the overload with a head size and count for each of Q, K, V)."""
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        n_tokens = self.n_tokens
        n_embd_q = n_embd_head_q * n_head_q
        n_embd_k = n_embd_head_k * n_head_k
        if layer.wqkv is not None:
            qkv = self.build_lora_mm(layer.wqkv, cur, layer.wqkv_s)
            cb(qkv, "wqkv", il)
            if layer.wqkv_b is not None:
                qkv = ggml.add(ctx0, qkv, layer.wqkv_b)
                cb(qkv, "wqkv_b", il)
            elif layer.wq_b is not None and layer.wk_b is not None and layer.wv_b is not None:
                qkv_b = ggml.concat(ctx0, ggml.concat(ctx0, layer.wq_b, layer.wk_b, 0),
                                    layer.wv_b, 0)
                qkv = ggml.add(ctx0, qkv, qkv_b)
                cb(qkv, "wqkv_b", il)
            if reshape and hp.f_clamp_kqv > 0.0:
                qkv = ggml.clamp(ctx0, qkv, -hp.f_clamp_kqv, hp.f_clamp_kqv)
                cb(qkv, "wqkv_clamped", il)
            rs = ggml.row_size
            if reshape:
                q = ggml.view_3d(ctx0, qkv, n_embd_head_q, n_head_q, n_tokens,
                                 rs(qkv.type, n_embd_head_q), qkv.nb[1], 0)
                k = ggml.view_3d(ctx0, qkv, n_embd_head_k, n_head_k, n_tokens,
                                 rs(qkv.type, n_embd_head_k), qkv.nb[1], rs(qkv.type, n_embd_q))
                v = ggml.view_3d(ctx0, qkv, n_embd_head_v, n_head_v, n_tokens,
                                 rs(qkv.type, n_embd_head_v), qkv.nb[1],
                                 rs(qkv.type, n_embd_q + n_embd_k))
            else:
                q = ggml.view_2d(ctx0, qkv, n_embd_q, n_tokens, qkv.nb[1], 0)
                k = ggml.view_2d(ctx0, qkv, n_embd_k, n_tokens, qkv.nb[1], rs(qkv.type, n_embd_q))
                v = ggml.view_2d(ctx0, qkv, n_embd_head_v * n_head_v, n_tokens, qkv.nb[1],
                                 rs(qkv.type, n_embd_q + n_embd_k))
                q, k, v = ggml.cont(ctx0, q), ggml.cont(ctx0, k), ggml.cont(ctx0, v)
            return q, k, v
        out = []
        for w, b, w_s, name in ((layer.wq, layer.wq_b, layer.wq_s, "Qcur"),
                                (layer.wk, layer.wk_b, layer.wk_s, "Kcur"),
                                (layer.wv, layer.wv_b, layer.wv_s, "Vcur")):
            assert w is not None, f"layer {il} has no {name} weight"
            x = self.build_lora_mm(w, cur, w_s)
            if reshape:
                cb(x, name, il)
            if b is not None:
                x = ggml.add(ctx0, x, b)
                if reshape:
                    cb(x, name, il)
            if reshape and hp.f_clamp_kqv > 0.0:
                x = ggml.clamp(ctx0, x, -hp.f_clamp_kqv, hp.f_clamp_kqv)
                cb(x, f"{name}_clamped", il)
            out.append(x)
        q, k, v = out
        if reshape:
            q = ggml.reshape_3d(ctx0, q, n_embd_head_q, n_head_q, n_tokens)
            k = ggml.reshape_3d(ctx0, k, n_embd_head_k, n_head_k, n_tokens)
            v = ggml.reshape_3d(ctx0, v, n_embd_head_v, n_head_v, n_tokens)
            cb(q, "Qcur", il)
            cb(k, "Kcur", il)
            cb(v, "Vcur", il)
        return q, k, v

    def build_ffn(self, cur: Tensor, up: Tensor | None, up_b: Tensor | None,
                  up_s: Tensor | None, gate: Tensor | None, gate_b: Tensor | None,
                  gate_s: Tensor | None, down: Tensor | None, down_b: Tensor | None,
                  down_s: Tensor | None, act_scales: Tensor | None, type_op: int,
                  type_gate: int, il: int) -> Tensor:
        ctx0, cb, hp = self.ctx0, self.cb, self.hparams
        tmp = self.build_lora_mm(up, cur) if up is not None else cur
        cb(tmp, "ffn_up", il)
        if up_b is not None:
            tmp = ggml.add(ctx0, tmp, up_b)
            cb(tmp, "ffn_up_b", il)
        if up_s is not None:
            tmp = ggml.mul(ctx0, tmp, up_s)
            cb(tmp, "ffn_up_s", il)
        if gate is not None:
            cur = self.build_lora_mm(gate, tmp if type_gate == FFN_SEQ else cur)
            cb(cur, "ffn_gate", il)
            if gate_b is not None:
                cur = ggml.add(ctx0, cur, gate_b)
                cb(cur, "ffn_gate_b", il)
            if gate_s is not None:
                cur = ggml.mul(ctx0, cur, gate_s)
                cb(cur, "ffn_gate_s", il)
        else:
            cur = tmp
        par = gate is not None and type_gate == FFN_PAR
        if type_op == FFN_SILU:
            limit = hp.swiglu_clamp_shexp[il] if il >= 0 else 0.0
            if par and limit > 1e-6:
                tmp = ggml.clamp(ctx0, tmp, -limit, limit)
                cb(tmp, "ffn_up_clamped", il)
                gate_act = ggml.silu(ctx0, cur)
                cb(gate_act, "ffn_silu", il)
                gate_act = ggml.clamp(ctx0, gate_act, float("-inf"), limit)
                cb(gate_act, "ffn_silu_clamped", il)
                cur = ggml.mul(ctx0, gate_act, tmp)
                cb(cur, "ffn_swiglu_limited", il)
                type_gate = FFN_SEQ
            elif par:
                cur = ggml.swiglu_split(ctx0, cur, tmp)
                cb(cur, "ffn_swiglu", il)
                type_gate = FFN_SEQ
            else:
                cur = ggml.silu(ctx0, cur)
                cb(cur, "ffn_silu", il)
        elif type_op == FFN_GELU:
            if par:
                cur = ggml.geglu_split(ctx0, cur, tmp)
                cb(cur, "ffn_geglu", il)
                type_gate = FFN_SEQ
            else:
                cur = ggml.gelu(ctx0, cur)
                cb(cur, "ffn_gelu", il)
                if act_scales is not None:
                    cur = ggml.div(ctx0, cur, act_scales)
                    cb(cur, "ffn_act", il)
        elif type_op == FFN_RELU:
            if par:
                cur = ggml.reglu_split(ctx0, cur, tmp)
                cb(cur, "ffn_reglu", il)
                type_gate = FFN_SEQ
            else:
                cur = ggml.relu(ctx0, cur)
                cb(cur, "ffn_relu", il)
        elif type_op == FFN_RELU_SQR:
            cur = ggml.relu(ctx0, cur)
            cb(cur, "ffn_relu", il)
            cur = ggml.sqr(ctx0, cur)
            cb(cur, "ffn_sqr(relu)", il)
        elif type_op == FFN_SWIGLU:
            cur = ggml.swiglu(ctx0, cur)
            cb(cur, "ffn_swiglu", il)
        elif type_op == FFN_SWIGLU_OAI_MOE:
            assert par, "LLM_FFN_SWIGLU_OAI_MOE requires a parallel gate"
            cur = ggml.swiglu_oai(ctx0, cur, tmp, 1.702, 7.0)
            cb(cur, "ffn_swiglu_oai", il)
            type_gate = FFN_SEQ
        elif type_op == FFN_GEGLU:
            cur = ggml.geglu(ctx0, cur)
            cb(cur, "ffn_geglu", il)
        else:
            raise NotImplementedError(f"ffn op {type_op}")
        if gate is not None and type_gate == FFN_PAR:
            cur = ggml.mul(ctx0, cur, tmp)
            cb(cur, "ffn_gate_par", il)
        if down is not None:
            cur = self.build_lora_mm(down, cur)
        if down_b is not None:
            cb(cur, "ffn_down", il)
            cur = ggml.add(ctx0, cur, down_b)
        if down_s is not None:
            cur = ggml.mul(ctx0, cur, down_s)
            cb(cur, "ffn_down_s", il)
        return cur

    def build_moe_ffn(self, cur: Tensor, gate_inp: Tensor, gate_inp_b: Tensor | None,
                      up_exps: Tensor | None, up_exps_b: Tensor | None, gate_exps: Tensor | None,
                      gate_exps_b: Tensor | None, down_exps: Tensor,
                      down_exps_b: Tensor | None, exp_probs_b: Tensor | None, n_expert: int,
                      n_expert_used: int, type_op: int, norm_w: bool, w_scale: float,
                      gating_op: int, il: int, probs_in: Tensor | None = None,
                      gate_up_exps: Tensor | None = None, up_exps_s: Tensor | None = None,
                      gate_exps_s: Tensor | None = None,
                      down_exps_s: Tensor | None = None) -> Tensor:
        """build_moe_ffn (the overload with the bias tensors)."""
        ctx0, cb, hp, gf = self.ctx0, self.cb, self.hparams, self.gf
        n_embd, n_tokens = cur.ne[0], cur.ne[1]
        weight_before_ffn = self.arch == "llama4"
        if probs_in is None:
            logits = self.build_lora_mm(gate_inp, cur)
            cb(logits, "ffn_moe_logits", il)
        else:
            logits = probs_in
        if gate_inp_b is not None:
            logits = ggml.add(ctx0, logits, gate_inp_b)
            cb(logits, "ffn_moe_logits_biased", il)
        if gating_op == GATING_SOFTMAX:
            probs = ggml.soft_max(ctx0, logits)
        elif gating_op == GATING_SIGMOID:
            probs = ggml.sigmoid(ctx0, logits)
        elif gating_op == GATING_SOFTMAX_WEIGHT:
            probs = logits
        elif gating_op == GATING_SQRT_SOFTPLUS:
            probs = ggml.sqrt(ctx0, ggml.softplus(ctx0, logits))
        else:
            raise NotImplementedError(f"expert gating {gating_op}")
        cb(probs, "ffn_moe_probs", il)
        selection_probs = probs
        if exp_probs_b is not None:
            selection_probs = ggml.add(ctx0, probs, exp_probs_b)
            cb(selection_probs, "ffn_moe_probs_biased", il)
        if self.arch == "llama4":
            selection_probs = logits
        if hp.n_expert_groups > 1:
            n_exp_per_group = n_expert // hp.n_expert_groups
            selection_groups = ggml.reshape_3d(ctx0, selection_probs, n_exp_per_group,
                                               hp.n_expert_groups, n_tokens)
            group_scores = ggml.argsort_top_k(ctx0, selection_groups, 2)
            group_scores = ggml.get_rows(
                ctx0, ggml.reshape_4d(ctx0, selection_groups, 1, selection_groups.ne[0],
                                      selection_groups.ne[1], selection_groups.ne[2]),
                group_scores)
            group_scores = ggml.sum_rows(ctx0, ggml.reshape_3d(
                ctx0, group_scores, group_scores.ne[1], group_scores.ne[2], group_scores.ne[3]))
            group_scores = ggml.reshape_2d(ctx0, group_scores, group_scores.ne[1],
                                           group_scores.ne[2])
            expert_groups = ggml.argsort_top_k(ctx0, group_scores, hp.n_group_used)
            cb(expert_groups, "ffn_moe_group_topk", il)
            selection_probs = ggml.get_rows(ctx0, selection_groups, expert_groups)
            selection_probs = ggml.set_rows(ctx0, ggml.fill(ctx0, selection_groups,
                                                            float("-inf")),
                                            selection_probs, expert_groups)
            selection_probs = ggml.reshape_2d(ctx0, selection_probs, n_expert, n_tokens)
            cb(selection_probs, "ffn_moe_probs_masked", il)
        selected_experts = ggml.argsort_top_k(ctx0, selection_probs, n_expert_used)
        argsort = selected_experts.src[0]
        assert argsort is not None
        cb(argsort, "ffn_moe_argsort", il)
        cb(selected_experts, "ffn_moe_topk", il)
        probs = ggml.reshape_3d(ctx0, probs, 1, n_expert, n_tokens)
        weights = ggml.get_rows(ctx0, probs, selected_experts)
        cb(weights, "ffn_moe_weights", il)
        if gating_op == GATING_SOFTMAX_WEIGHT:
            weights = ggml.reshape_2d(ctx0, weights, n_expert_used, n_tokens)
            weights = ggml.soft_max(ctx0, weights)
            weights = ggml.reshape_3d(ctx0, weights, 1, n_expert_used, n_tokens)
            cb(weights, "ffn_moe_weights_softmax", il)
        if norm_w:
            weights = ggml.reshape_2d(ctx0, weights, n_expert_used, n_tokens)
            weights_sum = ggml.sum_rows(ctx0, weights)
            cb(weights_sum, "ffn_moe_weights_sum", il)
            weights_sum = ggml.clamp(ctx0, weights_sum, 6.103515625e-5, float("inf"))
            cb(weights_sum, "ffn_moe_weights_sum_clamped", il)
            weights = ggml.div(ctx0, weights, weights_sum)
            cb(weights, "ffn_moe_weights_norm", il)
            weights = ggml.reshape_3d(ctx0, weights, 1, n_expert_used, n_tokens)
        if w_scale not in (0.0, 1.0):
            weights = ggml.scale(ctx0, weights, w_scale)
            cb(weights, "ffn_moe_weights_scaled", il)
        gf.expand(weights)  # (early, so that topk-moe can be fused)
        cur = ggml.reshape_3d(ctx0, cur, n_embd, 1, n_tokens)
        if weight_before_ffn:
            repeated = ggml.repeat_4d(ctx0, cur, n_embd, n_expert_used, n_tokens, 1)
            cur = ggml.mul(ctx0, repeated, weights)
            cb(cur, "ffn_moe_weighted", il)
        if gate_up_exps is not None:
            gate_up = self.build_lora_mm_id(gate_up_exps, cur, selected_experts, up_exps_s)
            cb(gate_up, "ffn_moe_gate_up", il)
            n_ff = gate_up.ne[0] // 2
            cur = ggml.view_3d(ctx0, gate_up, n_ff, gate_up.ne[1], gate_up.ne[2], gate_up.nb[1],
                               gate_up.nb[2], 0)
            cb(cur, "ffn_moe_gate", il)
            up = ggml.view_3d(ctx0, gate_up, n_ff, gate_up.ne[1], gate_up.ne[2], gate_up.nb[1],
                              gate_up.nb[2], n_ff * gate_up.nb[0])
            cb(up, "ffn_moe_up", il)
        else:
            assert up_exps is not None
            up = self.build_lora_mm_id(up_exps, cur, selected_experts, up_exps_s)
            cb(up, "ffn_moe_up", il)
            if up_exps_b is not None:
                up = ggml.add_id(ctx0, up, up_exps_b, selected_experts)
                cb(up, "ffn_moe_up_biased", il)
            if gate_exps is not None:
                cur = self.build_lora_mm_id(gate_exps, cur, selected_experts, gate_exps_s)
                cb(cur, "ffn_moe_gate", il)
            else:
                cur = up
            if gate_exps_b is not None:
                cur = ggml.add_id(ctx0, cur, gate_exps_b, selected_experts)
                cb(cur, "ffn_moe_gate_biased", il)
        has_gate = gate_exps is not None or gate_up_exps is not None
        if type_op == FFN_SILU:
            limit = hp.swiglu_clamp_exp[il] if il >= 0 and gate_exps is not None else 0.0
            if limit > 1e-6:
                up = ggml.clamp(ctx0, up, -limit, limit)
                cb(up, "ffn_moe_up_clamped", il)
                gate_act = ggml.silu(ctx0, cur)
                cb(gate_act, "ffn_moe_silu", il)
                gate_act = ggml.clamp(ctx0, gate_act, float("-inf"), limit)
                cb(gate_act, "ffn_moe_silu_clamped", il)
                cur = ggml.mul(ctx0, gate_act, up)
                cb(cur, "ffn_moe_swiglu_limited", il)
            elif has_gate:
                cur = ggml.swiglu_split(ctx0, cur, up)
                cb(cur, "ffn_moe_swiglu", il)
            else:
                cur = ggml.silu(ctx0, cur)
                cb(cur, "ffn_moe_silu", il)
        elif type_op == FFN_GELU:
            cur = ggml.geglu_split(ctx0, cur, up) if has_gate else ggml.gelu(ctx0, cur)
            cb(cur, "ffn_moe_geglu" if has_gate else "ffn_moe_gelu", il)
        elif type_op == FFN_SWIGLU_OAI_MOE:
            cur = ggml.swiglu_oai(ctx0, cur, up, 1.702, 7.0)
            cb(cur, "ffn_moe_swiglu_oai", il)
        elif type_op == FFN_RELU:
            cur = ggml.reglu_split(ctx0, cur, up) if has_gate else ggml.relu(ctx0, cur)
            cb(cur, "ffn_moe_reglu" if has_gate else "ffn_moe_relu", il)
        elif type_op == FFN_RELU_SQR:
            assert not has_gate, "gated squared relu is not implemented in llama.cpp"
            cur = ggml.sqr(ctx0, ggml.relu(ctx0, cur))
            cb(cur, "ffn_moe_relu_sqr", il)
        else:
            raise NotImplementedError(f"moe ffn op {type_op}")
        experts = self.build_lora_mm_id(down_exps, cur, selected_experts, down_exps_s)
        cb(experts, "ffn_moe_down", il)
        if down_exps_b is not None:
            experts = ggml.add_id(ctx0, experts, down_exps_b, selected_experts)
            cb(experts, "ffn_moe_down_biased", il)
        if not weight_before_ffn:
            experts = ggml.mul(ctx0, experts, weights)
            cb(experts, "ffn_moe_weighted", il)
        gf.expand(experts)
        n_used_il = hp.n_expert_used(il)
        cur_experts = []
        for i in range(n_used_il):  # (the views ordered before the adds)
            view = ggml.view_2d(ctx0, experts, n_embd, n_tokens, experts.nb[2],
                                i * experts.nb[1])
            cur_experts.append(view)
            gf.expand(view)
        moe_out = cur_experts[0]
        for i in range(1, n_used_il):
            moe_out = ggml.add(ctx0, moe_out, cur_experts[i])
            gf.expand(moe_out)
        if n_used_il == 1:
            moe_out = ggml.cont(ctx0, moe_out)  # (not a non-contiguous result)
        cb(moe_out, "ffn_moe_out", il)
        return moe_out

    # -- inputs ----------------------------------------------------------------------------

    def build_inp_embd(self, tok_embd: Tensor) -> Tensor:
        ctx0, hp = self.ctx0, self.hparams
        n_embd_inp = hp.n_embd_inp()
        tokens = ggml.new_tensor_1d(ctx0, I32, self.n_tokens)
        self.cb(tokens, "inp_tokens", -1)
        ggml.set_input(tokens)
        embd = ggml.new_tensor_2d(ctx0, F32, n_embd_inp, self.n_tokens)
        self.cb(embd, "inp_embd", -1)
        ggml.set_input(embd)
        cur_tokens = ggml.get_rows(ctx0, tok_embd, tokens)
        if n_embd_inp != hp.n_embd:
            cur_tokens = ggml.pad(ctx0, cur_tokens, n_embd_inp - hp.n_embd, 0, 0, 0)
        # ggml_build_forward_select: both candidates enter the graph, the token path is used
        self.gf.expand(cur_tokens)
        self.gf.expand(embd)
        cur = cur_tokens
        if n_embd_inp != hp.n_embd:
            cur = ggml.view_2d(ctx0, cur, hp.n_embd, self.n_tokens, cur.nb[1], 0)
        self.res.t_inp_embd = cur
        if hp.f_embedding_scale != 0.0:
            if not ggml.is_contiguous(cur):
                cur = ggml.cont(ctx0, cur)
            cur = ggml.scale(ctx0, cur, hp.f_embedding_scale)
        self.cb(cur, "embd", -1)
        self.gf.expand(cur)
        return cur

    def build_inp_pos(self) -> Tensor:
        cur = ggml.new_tensor_1d(self.ctx0, I32, self.n_tokens * self.hparams.n_pos_per_embd())
        ggml.set_input(cur)
        self.cb(cur, "inp_pos", -1)
        return cur

    def build_inp_attn_scale(self) -> Tensor:
        cur = ggml.new_tensor_3d(self.ctx0, F32, 1, 1, self.n_tokens)  # 1x1xN: broadcasts
        ggml.set_input(cur)
        self.cb(cur, "inp_attn_scale", -1)
        return cur

    def build_inp_out_ids(self) -> Tensor:
        cur = ggml.new_tensor_1d(self.ctx0, I32, self.n_outputs)
        ggml.set_input(cur)
        return ggml.set_name(cur, "out_ids")

    def _kq_mask(self, mctx: KVCache) -> Tensor:
        """build_attn_inp_kq_mask: [n_kv, n_tokens/n_stream, 1, n_stream], f16 for FA."""
        n_stream = 1 if self.cparams.kv_unified else self.n_seqs
        type_ = F16 if self.cparams.flash_attn else F32
        res = ggml.new_tensor_4d(self.ctx0, type_, mctx.get_n_kv(), self.n_tokens // n_stream,
                                 1, n_stream)
        ggml.set_input(res)
        return ggml.set_name(res, "attn_inp_kq_mask")

    def _kv_memory(self, layers: list[int]) -> KVCache:
        return KVCache(self, layers, K, "")

    def _build_attn_inp_kv_impl(self, mctx: KVCache) -> InpAttnKV:
        ctx0 = self.ctx0
        inp = InpAttnKV(mctx, mctx.build_input_k_idxs(ctx0, self.n_tokens),
                        mctx.build_input_v_idxs(ctx0, self.n_tokens), self._kq_mask(mctx))
        inp.self_k_rot = mctx.build_input_k_rot(ctx0)
        inp.self_v_rot = mctx.build_input_v_rot(ctx0)
        return inp

    def _attn_layers(self) -> list[int]:
        hp = self.hparams
        return [il for il in range(hp.n_layer_all) if hp.has_kv(il) and il < hp.n_layer]

    def build_attn_inp_kv(self) -> InpAttnKV:
        """llama_kv_cache (create_memory: one cache for the layers with KV)."""
        self.mctx = mctx = self._kv_memory(self._attn_layers())
        return self._build_attn_inp_kv_impl(mctx)

    def build_attn_inp_k(self) -> InpAttnKV:
        """The K-only cache (MLA): k_idxs and the mask, no rotations."""
        self.mctx = mctx = self._kv_memory(self._attn_layers())
        return InpAttnKV(mctx, mctx.build_input_k_idxs(self.ctx0, self.n_tokens), None,
                         self._kq_mask(mctx))

    def _iswa_memory(self, layers: list[int]) -> tuple[KVCache, KVCache]:
        hp = self.hparams
        base = KVCache(self, [il for il in layers if not hp.is_swa(il)], K, "")
        swa = KVCache(self, [il for il in layers if hp.is_swa(il)], W, "")
        return base, swa

    def _build_attn_inp_kv_iswa(self, base: KVCache, swa: KVCache) -> InpAttnKVIswa:
        ctx0, n_tokens = self.ctx0, self.n_tokens
        b = InpAttnKV(base, base.build_input_k_idxs(ctx0, n_tokens),
                      base.build_input_v_idxs(ctx0, n_tokens), self._kq_mask(base))
        s = InpAttnKV(swa, swa.build_input_k_idxs(ctx0, n_tokens),
                      swa.build_input_v_idxs(ctx0, n_tokens), self._kq_mask(swa))
        b.self_k_rot = base.build_input_k_rot(ctx0)
        b.self_v_rot = base.build_input_v_rot(ctx0)
        inp = InpAttnKVIswa(b, s)
        inp.self_k_rot_swa = swa.build_input_k_rot(ctx0)
        inp.self_v_rot_swa = swa.build_input_v_rot(ctx0)
        return inp

    def build_attn_inp_kv_iswa(self) -> InpAttnKVIswa:
        """llama_kv_cache_iswa: a full-attention cache and a sliding-window one."""
        base, swa = self._iswa_memory(self._attn_layers())
        self.mctx = (base, swa)
        return self._build_attn_inp_kv_iswa(base, swa)

    def _build_rs_inp_impl(self, mctx: RecurrentMemory) -> InpRS:
        ctx0 = self.ctx0
        n_rs, n_seqs = mctx.get_n_rs(), self.n_seqs
        s_copy = ggml.new_tensor_1d(ctx0, I32, n_rs)
        ggml.set_input(s_copy)
        ggml.set_name(s_copy, "rs_s_copy")
        s_copy_main = ggml.view_1d(ctx0, s_copy, n_seqs, 0)
        s_copy_extra = ggml.view_1d(ctx0, s_copy, n_rs - n_seqs, n_seqs * s_copy.nb[0])
        return InpRS(mctx, s_copy, s_copy_main, s_copy_extra)

    def build_inp_mem_hybrid(self) -> InpMemHybrid:
        """llama_memory_hybrid: a recurrent memory for the recurrent layers, a KV cache for
        the others."""
        hp = self.hparams
        recr_layers = [il for il in range(hp.n_layer_all) if hp.is_recr(il)]
        # the attention filter's layers (falcon-h1: every layer, beside its SSM)
        attn_layers = self._attn_layers()
        recr = RecurrentMemory(self, recr_layers)
        attn = self._kv_memory(attn_layers)
        self.mctx = (attn, recr)
        inp_rs = self._build_rs_inp_impl(recr)
        inp_attn = self._build_attn_inp_kv_impl(attn)
        return InpMemHybrid(inp_attn, inp_rs)

    def build_inp_mem_hybrid_iswa(self) -> InpMemHybrid:
        hp = self.hparams
        recr_layers = [il for il in range(hp.n_layer_all) if hp.is_recr(il)]
        attn_layers = self._attn_layers()  # (the attention filter's layers)
        recr = RecurrentMemory(self, recr_layers)
        base, swa = self._iswa_memory(attn_layers)
        self.mctx = (base, swa, recr)
        inp_rs = self._build_rs_inp_impl(recr)
        ctx0, n_tokens = self.ctx0, self.n_tokens
        b = InpAttnKV(base, base.build_input_k_idxs(ctx0, n_tokens),
                      base.build_input_v_idxs(ctx0, n_tokens), self._kq_mask(base))
        s = InpAttnKV(swa, swa.build_input_k_idxs(ctx0, n_tokens),
                      swa.build_input_v_idxs(ctx0, n_tokens), self._kq_mask(swa))
        return InpMemHybrid(InpAttnKVIswa(b, s), inp_rs)

    # -- attention -------------------------------------------------------------------------

    def build_attn_mha(self, q: Tensor, k: Tensor, v: Tensor, kq_b: Tensor | None,
                       kq_mask: Tensor | None, sinks: Tensor | None, v_mla: Tensor | None,
                       n_kv_max: int, kq_scale: float, il: int) -> Tensor:
        ctx0, hp, cb = self.ctx0, self.hparams, self.cb
        v_trans = gt(v.nb[1], v.nb[2])
        n_stream = k.ne[3]
        assert isinstance(n_stream, int)
        q = ggml.view_4d(ctx0, q, q.ne[0], q.ne[1], q.ne[2] // n_stream, n_stream, q.nb[1],
                         q.nb[2], q.nb[2] * (q.ne[2] // n_stream), 0)
        q = ggml.permute(ctx0, q, 0, 2, 1, 3)
        k = ggml.permute(ctx0, k, 0, 2, 1, 3)
        v = ggml.permute(ctx0, v, 0, 2, 1, 3)
        if self.cparams.flash_attn and kq_b is None:
            if v_trans:
                v = ggml.transpose(ctx0, v)
            if k.type.id == F32.id:
                k = ggml.cast(ctx0, k, F16)
            if v.type.id == F32.id:
                v = ggml.cast(ctx0, v, F16)
            cur = ggml.flash_attn_ext(ctx0, q, k, v, kq_mask, kq_scale, hp.f_max_alibi_bias,
                                      hp.f_attn_logit_softcapping if hp.attn_soft_cap else 0.0)
            ggml.flash_attn_ext_add_sinks(cur, sinks)
            if v_mla is not None:
                cur = ggml.permute(ctx0, cur, 0, 2, 1, 3)
                cur = ggml.mul_mat(ctx0, v_mla, cur)
                cb(cur, "fattn_mla", il)
                cur = ggml.permute(ctx0, cur, 0, 2, 1, 3)
                cur = ggml.cont(ctx0, cur)
            cur = ggml.reshape_2d(ctx0, cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])
        else:
            kq = ggml.mul_mat(ctx0, k, q)
            cb(kq, "kq", il)
            if self.arch == "grok":
                kq = ggml.tanh(ctx0, ggml.scale(ctx0, kq, 1.0))
                cb(kq, "kq_tanh", il)
                kq = ggml.scale(ctx0, kq, 1.0)
                cb(kq, "kq_scaled", il)
            if hp.attn_soft_cap:
                kq = ggml.scale(ctx0, kq, 1.0 / hp.f_attn_logit_softcapping)
                cb(kq, "kq_scaled_1", il)
                kq = ggml.tanh(ctx0, kq)
                cb(kq, "kq_tanh", il)
                kq = ggml.scale(ctx0, kq, hp.f_attn_logit_softcapping)
                cb(kq, "kq_scaled_2", il)
            if kq_b is not None:
                kq = ggml.add(ctx0, kq, kq_b)
                cb(kq, "kq_plus_kq_b", il)
            kq = ggml.soft_max_ext(ctx0, kq, kq_mask, kq_scale, hp.f_max_alibi_bias)
            ggml.soft_max_add_sinks(kq, sinks)
            cb(kq, "kq_soft_max", il)
            if not v_trans:
                v = ggml.cont(ctx0, ggml.transpose(ctx0, v))
                cb(v, "v_cont", il)
            kqv = ggml.mul_mat(ctx0, v, kq)
            cb(kqv, "kqv", il)
            if v_mla is not None:
                kqv = ggml.mul_mat(ctx0, v_mla, kqv)
                cb(kqv, "kqv_mla", il)
            cur = ggml.permute(ctx0, kqv, 0, 2, 1, 3)
            cur = ggml.cont_2d(ctx0, cur, cur.ne[0] * cur.ne[1], cur.ne[2] * cur.ne[3])
            if not self.cparams.offload_kqv:
                # all nodes between the KV store and the attention output run on the CPU
                self.pins.append((cur, "cpu", il))
        self.gf.expand(cur)
        return cur

    def _attn_out(self, cur: Tensor, wo: Tensor | None, wo_b: Tensor | None,
                  wo_s: Tensor | None) -> Tensor:
        if wo is not None:
            cur = self.build_lora_mm(wo, cur, wo_s)
        if wo_b is not None:
            cur = ggml.add(self.ctx0, cur, wo_b)
        return cur

    def build_attn(self, inp: InpAttnKV | InpAttnKVIswa, wo: Tensor | None,
                   wo_b: Tensor | None, wo_s: Tensor | None, q_cur: Tensor,
                   k_cur: Tensor | None, v_cur: Tensor | None, kq_b: Tensor | None,
                   sinks: Tensor | None, v_mla: Tensor | None, kq_scale: float,
                   il: int) -> Tensor:
        """build_attn for the KV cache input, its sliding-window pair, and the K-only (MLA)
        cache (an InpAttnKV without v_idxs)."""
        if isinstance(inp, InpAttnKVIswa):
            return self._build_attn_iswa(inp, wo, wo_b, wo_s, q_cur, k_cur, v_cur, kq_b,
                                         sinks, v_mla, kq_scale, il)
        if inp.self_v_idxs is None:
            assert k_cur is not None and v_cur is not None
            return self._build_attn_k(inp, wo, wo_b, wo_s, q_cur, k_cur, v_cur, kq_b, sinks,
                                      v_mla, kq_scale, il)
        assert v_mla is None and k_cur is not None and v_cur is not None
        ctx0, gf = self.ctx0, self.gf
        if inp.self_k_rot is not None:
            q_cur = mul_mat_hadamard(ctx0, q_cur, inp.self_k_rot)
            k_cur = mul_mat_hadamard(ctx0, k_cur, inp.self_k_rot)
        if inp.self_v_rot is not None:
            v_cur = mul_mat_hadamard(ctx0, v_cur, inp.self_v_rot)
        # added together so that they are not reordered; k last (rope fused into the store)
        gf.expand(q_cur)
        gf.expand(v_cur)
        gf.expand(k_cur)
        mctx = inp.mctx
        gf.expand(mctx.cpy_k(ctx0, k_cur, inp.get_k_idxs(), il))
        gf.expand(mctx.cpy_v(ctx0, v_cur, inp.get_v_idxs(), il))
        k = mctx.get_k(ctx0, il)
        v = mctx.get_v(ctx0, il)
        cur = self.build_attn_mha(q_cur, k, v, kq_b, inp.get_kq_mask(), sinks, v_mla, 0,
                                  kq_scale, il)
        self.cb(cur, "kqv_out", il)
        if inp.self_v_rot is not None:
            cur = mul_mat_hadamard(ctx0, cur, inp.self_v_rot)
        return self._attn_out(cur, wo, wo_b, wo_s)

    def _build_attn_k(self, inp: InpAttnKV, wo: Tensor | None, wo_b: Tensor | None,
                      wo_s: Tensor | None, q_cur: Tensor, k_cur: Tensor, v_cur: Tensor,
                      kq_b: Tensor | None, sinks: Tensor | None, v_mla: Tensor | None,
                      kq_scale: float, il: int) -> Tensor:
        ctx0, gf = self.ctx0, self.gf
        gf.expand(q_cur)
        gf.expand(v_cur)
        gf.expand(k_cur)
        mctx = inp.mctx
        gf.expand(mctx.cpy_k(ctx0, k_cur, inp.get_k_idxs(), il))
        k = mctx.get_k(ctx0, il)
        v = ggml.view_4d(ctx0, k, v_cur.ne[0], k.ne[1], k.ne[2], k.ne[3], k.nb[1], k.nb[2],
                         k.nb[3], 0)
        cur = self.build_attn_mha(q_cur, k, v, kq_b, inp.get_kq_mask(), sinks, v_mla, 0,
                                  kq_scale, il)
        self.cb(cur, "kqv_out", il)
        return self._attn_out(cur, wo, wo_b, wo_s)

    def _build_attn_iswa(self, inp: InpAttnKVIswa, wo: Tensor | None, wo_b: Tensor | None,
                         wo_s: Tensor | None, q_cur: Tensor, k_cur: Tensor | None,
                         v_cur: Tensor | None, kq_b: Tensor | None, sinks: Tensor | None,
                         v_mla: Tensor | None, kq_scale: float, il: int) -> Tensor:
        ctx0, gf = self.ctx0, self.gf
        is_swa = self.hparams.is_swa(il)
        k_rot = inp.self_k_rot_swa if is_swa else inp.base.self_k_rot
        v_rot = inp.self_v_rot_swa if is_swa else inp.base.self_v_rot
        if k_rot is not None:
            q_cur = mul_mat_hadamard(ctx0, q_cur, k_rot)
            if k_cur is not None:
                k_cur = mul_mat_hadamard(ctx0, k_cur, k_rot)
        if v_rot is not None and v_cur is not None:
            v_cur = mul_mat_hadamard(ctx0, v_cur, v_rot)
        gf.expand(q_cur)
        if k_cur is not None:
            gf.expand(k_cur)
        if v_cur is not None:
            gf.expand(v_cur)
        sub = inp.swa if is_swa else inp.base
        mctx = sub.mctx
        if k_cur is not None:
            gf.expand(mctx.cpy_k(ctx0, k_cur, sub.get_k_idxs(), il))
        if v_cur is not None:
            gf.expand(mctx.cpy_v(ctx0, v_cur, sub.get_v_idxs(), il))
        k = mctx.get_k(ctx0, il)
        v = mctx.get_v(ctx0, il)
        cur = self.build_attn_mha(q_cur, k, v, kq_b, sub.get_kq_mask(), sinks, v_mla, 0,
                                  kq_scale, il)
        self.cb(cur, "kqv_out", il)
        if v_rot is not None:
            cur = mul_mat_hadamard(ctx0, cur, v_rot)
        return self._attn_out(cur, wo, wo_b, wo_s)

    # -- recurrent state -------------------------------------------------------------------

    def build_rs(self, inp: InpRS, s: Tensor, state_size: int, n_seqs: int,
                 get_state_rows: Callable[[ggml.Context, Tensor, Tensor], Tensor] | None = None
                 ) -> Tensor:
        """build_rs; ``get_state_rows`` reads the states (ggml_get_rows by default; Mamba
        scans them in place: ggml_ssm_scan)."""
        ctx0, gf = self.ctx0, self.gf
        kv_state = inp.mctx
        n_rs, rs_head, rs_zero = kv_state.get_n_rs(), kv_state.get_head(), kv_state.get_rs_z()
        states = ggml.reshape_2d(ctx0, s, state_size, s.ne[1])
        # clear one state, to be copied to the other cleared ones (no-op when zero-sized)
        zero = rs_zero >= 0
        state_zero = ggml.view_1d(ctx0, states, state_size * zero,
                                  rs_zero * states.nb[1] * zero)
        gf.expand(ggml.scale_inplace(ctx0, state_zero, 0.0))
        reader = get_state_rows or ggml.get_rows
        output_states = reader(ctx0, states, inp.s_copy_main)
        gf.expand(output_states)
        states_extra = ggml.get_rows(ctx0, states, inp.s_copy_extra)
        gf.expand(ggml.cpy(ctx0, states_extra,
                           ggml.view_2d(ctx0, s, state_size, n_rs - n_seqs, s.nb[1],
                                        (rs_head + n_seqs) * s.nb[1])))
        return output_states

    # fam-hybrid: the pure recurrent memory's input and RWKV's token shift (llama-graph.cpp)

    def build_rs_inp(self) -> InpRS:
        """llama_memory_recurrent (llm_arch_is_recurrent: every layer keeps a state)."""
        hp = self.hparams
        recr = RecurrentMemory(self, [il for il in range(hp.n_layer_all) if hp.is_recr(il)])
        self.mctx = recr
        return self._build_rs_inp_impl(recr)

    def build_rwkv_token_shift_load(self, inp: InpRS, il: int) -> Tensor:
        hp = self.hparams
        token_shift_all = inp.mctx.get_r_l(il)
        token_shift = self.build_rs(inp, token_shift_all, hp.n_embd_r(), self.n_seqs)
        return ggml.reshape_3d(self.ctx0, token_shift, hp.n_embd, hp.token_shift_count,
                               self.n_seqs)

    def build_rwkv_token_shift_store(self, inp: InpRS, token_shift: Tensor, il: int) -> Tensor:
        ctx0, hp = self.ctx0, self.hparams
        n_seqs, kv_head = self.n_seqs, inp.mctx.get_head()
        r_l = inp.mctx.get_r_l(il)
        return ggml.cpy(ctx0,
                        ggml.view_1d(ctx0, token_shift,
                                     hp.n_embd * n_seqs * hp.token_shift_count, 0),
                        ggml.view_1d(ctx0, r_l, hp.n_embd_r() * n_seqs,
                                     hp.n_embd_r() * kv_head * ggml.element_size(r_l)))

    def finish(self, cur: Tensor) -> Result:
        """``ggml_build_forward_expand(gf, cur)`` and llm_graph_result::set_outputs."""
        self.gf.expand(cur)
        for t in (self.res.t_logits, self.res.t_embd, self.res.t_h_nextn):
            if t is not None:
                ggml.set_output(t)
        return self.res

