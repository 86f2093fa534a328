"""ggml's op constructors (ggml/src/ggml.c), with its shape and type rules, over the IR.

Each function is the ggml one without the prefix and takes the context first, so a builder
reads like llama.cpp: ``ggml_mul_mat(ctx0, w, cur)`` is ``ggml.mul_mat(ctx0, w, cur)`` (import
this module as ``ggml``). Results are what ggml makes: a new tensor (``dup``: same type and ne),
or a view of a source (the in-place variants, set_rows, cpy, reshape, permute, ...), with the
sources in ggml's ``src[]`` order, because ggml-alloc visits, frees and reuses by that order.
Only what memory planning needs is kept: no data, and op parameters only where a later rule
reads them (``Tensor.params``).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvgui.core.gguf import ggml_types
from kvgui.core.gguf.ggml_types import GGMLType
from kvgui.core.memory.graph.ir import INPUT, OUTPUT, Loc, Tensor
from kvgui.core.memory.graph.sym import Dim, SymbolicError

F32 = ggml_types.by_name("f32")
F16 = ggml_types.by_name("f16")
I32 = ggml_types.by_name("i32")
I64 = ggml_types.by_name("i64")

# ggml-alloc.c ggml_op_can_inplace
CAN_INPLACE = frozenset({
    "FILL", "SCALE", "DIAG_MASK_ZERO", "DIAG_MASK_INF", "ADD", "ADD_ID", "ADD1", "SUB", "MUL",
    "DIV", "SQR", "SQRT", "LOG", "UNARY", "ROPE", "ROPE_BACK", "SILU_BACK", "RMS_NORM",
    "RMS_NORM_BACK", "CLAMP", "SOFT_MAX", "SOFT_MAX_BACK"})

Ne = Sequence[Dim]


class Context:
    """A ggml_context: makes tensors, tagging each with the layer being built (``il``)."""

    def __init__(self) -> None:
        self.il = -1
        self.n_tensors = 0


# --- tensor construction (ggml_new_tensor_impl, ggml_view_tensor, ggml_dup_tensor) --------

def _contiguous_nb(type_: GGMLType, ne: Ne) -> tuple[Dim, Dim, Dim, Dim]:
    nb0: Dim = type_.type_size
    ne0 = ne[0]
    nb1 = nb0 * ne0 if type_.block_size == 1 else row_size(type_, ne0)
    nb2 = nb1 * ne[1]
    return (nb0, nb1, nb2, nb2 * ne[2])


def _ne4(ne: Ne) -> tuple[Dim, Dim, Dim, Dim]:
    full = [*ne, 1, 1, 1][:4]
    return (full[0], full[1], full[2], full[3])


def new_tensor(ctx: Context, type_: GGMLType, ne: Ne, view_src: Tensor | None = None,
               view_offs: Dim = 0, op: str = "NONE") -> Tensor:
    """ggml_new_tensor_impl: contiguous strides; a view is made of the storage owner."""
    if view_src is not None and view_src.view_src is not None:
        view_offs = view_offs + view_src.view_offs
        view_src = view_src.view_src
    ne4 = _ne4(ne)
    ctx.n_tensors += 1
    return Tensor(op, type_, ne4, _contiguous_nb(type_, ne4), [], view_src, view_offs, ctx.il)


def new_tensor_1d(ctx: Context, type_: GGMLType, ne0: Dim) -> Tensor:
    return new_tensor(ctx, type_, (ne0,))


def new_tensor_2d(ctx: Context, type_: GGMLType, ne0: Dim, ne1: Dim) -> Tensor:
    return new_tensor(ctx, type_, (ne0, ne1))


def new_tensor_3d(ctx: Context, type_: GGMLType, ne0: Dim, ne1: Dim, ne2: Dim) -> Tensor:
    return new_tensor(ctx, type_, (ne0, ne1, ne2))


def new_tensor_4d(ctx: Context, type_: GGMLType, ne0: Dim, ne1: Dim, ne2: Dim,
                  ne3: Dim) -> Tensor:
    return new_tensor(ctx, type_, (ne0, ne1, ne2, ne3))


def external(ctx: Context, type_: GGMLType, ne: Ne, name: str, loc: Loc) -> Tensor:
    """A tensor in its own buffer (a weight, a KV cache or state tensor): a leaf that
    ggml-alloc never places (``loc`` says where it lives)."""
    t = new_tensor(ctx, type_, ne)
    t.name = name
    t.loc = loc
    return t


def dup_tensor(ctx: Context, a: Tensor) -> Tensor:
    return new_tensor(ctx, a.type, a.ne)


def view_tensor(ctx: Context, a: Tensor) -> Tensor:
    t = new_tensor(ctx, a.type, a.ne, a, 0)
    t.nb = a.nb
    return t


def set_input(t: Tensor) -> None:
    t.flags |= INPUT


def set_output(t: Tensor) -> None:
    t.flags |= OUTPUT


def set_name(t: Tensor, name: str) -> Tensor:
    t.name = name
    return t


def _op(t: Tensor, op: str, *src: Tensor | None) -> Tensor:
    t.op = op
    t.src = list(src)
    return t


# --- shape predicates (ggml.c) ------------------------------------------------------------

def nelements(t: Tensor) -> Dim:
    ne = t.ne
    return ne[0] * ne[1] * ne[2] * ne[3]


def nrows(t: Tensor) -> Dim:
    ne = t.ne
    return ne[1] * ne[2] * ne[3]


def row_size(type_: GGMLType, ne: Dim) -> Dim:
    """ggml_row_size."""
    if type_.block_size == 1:
        return type_.type_size * ne
    if isinstance(ne, int) and ne % type_.block_size:
        raise SymbolicError(f"{ne} elements are not whole {type_.name} blocks")
    return type_.type_size * (ne // type_.block_size)  # (a Sym divides exactly or raises)


def element_size(t: Tensor) -> int:
    return t.type.type_size


def nbytes(t: Tensor) -> Dim:
    """ggml_nbytes (symbolic dimensions are taken as positive)."""
    for d in t.ne:
        if isinstance(d, int) and d <= 0:
            return 0
    ne, nb = t.ne, t.nb
    if t.type.block_size == 1:
        total: Dim = t.type.type_size
        for i in range(4):
            total = total + (ne[i] - 1) * nb[i]
        return total
    total = ne[0] * nb[0] // t.type.block_size
    for i in range(1, 4):
        total = total + (ne[i] - 1) * nb[i]
    return total


def _contiguous_m_n(t: Tensor, m: int, n: int) -> bool:
    next_nb: Dim = t.type.type_size
    if t.ne[0] != t.type.block_size and t.nb[0] != next_nb:
        return False
    next_nb = next_nb * (t.ne[0] if t.type.block_size == 1 else t.ne[0] // t.type.block_size)
    for i in range(1, n):
        if i > m:
            if t.ne[i] != 1 and t.nb[i] != next_nb:
                return False
            next_nb = next_nb * t.ne[i]
        else:
            next_nb = t.ne[i] * t.nb[i]
    return True


def is_contiguous(t: Tensor) -> bool:
    return _contiguous_m_n(t, 0, 4)


def is_contiguous_1(t: Tensor) -> bool:
    return _contiguous_m_n(t, 1, 4)


def is_contiguous_rows(t: Tensor) -> bool:
    return t.ne[0] == t.type.block_size or t.nb[0] == t.type.type_size


def is_transposed(t: Tensor) -> bool:
    return t.nb[0] > t.nb[1] if isinstance(t.nb[0], int) and isinstance(t.nb[1], int) \
        else False


def are_same_shape(a: Tensor, b: Tensor) -> bool:
    return a.ne == b.ne


def _check(ok: bool, what: str) -> None:
    if not ok:
        raise SymbolicError(what)


def _divides(a: Dim, b: Dim) -> bool:
    """b % a == 0 where decidable; symbolic cases are assumed (ggml asserts them)."""
    if isinstance(a, int) and isinstance(b, int):
        return a != 0 and b % a == 0
    return True


def can_repeat(a: Tensor, b: Tensor) -> bool:
    """ggml_can_repeat(a, b): a broadcasts over b."""
    return all(_divides(a.ne[i], b.ne[i]) for i in range(4))


# --- views --------------------------------------------------------------------------------

def _view_impl(ctx: Context, a: Tensor, ne: Ne, offset: Dim) -> Tensor:
    t = new_tensor(ctx, a.type, ne, a, offset)
    t.params["offset"] = offset
    return _op(t, "VIEW", a)


def view_1d(ctx: Context, a: Tensor, ne0: Dim, offset: Dim) -> Tensor:
    return _view_impl(ctx, a, (ne0,), offset)


def view_2d(ctx: Context, a: Tensor, ne0: Dim, ne1: Dim, nb1: Dim, offset: Dim) -> Tensor:
    t = _view_impl(ctx, a, (ne0, ne1), offset)
    t.nb = (t.nb[0], nb1, nb1 * ne1, nb1 * ne1)
    return t


def view_3d(ctx: Context, a: Tensor, ne0: Dim, ne1: Dim, ne2: Dim, nb1: Dim, nb2: Dim,
            offset: Dim) -> Tensor:
    t = _view_impl(ctx, a, (ne0, ne1, ne2), offset)
    t.nb = (t.nb[0], nb1, nb2, nb2 * ne2)
    return t


def view_4d(ctx: Context, a: Tensor, ne0: Dim, ne1: Dim, ne2: Dim, ne3: Dim, nb1: Dim,
            nb2: Dim, nb3: Dim, offset: Dim) -> Tensor:
    t = _view_impl(ctx, a, (ne0, ne1, ne2, ne3), offset)
    t.nb = (t.nb[0], nb1, nb2, nb3)
    return t


def _reshape(ctx: Context, a: Tensor, ne: Ne) -> Tensor:
    _check(is_contiguous(a), f"reshape of a non-contiguous {a}")
    t = new_tensor(ctx, a.type, ne, a, 0)
    return _op(t, "RESHAPE", a)


def reshape_1d(ctx: Context, a: Tensor, ne0: Dim) -> Tensor:
    return _reshape(ctx, a, (ne0,))


def reshape_2d(ctx: Context, a: Tensor, ne0: Dim, ne1: Dim) -> Tensor:
    return _reshape(ctx, a, (ne0, ne1))


def reshape_3d(ctx: Context, a: Tensor, ne0: Dim, ne1: Dim, ne2: Dim) -> Tensor:
    return _reshape(ctx, a, (ne0, ne1, ne2))


def reshape_4d(ctx: Context, a: Tensor, ne0: Dim, ne1: Dim, ne2: Dim, ne3: Dim) -> Tensor:
    return _reshape(ctx, a, (ne0, ne1, ne2, ne3))


def permute(ctx: Context, a: Tensor, axis0: int, axis1: int, axis2: int, axis3: int) -> Tensor:
    t = view_tensor(ctx, a)
    ne: list[Dim] = [0, 0, 0, 0]
    nb: list[Dim] = [0, 0, 0, 0]
    for i, axis in enumerate((axis0, axis1, axis2, axis3)):
        ne[axis] = a.ne[i]
        nb[axis] = a.nb[i]
    t.ne = (ne[0], ne[1], ne[2], ne[3])
    t.nb = (nb[0], nb[1], nb[2], nb[3])
    t.params["axes"] = (axis0, axis1, axis2, axis3)
    return _op(t, "PERMUTE", a)


def transpose(ctx: Context, a: Tensor) -> Tensor:
    t = view_tensor(ctx, a)
    t.ne = (a.ne[1], a.ne[0], a.ne[2], a.ne[3])
    t.nb = (a.nb[1], a.nb[0], a.nb[2], a.nb[3])
    return _op(t, "TRANSPOSE", a)


# --- copies -------------------------------------------------------------------------------

def cpy(ctx: Context, a: Tensor, b: Tensor) -> Tensor:
    """ggml_cpy: a view of the destination."""
    return _op(view_tensor(ctx, b), "CPY", a, b)


def cast(ctx: Context, a: Tensor, type_: GGMLType) -> Tensor:
    """ggml_cast: a new tensor whose second source is itself (ggml-alloc then frees it right
    after placing it, unless it is an output)."""
    t = new_tensor(ctx, type_, a.ne)
    return _op(t, "CPY", a, t)


def cont(ctx: Context, a: Tensor) -> Tensor:
    return _op(dup_tensor(ctx, a), "CONT", a)


def cont_4d(ctx: Context, a: Tensor, ne0: Dim, ne1: Dim, ne2: Dim, ne3: Dim) -> Tensor:
    return _op(new_tensor(ctx, a.type, (ne0, ne1, ne2, ne3)), "CONT", a)


def cont_2d(ctx: Context, a: Tensor, ne0: Dim, ne1: Dim) -> Tensor:
    return cont_4d(ctx, a, ne0, ne1, 1, 1)


def cont_3d(ctx: Context, a: Tensor, ne0: Dim, ne1: Dim, ne2: Dim) -> Tensor:
    return cont_4d(ctx, a, ne0, ne1, ne2, 1)


def get_rows(ctx: Context, a: Tensor, b: Tensor) -> Tensor:
    type_ = I32 if a.type.id == I32.id else F32
    t = new_tensor(ctx, type_, (a.ne[0], b.ne[0], b.ne[1], b.ne[2]))
    return _op(t, "GET_ROWS", a, b)


def set_rows(ctx: Context, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """A view of ``a``; sources b, c, a (ggml's legacy order)."""
    return _op(view_tensor(ctx, a), "SET_ROWS", b, c, a)


# --- arithmetic ---------------------------------------------------------------------------

def _binary(ctx: Context, op: str, a: Tensor, b: Tensor, inplace: bool) -> Tensor:
    _check(can_repeat(b, a), f"{op}: {b} does not broadcast over {a}")
    t = view_tensor(ctx, a) if inplace else dup_tensor(ctx, a)
    return _op(t, op, a, b)


def add(ctx: Context, a: Tensor, b: Tensor) -> Tensor:
    return _binary(ctx, "ADD", a, b, False)


def add_inplace(ctx: Context, a: Tensor, b: Tensor) -> Tensor:
    return _binary(ctx, "ADD", a, b, True)


def sub(ctx: Context, a: Tensor, b: Tensor) -> Tensor:
    return _binary(ctx, "SUB", a, b, False)


def mul(ctx: Context, a: Tensor, b: Tensor) -> Tensor:
    return _binary(ctx, "MUL", a, b, False)


def mul_inplace(ctx: Context, a: Tensor, b: Tensor) -> Tensor:
    return _binary(ctx, "MUL", a, b, True)


def div(ctx: Context, a: Tensor, b: Tensor) -> Tensor:
    return _binary(ctx, "DIV", a, b, False)


def add_id(ctx: Context, a: Tensor, b: Tensor, ids: Tensor) -> Tensor:
    return _op(dup_tensor(ctx, a), "ADD_ID", a, b, ids)


def _scale(ctx: Context, a: Tensor, s: float, inplace: bool) -> Tensor:
    t = view_tensor(ctx, a) if inplace else dup_tensor(ctx, a)
    t.params["scale"] = s
    return _op(t, "SCALE", a)


def scale(ctx: Context, a: Tensor, s: float) -> Tensor:
    return _scale(ctx, a, s, False)


def scale_inplace(ctx: Context, a: Tensor, s: float) -> Tensor:
    return _scale(ctx, a, s, True)


def clamp(ctx: Context, a: Tensor, lo: float, hi: float) -> Tensor:
    return _op(dup_tensor(ctx, a), "CLAMP", a)


def sqr(ctx: Context, a: Tensor) -> Tensor:
    return _op(dup_tensor(ctx, a), "SQR", a)


def sqrt(ctx: Context, a: Tensor) -> Tensor:
    return _op(dup_tensor(ctx, a), "SQRT", a)


def fill(ctx: Context, a: Tensor, c: float) -> Tensor:
    return _op(dup_tensor(ctx, a), "FILL", a)


def fill_inplace(ctx: Context, a: Tensor, c: float) -> Tensor:
    return _op(view_tensor(ctx, a), "FILL", a)


def _unary(ctx: Context, a: Tensor, kind: str, inplace: bool = False) -> Tensor:
    t = view_tensor(ctx, a) if inplace else dup_tensor(ctx, a)
    t.params["unary"] = kind
    return _op(t, "UNARY", a)


def silu(ctx: Context, a: Tensor) -> Tensor:
    return _unary(ctx, a, "SILU")


def gelu(ctx: Context, a: Tensor) -> Tensor:
    return _unary(ctx, a, "GELU")


def relu(ctx: Context, a: Tensor) -> Tensor:
    return _unary(ctx, a, "RELU")


def tanh(ctx: Context, a: Tensor) -> Tensor:
    return _unary(ctx, a, "TANH")


def sigmoid(ctx: Context, a: Tensor) -> Tensor:
    return _unary(ctx, a, "SIGMOID")


def exp(ctx: Context, a: Tensor) -> Tensor:
    return _unary(ctx, a, "EXP")


def softplus(ctx: Context, a: Tensor) -> Tensor:
    return _unary(ctx, a, "SOFTPLUS")


def xielu(ctx: Context, a: Tensor, alpha_n: float, alpha_p: float, beta: float,
          eps: float) -> Tensor:
    """ggml_xielu: a unary op on a new tensor (fam-dense)."""
    return _unary(ctx, a, "XIELU")


def _glu(ctx: Context, a: Tensor, b: Tensor | None, kind: str) -> Tensor:
    ne = a.ne if b is not None else (a.ne[0] // 2, a.ne[1], a.ne[2], a.ne[3])
    t = new_tensor(ctx, a.type, ne)
    t.params["glu"] = kind
    return _op(t, "GLU", a, b)


def swiglu_split(ctx: Context, a: Tensor, b: Tensor) -> Tensor:
    return _glu(ctx, a, b, "SWIGLU")


def geglu_split(ctx: Context, a: Tensor, b: Tensor) -> Tensor:
    return _glu(ctx, a, b, "GEGLU")


def reglu_split(ctx: Context, a: Tensor, b: Tensor) -> Tensor:
    return _glu(ctx, a, b, "REGLU")


def swiglu_oai(ctx: Context, a: Tensor, b: Tensor, alpha: float, limit: float) -> Tensor:
    return _glu(ctx, a, b, "SWIGLU_OAI")


def swiglu(ctx: Context, a: Tensor) -> Tensor:
    return _glu(ctx, a, None, "SWIGLU")


def geglu(ctx: Context, a: Tensor) -> Tensor:
    return _glu(ctx, a, None, "GEGLU")


# --- normalization, attention, matrix products --------------------------------------------

def rms_norm(ctx: Context, a: Tensor, eps: float) -> Tensor:
    return _op(dup_tensor(ctx, a), "RMS_NORM", a)


def norm(ctx: Context, a: Tensor, eps: float) -> Tensor:
    return _op(dup_tensor(ctx, a), "NORM", a)


def l2_norm(ctx: Context, a: Tensor, eps: float) -> Tensor:
    return _op(dup_tensor(ctx, a), "L2_NORM", a)


def group_norm(ctx: Context, a: Tensor, n_groups: int, eps: float) -> Tensor:
    return _op(dup_tensor(ctx, a), "GROUP_NORM", a)


def rope_ext(ctx: Context, a: Tensor, b: Tensor, c: Tensor | None, *_: float) -> Tensor:
    """ggml_rope_ext (the rope parameters change nothing that is planned)."""
    return _op(dup_tensor(ctx, a), "ROPE", a, b, c)


def rope_multi(ctx: Context, a: Tensor, b: Tensor, c: Tensor | None, *_: object) -> Tensor:
    """ggml_rope_multi (M-RoPE: ggml_rope_impl as rope_ext, the sections are parameters;
    fam-dense)."""
    return _op(dup_tensor(ctx, a), "ROPE", a, b, c)


def soft_max(ctx: Context, a: Tensor) -> Tensor:
    return _op(dup_tensor(ctx, a), "SOFT_MAX", a, None)


def soft_max_ext(ctx: Context, a: Tensor, mask: Tensor | None, scale: float,
                 max_bias: float) -> Tensor:
    _check(is_contiguous(a), "soft_max of a non-contiguous tensor")
    return _op(dup_tensor(ctx, a), "SOFT_MAX", a, mask)


def soft_max_add_sinks(a: Tensor, sinks: Tensor | None) -> None:
    """Sets src[2] (ggml_soft_max_add_sinks)."""
    src = list(a.src) + [None] * (3 - len(a.src))
    src[2] = sinks
    a.src = src


def flash_attn_ext(ctx: Context, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                   scale: float, max_bias: float, logit_softcap: float) -> Tensor:
    t = new_tensor(ctx, F32, (v.ne[0], q.ne[2], q.ne[1], q.ne[3]))
    return _op(t, "FLASH_ATTN_EXT", q, k, v, mask)


def flash_attn_ext_add_sinks(a: Tensor, sinks: Tensor | None) -> None:
    """Sets src[4] (ggml_flash_attn_ext_add_sinks)."""
    src = list(a.src) + [None] * (5 - len(a.src))
    src[4] = sinks
    a.src = src


def mul_mat(ctx: Context, a: Tensor, b: Tensor) -> Tensor:
    t = new_tensor(ctx, F32, (a.ne[1], b.ne[1], b.ne[2], b.ne[3]))
    return _op(t, "MUL_MAT", a, b)


def mul_mat_id(ctx: Context, as_: Tensor, b: Tensor, ids: Tensor) -> Tensor:
    t = new_tensor(ctx, F32, (as_.ne[1], ids.ne[0], b.ne[2], 1))
    return _op(t, "MUL_MAT_ID", as_, b, ids)


# --- selection, reduction, shape ops ------------------------------------------------------

def argsort(ctx: Context, a: Tensor) -> Tensor:
    return _op(new_tensor(ctx, I32, a.ne), "ARGSORT", a)


def argsort_top_k(ctx: Context, a: Tensor, k: int) -> Tensor:
    result = argsort(ctx, a)
    return view_4d(ctx, result, k, result.ne[1], result.ne[2], result.ne[3], result.nb[1],
                   result.nb[2], result.nb[3], 0)


def top_k(ctx: Context, a: Tensor, k: int) -> Tensor:
    return _op(new_tensor(ctx, I32, (k, a.ne[1], a.ne[2], a.ne[3])), "TOP_K", a)


def sum_rows(ctx: Context, a: Tensor) -> Tensor:
    return _op(new_tensor(ctx, a.type, (1, a.ne[1], a.ne[2], a.ne[3])), "SUM_ROWS", a)


def concat(ctx: Context, a: Tensor, b: Tensor, dim: int) -> Tensor:
    ne = list(a.ne)
    ne[dim] = a.ne[dim] + b.ne[dim]
    return _op(new_tensor(ctx, a.type, ne), "CONCAT", a, b)


def pad_ext(ctx: Context, a: Tensor, lp0: int, rp0: int, lp1: int, rp1: int, lp2: int,
            rp2: int, lp3: int, rp3: int) -> Tensor:
    ne = (a.ne[0] + lp0 + rp0, a.ne[1] + lp1 + rp1, a.ne[2] + lp2 + rp2, a.ne[3] + lp3 + rp3)
    return _op(new_tensor(ctx, a.type, ne), "PAD", a)


def pad(ctx: Context, a: Tensor, p0: int, p1: int, p2: int, p3: int) -> Tensor:
    return pad_ext(ctx, a, 0, p0, 0, p1, 0, p2, 0, p3)


def repeat_4d(ctx: Context, a: Tensor, ne0: Dim, ne1: Dim, ne2: Dim, ne3: Dim) -> Tensor:
    return _op(new_tensor(ctx, a.type, (ne0, ne1, ne2, ne3)), "REPEAT", a)


def ssm_conv(ctx: Context, sx: Tensor, c: Tensor) -> Tensor:
    d_conv, d_inner = c.ne[0], c.ne[1]
    n_t = sx.ne[0] - d_conv + 1
    return _op(new_tensor(ctx, F32, (d_inner, n_t, sx.ne[2])), "SSM_CONV", sx, c)


# --- recurrent and state-space ops (fam-hybrid) -------------------------------------------

def ssm_scan(ctx: Context, s: Tensor, x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor,
             ids: Tensor, k: int = 1) -> Tensor:
    """ggml_ssm_scan: y and the K final states, concatenated in one f32 vector."""
    n = nelements(x) + k * s.ne[0] * s.ne[1] * s.ne[2] * ids.ne[0]
    return _op(new_tensor(ctx, F32, (n,)), "SSM_SCAN", s, x, dt, a, b, c, ids)


def gated_delta_net(ctx: Context, q: Tensor, k: Tensor, v: Tensor, g: Tensor, beta: Tensor,
                    state: Tensor, kk: int = 1) -> Tensor:
    """ggml_gated_delta_net: [S_v * H, n_tokens * n_seqs + K * S_v * n_seqs] (output, then
    the state snapshots)."""
    s_v, h, n_tokens, n_seqs = v.ne
    return _op(new_tensor(ctx, F32, (s_v * h, n_tokens * n_seqs + kk * s_v * n_seqs)),
               "GATED_DELTA_NET", q, k, v, g, beta, state)


def rwkv_wkv6(ctx: Context, k: Tensor, v: Tensor, r: Tensor, tf: Tensor, td: Tensor,
              state: Tensor) -> Tensor:
    """ggml_rwkv_wkv6: [S * H, n_tokens + S * n_seqs] (output, then the new state)."""
    s_, h, n_tokens = k.ne[0], k.ne[1], k.ne[2]
    return _op(new_tensor(ctx, F32, (s_ * h, n_tokens + s_ * state.ne[1])), "RWKV_WKV6",
               k, v, r, tf, td, state)


def rwkv_wkv7(ctx: Context, r: Tensor, w: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor,
              state: Tensor) -> Tensor:
    """ggml_rwkv_wkv7: [S * H, n_tokens + S * n_seqs] (output, then the new state)."""
    s_, h, n_tokens = k.ne[0], k.ne[1], k.ne[2]
    return _op(new_tensor(ctx, F32, (s_ * h, n_tokens + s_ * state.ne[1])), "RWKV_WKV7",
               r, w, k, v, a, b, state)


def mean(ctx: Context, a: Tensor) -> Tensor:
    """ggml_mean: [1, ne1, ne2, ne3], f32."""
    return _op(new_tensor(ctx, F32, (1, a.ne[1], a.ne[2], a.ne[3])), "MEAN", a)


def scale_bias(ctx: Context, a: Tensor, s: float, b: float) -> Tensor:
    """ggml_scale_bias: x * s + b (a SCALE)."""
    return _scale(ctx, a, s, False)


def neg(ctx: Context, a: Tensor) -> Tensor:
    return _unary(ctx, a, "NEG")


def repeat(ctx: Context, a: Tensor, b: Tensor) -> Tensor:
    """ggml_repeat: a new tensor of b's shape and a's type."""
    _check(can_repeat(a, b), f"repeat: {a} does not repeat to {b}")
    return _op(new_tensor(ctx, a.type, b.ne), "REPEAT", a)
