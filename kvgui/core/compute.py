"""The compute buffer: the peak of llama.cpp's worst-case graph, per backend.

llama.cpp reserves its compute buffers by building the prompt-processing graph for one full
ubatch (n_ubatch tokens, n_ubatch outputs, the whole KV cache in view) and letting ggml-alloc
place every intermediate tensor; the buffer is the allocator's high-water mark, which depends
on where each tensor lands, not only on what is alive at once (the logits are placed after
whatever the last layer left behind).

For the common dense transformer layer (llama, mistral, qwen2, qwen3 on one backend) the graph
is rebuilt tensor by tensor and run through a copy of ggml-alloc (ggml/src/ggml-alloc.c), which
gives llama.cpp's figure to the byte. Other architectures, and layers split across devices, use
a model of the three points where a layer peaks: the attention scores, the feed-forward
activations, or the output logits (src/llama-graph.cpp build_attn / build_ffn / build_moe_ffn).
Both are checked against llama.cpp's own reserve (no_alloc dry run) in
tests/core/test_against_llama_cpp.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvgui.core.estimate import ContextShape
    from kvgui.core.model import ModelInfo

F32 = 4
F16 = 2
KQ_MASK_PAD = 64  # GGML_KQ_MASK_PAD: the mask's token dimension is padded for flash attention
# ggml-alloc aligns every tensor it places (the CPU buffer type's alignment is 64 bytes
# (TENSOR_ALIGNMENT); CUDA's is 128).
ALIGN = 64


def _al(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _stage_peaks(model: ModelInfo, shape: ContextShape, fa: bool, n_kv: int,
                 n_outputs: int) -> tuple[int, int, int]:
    """Bytes alive at the attention scores, the feed-forward activations and the logits."""
    t = shape.n_ubatch
    n_embd = model.n_embd
    n_head = max(model.n_head, 1)
    n_head_kv = max(model.n_head_kv, 1)
    hk, hv = model.n_embd_head_k, model.n_embd_head_v

    # alive through the whole graph: the residual stream and the normed input of the layer
    resid = 2 * _al(F32 * n_embd * t)
    if fa:
        mask = _al(F16 * n_kv * (-(-t // KQ_MASK_PAD) * KQ_MASK_PAD))
        q = _al(F32 * hk * n_head * t)
        out = _al(F32 * hv * n_head * t)
        attn = q + _al(F32 * hk * n_head_kv * t) + _al(F32 * hv * n_head_kv * t) + out
    else:
        mask = _al(F32 * n_kv * t)
        kq = _al(F32 * n_kv * t * n_head)
        kqv = _al(F32 * hv * n_head * t)  # and its permuted, contiguous copy
        attn = _al(F32 * hk * n_head * t) + kq + 2 * kqv
    if model.n_expert and model.n_ff_exp:
        used = max(model.n_expert_used, 1)
        ffn = (_al(F32 * model.n_expert * t) * 2  # router logits + probabilities
               + 2 * _al(F32 * model.n_ff_exp * used * t)  # gate and up, per chosen expert
               + _al(F32 * n_embd * used * t))  # down, before the weighted sum
    else:
        ffn = 2 * _al(F32 * model.n_ff * t)
    # by the output head every layer is done: the mask is free, the residual stream is not
    if model.ssm_d_inner:
        # Mamba: in_proj (z, xBC, dt), the conv input and output, the scan's y and gated y,
        # and the state read, written and copied back (src/models/mamba-base.cpp)
        d_inner = model.ssm_d_inner
        conv_ch = d_inner + 2 * model.ssm_n_group * model.ssm_d_state
        in_proj = d_inner + conv_ch + model.ssm_dt_rank
        ssm = _al(F32 * t * (in_proj + 2 * conv_ch + 2 * d_inner)) + 3 * _al(
            F32 * model.n_embd_s * shape.n_stream)  # (the residual stream is in the fit)
    else:
        ssm = 0
    # by the output head every layer is done: the mask is free, the residual stream is not
    output = _al(F32 * model.n_vocab * n_outputs) + resid
    return attn + resid + mask, max(ffn + resid + mask, ssm), output


# --- ggml-alloc, replayed -------------------------------------------------------------------

CPU_ALIGN = 32  # ggml-backend.cpp: the CPU buffer type's alignment (TENSOR_ALIGNMENT)
CUDA_ALIGN = 128
_UNBOUNDED = 1 << 62  # the CPU buffer type has no maximum size: one chunk, an endless last block


class _Tensor:
    """One graph tensor, with ggml-alloc's bookkeeping for it (struct hash_node)."""

    __slots__ = ("allocated", "index", "inplace", "is_input", "is_leaf", "is_output",
                 "layout", "n_children", "n_views", "srcs", "starts_layer", "view_src",
                 "visited")

    def __init__(self, srcs: tuple[_Tensor | None, ...] = (), *,
                 view_src: _Tensor | None = None, inplace: bool = False,
                 layout: tuple[str, str] | None = None, is_input: bool = False) -> None:
        self.srcs = srcs
        self.view_src = view_src
        self.inplace = inplace  # ggml_op_can_inplace(op)
        self.layout = layout  # equal layouts: ggml_are_same_layout
        self.is_input = is_input
        self.is_leaf = is_input  # op NONE: the graph keeps it among the leafs
        self.is_output = False
        self.n_children = 0
        self.n_views = 0
        self.allocated = False
        self.index = 0  # its place in the recorded sizes
        self.visited = False
        self.starts_layer = False  # the first node of a layer (for _replay's shortcut)


class _Graph:
    """Nodes and leafs in the order ggml_build_forward_expand visits them (depth first,
    sources left to right, each tensor once)."""

    def __init__(self) -> None:
        self.nodes: list[_Tensor] = []
        self.leafs: list[_Tensor] = []

    def expand(self, root: _Tensor) -> None:
        if root.visited:
            return
        root.visited = True
        stack: list[tuple[_Tensor, int]] = [(root, 0)]
        while stack:
            node, i = stack[-1]
            srcs = node.srcs
            while i < len(srcs):
                src = srcs[i]
                i += 1
                if src is not None and not src.visited:
                    src.visited = True
                    stack[-1] = (node, i)
                    stack.append((src, 0))
                    break
            else:
                stack.pop()
                (self.leafs if node.is_leaf else self.nodes).append(node)


class _Allocator:
    """ggml_dyn_tallocr: best fit among the free blocks before the last, else the last block
    (which grows the buffer); freed ranges merge with their neighbours."""

    def __init__(self, alignment: int) -> None:
        self.alignment = alignment
        self.blocks: list[list[int]] = [[0, _UNBOUNDED]]  # [offset, size], by offset
        self.max_size = 0

    def alloc(self, size: int) -> int:
        size = -(-size // self.alignment) * self.alignment
        blocks = self.blocks
        best, best_size = len(blocks) - 1, _UNBOUNDED + 1
        for i in range(len(blocks) - 1):
            bs = blocks[i][1]
            if size <= bs <= best_size:
                best, best_size = i, bs
        block = blocks[best]
        addr = block[0]
        block[0] += size
        block[1] -= size
        if block[1] == 0:
            del blocks[best]
        self.max_size = max(self.max_size, addr + size)
        return addr

    def free(self, offset: int, size: int) -> None:
        size = -(-size // self.alignment) * self.alignment
        blocks = self.blocks
        n = len(blocks)
        for i, b in enumerate(blocks):
            if b[0] + b[1] == offset:
                b[1] += size
                if i < n - 1 and b[0] + b[1] == blocks[i + 1][0]:
                    b[1] += blocks[i + 1][1]
                    del blocks[i + 1]
                return
            if offset + size == b[0]:
                b[0] = offset
                b[1] += size
                if i > 0 and blocks[i - 1][0] + blocks[i - 1][1] == offset:
                    blocks[i - 1][1] += b[1]
                    del blocks[i]
                return
        pos = 0
        while pos < n and blocks[pos][0] < offset:
            pos += 1
        blocks.insert(pos, [offset, size])


@dataclass(frozen=True)
class _Program:
    """What ggml-alloc does for one graph, independent of tensor sizes: ``events`` are
    (tensor, -1) allocate, (tensor, parent) take the parent's place, (tensor, -2) free, and
    (layer, -3) a layer starts, with ``live[layer]`` the tensors alive across that boundary."""

    events: tuple[tuple[int, int], ...]
    sizes: tuple[_Size, ...]
    live: tuple[tuple[int, ...], ...]
    starts: tuple[int, ...]  # event position of each layer's start


def _record(graph: _Graph, sizes: dict[_Tensor, _Size]) -> _Program:
    """ggml_gallocr_alloc_graph_impl's walk: leafs first, then each node is placed (in place
    over a parent when allowed) and its parents freed after their last use."""
    events: list[tuple[int, int]] = []
    order: list[_Size] = []
    alive: dict[int, None] = {}  # intermediate tensors now allocated, oldest first
    live: list[tuple[int, ...]] = []
    starts: list[int] = []

    def place(node: _Tensor) -> None:  # ggml_gallocr_allocate_node
        if node.allocated or node.view_src is not None:
            return
        node.allocated = True
        node.index = len(order)
        order.append(sizes[node])
        if not node.is_leaf:
            alive[node.index] = None
        if node.inplace:
            for p in node.srcs:
                # a view parent is never "own" (views are not allocated): never reused
                if (p is None or not p.allocated or p.is_output or p.layout != node.layout
                        or p.n_children != 1 or p.n_views != 0):
                    continue
                p.allocated = False  # same layout, same size: nothing left over to free
                alive.pop(p.index, None)
                events.append((node.index, p.index))
                return
        events.append((node.index, -1))

    def release(node: _Tensor) -> None:  # ggml_gallocr_free_node
        if not node.is_output:
            events.append((node.index, -2))
            node.allocated = False
            alive.pop(node.index, None)

    for leaf in graph.leafs:
        place(leaf)
    for node in graph.nodes:
        if node.view_src is not None:
            node.view_src.n_views += 1
        for src in node.srcs:
            if src is not None:
                src.n_children += 1
    for node in graph.nodes:
        if node.starts_layer:
            starts.append(len(events))
            events.append((len(live), -3))
            live.append(tuple(alive))
        place(node)
        for p in node.srcs:
            if p is None:
                continue
            p.n_children -= 1
            if p.n_children == 0 and p.n_views == 0:
                if p.view_src is not None:
                    vs = p.view_src
                    vs.n_views -= 1
                    if vs.n_views == 0 and vs.n_children == 0 and vs.allocated:
                        release(vs)
                elif p.allocated:
                    release(p)
    return _Program(tuple(events), tuple(order), tuple(live), tuple(starts))


def _replay(program: _Program, nbytes: list[int], alignment: int, shortcut: bool = True) -> int:
    """The buffer size ggml-alloc reaches for the recorded events at these tensor sizes.

    The layers are alike, so once the allocator is back in a state it was in at an earlier
    layer start (same free blocks, live tensors at the same places), the layers in between
    repeat with that period and place nothing new: the replay skips to the last repetition
    before the final layer (which differs: it keeps only the output rows)."""
    al = _Allocator(alignment)
    offset = [0] * len(nbytes)
    events, live, n_layer = program.events, program.live, len(program.live)
    seen: dict[tuple[object, ...], int] = {}
    i, n = 0, len(events)
    while i < n:
        t, how = events[i]
        i += 1
        if how == -1:
            offset[t] = al.alloc(nbytes[t])
        elif how == -2:
            al.free(offset[t], nbytes[t])
        elif how >= 0:
            offset[t] = offset[how]
        elif shortcut:  # a layer starts
            key = (tuple(map(tuple, al.blocks)), tuple(offset[x] for x in live[t]))
            before = seen.get(key)
            if before is None:
                seen[key] = t
                continue
            period = t - before
            target = t + (n_layer - 1 - t) // period * period
            if target > t and len(live[target]) == len(live[t]):
                for a, b in zip(live[t], live[target], strict=True):
                    offset[b] = offset[a]
                i = program.starts[target] + 1
            shortcut = False
    return al.max_size


# --- the dense transformer graph ------------------------------------------------------------

# Architectures whose graph is the llama layer (src/models/llama.cpp, qwen2.cpp, qwen3.cpp),
# with the blk.N tensors each may have; a model with any other block tensor is not simulated.
_DENSE_BLOCK = frozenset({
    "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
    "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
    "ffn_down.weight", "rope_freqs.weight"})
_DENSE_ARCHS: dict[str, frozenset[str]] = {
    "llama": _DENSE_BLOCK,
    "qwen2": _DENSE_BLOCK | {"attn_q.bias", "attn_k.bias", "attn_v.bias"},
    "qwen3": _DENSE_BLOCK | {"attn_q_norm.weight", "attn_k_norm.weight"},
}


def simulates(model: ModelInfo) -> bool:
    """Whether the compute buffer of ``model`` is replayed through ggml-alloc."""
    allowed = _DENSE_ARCHS.get(model.arch)
    return (allowed is not None and bool(model.block_tensors)
            and model.block_tensors <= allowed and not model.n_expert and not model.n_swa
            and not model.is_recurrent and not model.is_hybrid
            and model.n_embd_head_k == model.n_embd_head_v
            and all(layer.has_kv and not layer.swa for layer in model.layers))


def _rot_size(head: int, k: bool) -> int:
    """llama_kv_cache::build_input_{k,v}_rot: the Hadamard matrix side for quantized caches."""
    if not k:
        return 64
    n = 64
    while head % (n * 2) == 0:
        n *= 2
    return n


# A tensor's size, linear in the shape: bytes per token, per (KV cell x token), per output, and
# a constant. The graph's structure (what is freed or reused when) does not depend on sizes, so
# one replay's events serve every context length and ubatch.
_Size = tuple[int, int, int, int]


def _tok(n: int) -> _Size:
    return (n, 0, 0, 0)


def _out(n: int) -> _Size:
    return (0, 0, n, 0)


def dense_graph(model: ModelInfo, n_layer: int, fa: bool, k_rot: bool, v_rot: bool
                ) -> tuple[_Graph, dict[_Tensor, _Size]]:
    """The reserve graph of src/models/llama.cpp (qwen2: q/k/v biases; qwen3: q/k norms),
    built in llama.cpp's order, with the views that keep tensors alive, and each tensor's
    size."""
    e = model.n_embd
    n_head, n_head_kv = model.n_head, model.n_head_kv
    hk = hv = model.n_embd_head_k
    block = model.block_tensors
    g = _Graph()
    sizes: dict[_Tensor, _Size] = {}
    cache = _Tensor()  # the KV cache (and weights): in their own buffers, never placed here

    def op(size: _Size, *srcs: _Tensor | None, inplace: bool = False,
           layout: tuple[str, str] | None = None) -> _Tensor:
        node = _Tensor(srcs, inplace=inplace, layout=layout)
        sizes[node] = size
        return node

    def view(src: _Tensor, *more: _Tensor | None) -> _Tensor:
        root = src.view_src if src.view_src is not None else src
        return _Tensor((src, *more) if src is not cache else more, view_src=root)

    def inp(size: _Size) -> _Tensor:
        node = _Tensor(is_input=True)
        sizes[node] = size
        return node

    # build_inp_embd: the token path and the (unused) embedding input, both in the graph
    tokens = inp(_tok(4))
    embd_in = inp(_tok(F32 * e))
    inp_l = op(_tok(F32 * e), None, tokens)
    g.expand(inp_l)
    g.expand(embd_in)
    pos = inp(_tok(4))
    k_idxs = inp(_tok(8))
    v_idxs = inp(_tok(8 if fa else 8 * hv * n_head_kv))  # -fa off: one index per V element
    mask = inp((0, F16 if fa else F32, 0, 0))
    k_rot_m = inp((0, 0, 0, F32 * _rot_size(hk, True) ** 2)) if k_rot else None
    v_rot_m = inp((0, 0, 0, F32 * _rot_size(hv, False) ** 2)) if v_rot else None
    out_ids = inp(_out(4))

    for il in range(n_layer):
        inp_sa = inp_l
        el = ("e", "t")
        cur = op(_tok(F32 * e), inp_l, inplace=True, layout=el)  # rms_norm
        cur.starts_layer = True
        cur = op(_tok(F32 * e), cur, None, inplace=True, layout=el)  # * attn_norm
        qkv = []
        for name, width in (("q", hk * n_head), ("k", hk * n_head_kv), ("v", hv * n_head_kv)):
            x = op(_tok(F32 * width), None, cur, layout=(name, "t"))
            if f"attn_{name}.bias" in block:
                x = op(_tok(F32 * width), x, None, inplace=True, layout=(name, "t"))
            qkv.append(view(x))  # reshape_3d
        q, k, v = qkv
        q_size, k_size, v_size = _tok(F32 * hk * n_head), _tok(F32 * hk * n_head_kv), \
            _tok(F32 * hv * n_head_kv)
        if "attn_q_norm.weight" in block:
            q = op(q_size, q, inplace=True, layout=("q3", "t"))  # rms_norm
            q = op(q_size, q, None, inplace=True, layout=("q3", "t"))
            k = op(k_size, k, inplace=True, layout=("k3", "t"))
            k = op(k_size, k, None, inplace=True, layout=("k3", "t"))
        q = op(q_size, q, pos, None, inplace=True, layout=("q3", "t"))  # rope
        k = op(k_size, k, pos, None, inplace=True, layout=("k3", "t"))
        if k_rot_m is not None:  # llama_mul_mat_hadamard: reshape, mul_mat, reshape
            q = view(op(q_size, k_rot_m, view(q)))
            k = view(op(k_size, k_rot_m, view(k)))
        if v_rot_m is not None:
            v = view(op(v_size, v_rot_m, view(v)))
        g.expand(q)
        g.expand(v)
        g.expand(k)
        g.expand(view(cache, None, view(k), k_idxs))  # cpy_k: set_rows into the cache
        if fa:
            g.expand(view(cache, None, view(v), v_idxs))
        else:  # the V cache is transposed: one row per element
            g.expand(view(cache, view(cache), view(view(v)), v_idxs))
        qp = view(view(q))  # view_4d (streams), permute
        attn_size = _tok(F32 * hv * n_head)
        if fa:
            cur = view(op(attn_size, qp, None, None, mask, None))
        else:
            kq = op((0, F32 * n_head, 0, 0), None, qp, layout=("kq", "t"))
            kq = op((0, F32 * n_head, 0, 0), kq, mask, None, inplace=True,
                    layout=("kq", "t"))  # soft_max_ext
            kqv = op(attn_size, None, kq)
            cur = op(attn_size, view(kqv))  # permute, cont_2d
        g.expand(cur)
        if v_rot_m is not None:
            cur = view(op(attn_size, v_rot_m, view(cur)))
        cur = op(_tok(F32 * e), None, cur, layout=el)  # wo
        rows = _tok
        if il == n_layer - 1:  # only the rows that produce output go on (inp_out_ids)
            rows, el = _out, ("e", "o")
            cur = op(rows(F32 * e), cur, out_ids, layout=el)
            inp_sa = op(rows(F32 * e), inp_sa, out_ids, layout=el)
        fl = ("f", el[1])
        ffn_inp = op(rows(F32 * e), cur, inp_sa, inplace=True, layout=el)
        cur = op(rows(F32 * e), ffn_inp, inplace=True, layout=el)
        cur = op(rows(F32 * e), cur, None, inplace=True, layout=el)
        gate = op(rows(F32 * model.n_ff), None, cur, layout=fl)
        up = op(rows(F32 * model.n_ff), None, cur, layout=fl)
        cur = op(rows(F32 * model.n_ff), gate, up, layout=fl)  # swiglu
        cur = op(rows(F32 * e), None, cur, layout=el)
        inp_l = op(rows(F32 * e), cur, ffn_inp, inplace=True, layout=el)
    el = ("e", "o")
    cur = op(_out(F32 * e), inp_l, inplace=True, layout=el)
    cur = op(_out(F32 * e), cur, None, inplace=True, layout=el)
    cur.is_output = True  # t_embd
    logits = op(_out(F32 * model.n_vocab), None, cur)
    logits.is_output = True
    g.expand(logits)
    return g, sizes


_QUANTIZED = frozenset({"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"})


def _program(model: ModelInfo, fa: bool, k_rot: bool, v_rot: bool) -> _Program:
    """The allocator's events for the model's graph (memoized per model)."""
    key = ("galloc", fa, k_rot, v_rot)
    found = model.cache.get(key)
    if found is None:
        graph, sizes = dense_graph(model, model.n_layer, fa, k_rot, v_rot)
        found = model.cache[key] = _record(graph, sizes)
    assert isinstance(found, _Program)
    return found


def kv_rotation(model: ModelInfo, type_k: str, type_v: str) -> tuple[bool, bool]:
    """Whether llama_kv_cache rotates K and V by a Hadamard matrix (quantized caches with
    64-multiple heads): two more matrix products per layer in the graph."""
    return (type_k in _QUANTIZED and model.n_embd_head_k % 64 == 0,
            type_v in _QUANTIZED and model.n_embd_head_v % 64 == 0)


def simulated_peak(model: ModelInfo, shape: ContextShape, fa: bool,
                   rotation: tuple[bool, bool] = (False, False),
                   alignment: int = CPU_ALIGN) -> int:
    """The compute buffer of the whole model on one backend, from a replay of ggml-alloc."""
    n_seqs = max(shape.n_stream, 1)
    n_outputs = min(shape.n_ubatch, shape.n_batch)
    n_tokens = -(-shape.n_ubatch // n_seqs) * n_seqs  # graph_reserve: a multiple of n_seqs
    k_rot, v_rot = rotation
    key = ("galloc-peak", fa, k_rot, v_rot, n_tokens, shape.n_ctx_seq, n_outputs, alignment)
    found = model.cache.get(key)
    if found is None:
        program = _program(model, fa, k_rot, v_rot)
        scale = (n_tokens, n_tokens * shape.n_ctx_seq, n_outputs, 1)
        nbytes = [a * scale[0] + b * scale[1] + c * scale[2] + d
                  for a, b, c, d in program.sizes]
        found = model.cache[key] = _replay(program, nbytes, alignment)
    return int(found)


@dataclass(frozen=True)
class SlotLayers:
    """What one device computes: some layers (with full or sliding attention), the output."""

    holds_layers: bool
    holds_output: bool
    full_attention: bool
    swa: bool


def compute_buffer(model: ModelInfo, shape: ContextShape, fa: bool,
                   slots: Sequence[SlotLayers],
                   rotation: tuple[bool, bool] = (False, False)) -> list[int]:
    """Compute buffer bytes per device: the GPUs in order, then the CPU (last).

    ``rotation``: kv_rotation() of the cache types (quantized caches add matrix products).
    """
    result = [0] * len(slots)
    n_outputs = min(shape.n_ubatch, shape.n_batch)
    computing = [i for i, s in enumerate(slots) if s.holds_layers or s.holds_output]
    alone = len(computing) == 1 and slots[computing[0]].holds_layers \
        and slots[computing[0]].holds_output and simulates(model)
    for i, slot in enumerate(slots):
        is_cpu = i == len(slots) - 1
        if not slot.holds_layers and not slot.holds_output:
            if is_cpu:
                # the host still embeds the tokens and builds the inputs for the GPUs
                result[i] = _al(F32 * model.n_embd * shape.n_ubatch) + _al(
                    F32 * shape.n_ctx_seq * shape.n_ubatch)
            continue
        if alone and is_cpu:
            result[i] = simulated_peak(model, shape, fa, rotation)
            continue
        n_kv = shape.n_ctx_seq if slot.full_attention or not slot.swa else shape.swa_cells
        attn, ffn, output = _stage_peaks(model, shape, fa, n_kv, n_outputs)
        peaks = [ffn]  # (and the recurrent scan, for Mamba layers)
        if slot.full_attention or slot.swa:
            peaks.append(attn)
        if slot.holds_output:
            peaks.append(output)
        if alone:
            # one GPU computes everything: the same allocator runs over (nearly) the same
            # graph with CUDA's alignment; never below the stage model (not verified on CUDA)
            peaks.append(simulated_peak(model, shape, fa, rotation, CUDA_ALIGN))
        result[i] = max(peaks)
    return result
