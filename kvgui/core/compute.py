"""The compute buffer: the peak of llama.cpp's worst-case graph, per backend.

llama.cpp reserves its compute buffers by building the prompt-processing graph for one full
ubatch (n_ubatch tokens, n_ubatch outputs, the whole KV cache in view) and letting ggml-alloc
place every intermediate tensor; the buffer is the allocator's high-water mark, which depends
on where each tensor lands, not only on what is alive at once (the logits are placed after
whatever the last layer left behind, so a hole too small for them costs its size again).

For the architectures in _ARCHS (llama/mistral, qwen2, qwen3, qwen3moe, gemma2, gemma3,
gpt-oss, deepseek2-lite with MLA) the graph is rebuilt tensor by tensor in llama.cpp's order
(src/models/<arch>.cpp, src/llama-graph.cpp) and replayed through a copy of ggml-alloc
(ggml/src/ggml-alloc.c): llama.cpp's figure to the byte, on one backend. Other architectures,
and layers split across devices, use a model of the three points where a layer peaks: the
attention scores, the feed-forward activations, or the output logits. Both are checked
against llama.cpp's own reserve (no_alloc dry run) in tests/core/test_against_llama_cpp.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvgui.core.estimate import ContextShape
    from kvgui.core.model import ModelInfo

F32 = 4
F16 = 2
KQ_MASK_PAD = 64  # GGML_KQ_MASK_PAD: the mask's token dimension is padded for flash attention
# the stage model rounds every tensor to this (ggml-alloc aligns to the buffer type's
# alignment: 32 bytes on the CPU, 128 on CUDA; see CPU_ALIGN, CUDA_ALIGN)
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

    def __init__(self) -> None:
        self.blocks: list[list[int]] = [[0, _UNBOUNDED]]  # [offset, size], by offset
        self.max_size = 0

    def alloc(self, size: int) -> int:
        """Place ``size`` bytes (a multiple of the alignment)."""
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
        if addr + size > self.max_size:
            self.max_size = addr + size
        return addr

    def free(self, offset: int, size: int) -> None:
        """Give back ``size`` bytes (aligned) at ``offset``."""
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

    events: tuple[tuple[int, int, int], ...]  # (tensor or layer, what, size index)
    n_tensors: int
    sizes: tuple[_Size, ...]  # the distinct sizes
    live: tuple[tuple[int, ...], ...]
    starts: tuple[int, ...]  # event position of each layer's start
    kinds: tuple[int, ...]  # each layer's kind (what its stretch of the graph does)
    limit: int  # the first layer that frees an input (its last user): no skipping past it


def _record(graph: _Graph, sizes: dict[_Tensor, _Size], kinds: Sequence[int] = ()
            ) -> _Program:
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
                if (p is None or not p.allocated or p.is_output or p.layout is None
                        or p.layout != node.layout or p.n_children != 1 or p.n_views != 0):
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
    layer_kinds = tuple(kinds[i] if i < len(kinds) else 0 for i in range(len(starts)))
    limit = len(starts) - 1
    if starts:
        first = next((t for t, how in events[starts[0]:] if how == -1 or how >= 0), len(order))
        layer = 0
        for pos, (t, how) in enumerate(events):
            while layer + 1 < len(starts) and starts[layer + 1] <= pos:
                layer += 1
            if how == -2 and t < first and pos > starts[0] and t not in live[0]:
                limit = min(limit, layer)
    distinct = list(dict.fromkeys(order))
    index = {size: i for i, size in enumerate(distinct)}
    return _Program(tuple((t, how, index[order[t]] if how != -3 else 0) for t, how in events),
                    len(order), tuple(distinct), tuple(live), tuple(starts), layer_kinds,
                    limit)


def _replay(program: _Program, scale: tuple[int, ...], alignment: int,
            shortcut: bool = True) -> int:
    """The buffer size ggml-alloc reaches for the recorded events at these tensor sizes.

    The layers are alike, so once the allocator is back in a state it was in at an earlier
    layer start (same free blocks, live tensors at the same places), the layers in between
    repeat with that period and place nothing new: the replay skips to the last repetition
    before the final layer (which differs: it keeps only the output rows)."""
    al = _Allocator()
    free = al.free
    top = 0  # the high-water mark
    table = [-(-sum(c * x for c, x in zip(size, scale, strict=True)) // alignment) * alignment
             for size in program.sizes]
    events, live, n_layer = program.events, program.live, len(program.live)
    offset = [0] * program.n_tensors
    blocks = al.blocks
    seen: dict[tuple[object, ...], int] = {}
    kinds = program.kinds
    last = min(n_layer - 1, program.limit)
    state: tuple[object, ...] = ()
    steady: set[int] = set()  # kinds of layer that left the allocator as they found it
    i, n = 0, len(events)
    while i < n:
        t, how, k = events[i]
        i += 1
        if how == -1:  # (_Allocator.alloc, inline: this loop is the estimate's hot path)
            size = table[k]
            best, best_size = len(blocks) - 1, _UNBOUNDED + 1
            for j in range(best):
                bs = blocks[j][1]
                if size <= bs <= best_size:
                    best, best_size = j, bs
            block = blocks[best]
            offset[t] = block[0]
            block[0] += size
            block[1] -= size
            if block[1] == 0:
                del blocks[best]
            if block[0] > top:
                top = block[0]
        elif how == -2:
            free(offset[t], table[k])
        elif how >= 0:
            offset[t] = offset[how]
        elif shortcut:  # a layer starts
            before_state = state
            state = (tuple(map(tuple, al.blocks)), tuple(offset[x] for x in live[t]))
            if state == before_state:
                steady.add(kinds[t - 1])
            else:
                steady = set()
            target = t
            if steady.issuperset(kinds[t:last]):
                target = last  # every layer until then leaves this state as it is
            else:
                key = (kinds[t], state)
                before = seen.get(key, t)
                seen[key] = t
                period = t - before  # the states repeat, if the layers' kinds do too
                if not period or any(kinds[j] != kinds[j + period]
                                     for j in range(before, last - period)):
                    continue
                target = t + (last - t) // period * period
            if target > t and len(live[target]) == len(live[t]):
                for a, b in zip(live[t], live[target], strict=True):
                    offset[b] = offset[a]
                i = program.starts[target] + 1
                shortcut = False
            elif target != t:
                shortcut = False
    return top


# --- the dense transformer graph ------------------------------------------------------------

# Architectures whose graph dense_graph rebuilds, with the blk.N tensors each may have; a model
# with any other block tensor (a variant the graph does not follow) is not simulated.
_DENSE_BLOCK = frozenset({
    "attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight",
    "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight",
    "ffn_down.weight", "rope_freqs.weight"})
_ARCHS: dict[str, frozenset[str]] = {
    "llama": _DENSE_BLOCK,
    "qwen2": _DENSE_BLOCK | {"attn_q.bias", "attn_k.bias", "attn_v.bias"},
    "qwen3": _DENSE_BLOCK | {"attn_q_norm.weight", "attn_k_norm.weight"},
    "qwen3moe": (_DENSE_BLOCK - {"ffn_gate.weight", "ffn_up.weight", "ffn_down.weight"})
    | {"attn_q_norm.weight", "attn_k_norm.weight", "ffn_gate_inp.weight",
       "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight"},
    "gpt-oss": (_DENSE_BLOCK - {"ffn_gate.weight", "ffn_up.weight", "ffn_down.weight",
                                "ffn_norm.weight"})
    | {"attn_q.bias", "attn_k.bias", "attn_v.bias", "attn_output.bias", "attn_sinks.weight",
       "post_attention_norm.weight", "ffn_gate_inp.weight", "ffn_gate_inp.bias",
       "ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight",
       "ffn_gate_exps.bias", "ffn_up_exps.bias", "ffn_down_exps.bias"},
    "deepseek2": (_DENSE_BLOCK - {"attn_q.weight", "attn_k.weight", "attn_v.weight"})
    | {"attn_q.weight", "attn_kv_a_mqa.weight", "attn_kv_a_norm.weight", "attn_k_b.weight",
       "attn_v_b.weight", "ffn_gate_inp.weight", "ffn_gate_exps.weight", "ffn_up_exps.weight",
       "ffn_down_exps.weight", "ffn_gate_shexp.weight", "ffn_up_shexp.weight",
       "ffn_down_shexp.weight"},
    "lfm2": _DENSE_BLOCK | {"attn_q_norm.weight", "attn_k_norm.weight",
                            "shortconv.conv.weight", "shortconv.in_proj.weight",
                            "shortconv.out_proj.weight"},
    "gemma2": _DENSE_BLOCK | {"post_attention_norm.weight", "post_ffw_norm.weight"},
    "gemma3": _DENSE_BLOCK | {"post_attention_norm.weight", "post_ffw_norm.weight",
                              "attn_q_norm.weight", "attn_k_norm.weight"},
}


def simulates(model: ModelInfo) -> bool:
    """Whether the compute buffer of ``model`` is replayed through ggml-alloc."""
    allowed = _ARCHS.get(model.arch)
    swa_ok = model.arch in ("gemma2", "gemma3", "gpt-oss") and not model.swa_chunked
    keys = dict(model.arch_keys)
    if model.arch == "deepseek2":  # the lite layout (no q LoRA), MLA, softmax routing
        mla_keys = ("attention.key_length_mla", "attention.value_length_mla",
                    "attention.kv_lora_rank", "rope.dimension_count")
        if not model.is_mla or not all(k in keys for k in mla_keys) \
                or keys.get("expert_gating_func", 1) != 1 \
                or int(keys.get("expert_group_count", 1)) > 1:
            return False
    elif model.is_mla or model.n_embd_head_k != model.n_embd_head_v:
        return False
    return (allowed is not None and bool(model.block_tensors)
            and model.block_tensors <= allowed
            and bool(model.n_expert) == ("ffn_gate_inp.weight" in model.block_tensors)
            and not model.is_recurrent and (not model.is_hybrid or model.arch == "lfm2")
            and model.n_embd_head_k_swa in (0, model.n_embd_head_k)
            and model.n_embd_head_v_swa in (0, model.n_embd_head_v)
            and all((layer.has_kv or layer.recurrent) and (swa_ok or not layer.swa)
                    for layer in model.layers))


def _rot_size(head: int, k: bool) -> int:
    """llama_kv_cache::build_input_{k,v}_rot: the Hadamard matrix side for quantized caches."""
    if not k:
        return 64
    n = 64
    while head % (n * 2) == 0:
        n *= 2
    return n


# A tensor's size, linear in the shape: bytes per token, per (KV cell x token), per (sliding
# window cell x token), per output, a constant, per KV cell and per sliding window cell (of all
# streams), per sequence. The graph's structure (what is freed or reused when) does not depend
# on sizes, so one replay's events serve every shape.
_Size = tuple[int, int, int, int, int, int, int, int]


def _tok(n: int) -> _Size:
    return (n, 0, 0, 0, 0, 0, 0, 0)


def _out(n: int) -> _Size:
    return (0, 0, 0, n, 0, 0, 0, 0)


def _const(n: int) -> _Size:
    return (0, 0, 0, 0, n, 0, 0, 0)


def _per_kv(n: int, swa: bool = False) -> _Size:
    """n bytes per KV cell x token (the mask, the scores)."""
    return (0, 0, n, 0, 0, 0, 0, 0) if swa else (0, n, 0, 0, 0, 0, 0, 0)


def _per_cell(n: int, swa: bool = False) -> _Size:
    """n bytes per KV cell (a copy of the cache)."""
    return (0, 0, 0, 0, 0, 0, n, 0) if swa else (0, 0, 0, 0, 0, n, 0, 0)


def _per_seq(n: int) -> _Size:
    """n bytes per sequence (recurrent states)."""
    return (0, 0, 0, 0, 0, 0, 0, n)


def _plus(a: _Size, b: _Size) -> _Size:
    return tuple(x + y for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def _moe_ffn(g: _Graph, model: ModelInfo, cur: _Tensor, rows: Callable[[int], _Size],
             kind: str, op: Callable[..., _Tensor], view: Callable[..., _Tensor]) -> _Tensor:
    """build_moe_ffn: router, top-k, gate/up/down for the chosen experts, weighted sum.
    qwen3moe: softmax gating, normalized weights; gpt-oss: biases everywhere, softmax over
    the chosen experts' logits (SOFTMAX_WEIGHT)."""
    e, n_exp, used, ff = model.n_embd, model.n_expert, max(model.n_expert_used, 1), \
        model.n_ff_exp
    block = model.block_tensors
    oss = model.arch == "gpt-oss"
    keys = dict(model.arch_keys)
    logits = op(rows(F32 * n_exp), None, cur, layout=("r", kind))
    if "ffn_gate_inp.bias" in block:
        logits = op(rows(F32 * n_exp), logits, None, inplace=True, layout=("r", kind))
    probs = logits if oss else op(rows(F32 * n_exp), logits, inplace=True,
                                  layout=("r", kind))  # soft_max
    selected = view(op(rows(4 * n_exp), probs))  # argsort_top_k: argsort, view
    weights = op(rows(F32 * used), view(probs), selected, layout=("w", kind))  # get_rows
    if oss:  # soft_max over the chosen experts' logits
        weights = view(op(rows(F32 * used), view(weights), layout=("w", kind)))
    elif keys.get("expert_weights_norm", model.arch == "qwen3moe"):  # divided by their sum
        weights = view(weights)  # reshape_2d
        total = op(rows(F32), weights, layout=("s", kind))  # sum_rows
        total = op(rows(F32), total, inplace=True, layout=("s", kind))  # clamp
        weights = view(op(rows(F32 * used), weights, total, inplace=True, layout=("w", kind)))
    scale = float(keys.get("expert_weights_scale", 0.0))
    if scale not in (0.0, 1.0):
        weights = op(rows(F32 * used), weights, inplace=True, layout=("w", kind))
    g.expand(weights)
    x = view(cur)  # reshape_3d

    def experts(name: str, width: int, src: _Tensor, layout: tuple[str, str]) -> _Tensor:
        y = op(rows(F32 * width * used), None, src, selected, layout=layout)  # mul_mat_id
        if f"ffn_{name}_exps.bias" in block:
            y = op(rows(F32 * width * used), y, None, selected, inplace=True,
                   layout=layout)  # add_id
        return y

    up = experts("up", ff, x, ("x", kind))
    gate = experts("gate", ff, x, ("x", kind))
    act = op(rows(F32 * ff * used), gate, up, layout=("x", kind))  # swiglu (oai)
    down = experts("down", e, act, ("y", kind))
    down = op(rows(F32 * e * used), down, weights, inplace=True, layout=("y", kind))
    g.expand(down)
    parts = [view(down) for _ in range(used)]
    for part in parts:
        g.expand(part)
    out = parts[0]
    for part in parts[1:]:
        out = op(rows(F32 * e), out, part, inplace=True, layout=("e", kind))
        g.expand(out)
    if used == 1:
        out = op(rows(F32 * e), out)  # cont
    return out


def dense_graph(model: ModelInfo, n_layer: int, fa: bool, types: CacheGraph
                ) -> tuple[_Graph, dict[_Tensor, _Size]]:
    """The reserve graph of src/models/llama.cpp (qwen2: q/k/v biases; qwen3: q/k norms;
    qwen3moe: experts; gemma2/gemma3: scaled embeddings and queries, post-norms, GELU, sliding
    window layers with their own cache inputs), built in llama.cpp's order, with the views
    that keep tensors alive, and each tensor's size."""
    e = model.n_embd
    n_head, n_head_kv = model.n_head, model.n_head_kv
    hk = hv = model.n_embd_head_k
    k_rot, v_rot, k_f32, v_f32 = types  # what the cache types add (cache_graph)
    block = model.block_tensors
    gemma = model.arch in ("gemma2", "gemma3")
    oss = model.arch == "gpt-oss"
    mla = model.is_mla
    lfm2 = model.arch == "lfm2"  # short convolutions between the attention layers
    keys = dict(model.arch_keys)
    hv_mla = int(keys.get("attention.value_length_mla", 0))
    dense_lead = int(keys.get("leading_dense_block_count", 0))
    iswa = any(layer.swa for layer in model.layers)  # llama_kv_cache_iswa: two caches
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

    def norm(x: _Tensor, size: _Size, layout: tuple[str, str]) -> _Tensor:
        x = op(size, x, inplace=True, layout=layout)  # rms_norm
        return op(size, x, None, inplace=True, layout=layout)  # * weight

    # build_inp_embd: the token path and the (unused) embedding input, both in the graph
    tokens = inp(_tok(4))
    embd_in = inp(_tok(F32 * e))
    inp_l = op(_tok(F32 * e), None, tokens, layout=("e", "t"))  # get_rows
    g.expand(inp_l)
    g.expand(embd_in)
    if gemma:
        inp_l = op(_tok(F32 * e), inp_l, inplace=True, layout=("e", "t"))  # * sqrt(n_embd)
    pos = inp(_tok(4))

    def cache_inputs(swa: bool) -> tuple[_Tensor, ...]:
        """k_idxs, v_idxs, mask and the rotations of one cache (build_attn_inp_kv*)."""
        k_idxs = inp(_tok(8))
        v_idxs = inp(_tok(8 if fa else 8 * hv * n_head_kv))  # -fa off: one index per element
        mask = inp(_per_kv(F16 if fa else F32, swa))
        return k_idxs, v_idxs, mask

    base = cache_inputs(False)
    other = cache_inputs(True) if iswa else base
    rot_k = [inp(_const(F32 * _rot_size(hk, True) ** 2)) if k_rot else None
             for _ in range(1 + iswa)]
    rot_v = [inp(_const(F32 * _rot_size(hv, False) ** 2)) if v_rot else None
             for _ in range(1 + iswa)]
    out_ids = inp(_out(4))
    s_copy = inp(_const(4))  # (recurrent states to copy: one per sequence, <= 8 here)
    s_main, s_extra = view(s_copy), view(s_copy)

    for il in range(n_layer):
        swa = model.layers[il].swa if il < len(model.layers) else False
        k_idxs, v_idxs, mask = other if swa else base
        k_rot_m, v_rot_m = rot_k[swa and iswa], rot_v[swa and iswa]
        inp_sa = inp_l
        el = ("e", "t")
        cur = op(_tok(F32 * e), inp_l, inplace=True, layout=el)  # rms_norm
        cur.starts_layer = True
        cur = op(_tok(F32 * e), cur, None, inplace=True, layout=el)  # * attn_norm
        if lfm2 and il < len(model.layers) and model.layers[il].recurrent:  # shortconv
            d_conv = int(keys.get("shortconv.l_cache", 3)) - 1
            bcx = op(_tok(F32 * 3 * e), None, view(cur), layout=("bcx", "t"))  # in_proj
            c = view(bcx)
            bx = view(op(_tok(F32 * e), view(bcx), view(bcx), layout=("x", "t")))  # b*x, T
            states = view(cache)  # build_rs: clear one state, gather, copy the others
            g.expand(view(cache, view(states)))
            gathered = op(_per_seq(F32 * model.n_embd_r), states, s_main)
            g.expand(gathered)
            g.expand(view(cache, op(_const(0), states, s_extra), view(cache)))
            bx = op(_plus(_tok(F32 * e), _per_seq(F32 * e * d_conv)), view(gathered), bx)
            g.expand(view(cache, view(bx), view(cache)))  # the new conv state
            y = op(_tok(F32 * e), bx, None, layout=("x", "t"))  # ssm_conv
            y = op(_tok(F32 * e), c, y, inplace=True, layout=("x", "t"))  # c * conv
            cur = view(op(_tok(F32 * e), None, y, layout=el))  # out_proj, reshape
        elif mla:  # multi-head latent attention, absorbed (deepseek2: K cache only)
            hq, rope, rank = (int(keys[k]) for k in (
                "attention.key_length_mla", "rope.dimension_count", "attention.kv_lora_rank"))
            q = view(op(_tok(F32 * hq * n_head), None, cur, layout=("q", "t")))  # wq, reshape
            kvp = op(_tok(F32 * (rank + rope)), None, cur, layout=("kvp", "t"))  # wkv_a_mqa
            kpe = op(_tok(F32 * rope), view(kvp), pos, None, inplace=True,
                     layout=("kpe", "t"))  # rope(view)
            kv = norm(view(kvp), _tok(F32 * rank), ("kv", "t"))  # kv_a_norm(view)
            qpe = op(_tok(F32 * rope * n_head), view(q), pos, None, inplace=True,
                     layout=("qpe", "t"))  # rope(view)
            absorbed = op(_tok(F32 * rank * n_head), None, view(view(q)))  # wk_b x q_nope
            q = op(_tok(F32 * (rank + rope) * n_head), view(absorbed), qpe)  # concat
            v = view(kv)  # reshape_3d
            k = op(_tok(F32 * (rank + rope)), v, kpe)  # concat
            for x in (q, v, k):
                g.expand(x)
            g.expand(view(cache, None, view(k), k_idxs))  # cpy_k
            if fa:  # (an f32 cache is cast to f16 for it: K, and V, a view of K)
                kc = op(_per_cell(F16 * (rank + rope)), view(cache)) if k_f32 else None
                vc = op(_per_cell(F16 * rank), view(cache)) if k_f32 else None
                a = view(op(_tok(F32 * rank * n_head), view(view(q)), kc, vc, mask, None))
            else:  # V (a view of K) is made contiguous, transposed, in the cache's type
                vt = op(_per_cell((F32 if k_f32 else F16) * rank), view(cache))
                kq = op(_per_kv(F32 * n_head), None, view(view(q)), layout=("kq", "t"))
                kq = op(_per_kv(F32 * n_head), kq, mask, None, inplace=True, layout=("kq", "t"))
                a = op(_tok(F32 * rank * n_head), vt, kq)
            a = op(_tok(F32 * hv_mla * n_head), None, a)  # wv_b x kqv
            cur = view(op(_tok(F32 * hv_mla * n_head), view(a)))  # permute, cont, reshape
            g.expand(cur)
        else:
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
                q = norm(q, q_size, ("q3", "t"))
            q = op(q_size, q, pos, None, inplace=True, layout=("q3", "t"))  # rope
            if "attn_k_norm.weight" in block:
                k = norm(k, k_size, ("k3", "t"))
            k = op(k_size, k, pos, None, inplace=True, layout=("k3", "t"))
            if gemma:
                q = op(q_size, q, inplace=True, layout=("q3", "t"))  # * f_attention_scale
            if k_rot_m is not None:  # llama_mul_mat_hadamard: reshape, mul_mat, reshape
                q = view(op(q_size, k_rot_m, view(q)))
                k = view(op(k_size, k_rot_m, view(k)))
            if v_rot_m is not None:
                v = view(op(v_size, v_rot_m, view(v)))
            for x in (q, k, v) if iswa else (q, v, k):
                g.expand(x)
            g.expand(view(cache, None, view(k), k_idxs))  # cpy_k: set_rows into the cache
            if fa:
                g.expand(view(cache, None, view(v), v_idxs))
            else:  # the V cache is transposed: one row per element
                g.expand(view(cache, view(cache), view(view(v)), v_idxs))
            qp = view(view(q))  # view_4d (streams), permute
            attn_size = _tok(F32 * hv * n_head)
            if fa:  # (an f32 cache is cast to f16 for it)
                kc = op(_per_cell(F16 * hk * n_head_kv, swa), view(cache)) if k_f32 else None
                vc = op(_per_cell(F16 * hv * n_head_kv, swa), view(cache)) if v_f32 else None
                cur = view(op(attn_size, qp, kc, vc, mask, None))
            else:
                kq_size = _per_kv(F32 * n_head, swa)
                kq = op(kq_size, None, qp, layout=("kq", "t"))
                if model.arch == "gemma2":  # attention logit soft-capping: scale, tanh, scale
                    for _ in range(3):
                        kq = op(kq_size, kq, inplace=True, layout=("kq", "t"))
                kq = op(kq_size, kq, mask, None, inplace=True, layout=("kq", "t"))  # soft_max_ext
                kqv = op(attn_size, None, kq)
                cur = op(attn_size, view(kqv))  # permute, cont_2d
            g.expand(cur)
            if v_rot_m is not None:
                cur = view(op(attn_size, v_rot_m, view(cur)))
        cur = op(_tok(F32 * e), None, cur, layout=el)  # wo
        if "attn_output.bias" in block:
            cur = op(_tok(F32 * e), cur, None, inplace=True, layout=el)
        rows = _tok
        if il == n_layer - 1 and not oss:  # only the rows that give output go on (out_ids)
            rows, el = _out, ("e", "o")
            cur = op(rows(F32 * e), cur, out_ids, layout=el)
            inp_sa = op(rows(F32 * e), inp_sa, out_ids, layout=el)
        if gemma:
            cur = norm(cur, rows(F32 * e), el)  # attn_post_norm
        ffn_inp = op(rows(F32 * e), *((inp_sa, cur) if lfm2 else (cur, inp_sa)), inplace=True,
                     layout=el)
        cur = norm(ffn_inp, rows(F32 * e), el)
        if model.n_expert and il >= dense_lead:
            normed = cur
            cur = _moe_ffn(g, model, cur, rows, el[1], op, view)
            if "ffn_up_shexp.weight" in block:  # shared experts: a plain SiLU-gated FFN
                width = model.n_ff_exp * int(keys.get("expert_shared_count", 1))
                fl = ("fs", el[1])
                gate = op(rows(F32 * width), None, normed, layout=fl)
                up = op(rows(F32 * width), None, normed, layout=fl)
                shexp = op(rows(F32 * e), None, op(rows(F32 * width), gate, up, layout=fl),
                           layout=el)
                cur = op(rows(F32 * e), cur, shexp, inplace=True, layout=el)
        else:
            fl = ("f", el[1])
            gate = op(rows(F32 * model.n_ff), None, cur, layout=fl)
            up = op(rows(F32 * model.n_ff), None, cur, layout=fl)
            cur = op(rows(F32 * model.n_ff), gate, up, layout=fl)  # swiglu / geglu
            cur = op(rows(F32 * e), None, cur, layout=el)
        if gemma:
            cur = norm(cur, rows(F32 * e), el)  # ffn_post_norm
        inp_l = op(rows(F32 * e), *((ffn_inp, cur) if lfm2 else (cur, ffn_inp)), inplace=True,
                   layout=el)
    if oss:  # the last layer's output is kept (t_h_nextn), then only the output rows go on
        inp_l.is_output = True
        inp_l = op(_out(F32 * e), inp_l, out_ids, layout=("e", "o"))
    cur = norm(inp_l, _out(F32 * e), ("e", "o"))
    cur.is_output = True  # t_embd
    logits = op(_out(F32 * model.n_vocab), None, cur, layout=("v", "o"))
    if model.arch == "gemma2":  # final logit soft-capping: scale, tanh, scale
        for _ in range(3):
            logits = op(_out(F32 * model.n_vocab), logits, inplace=True, layout=("v", "o"))
    logits.is_output = True
    g.expand(logits)
    return g, sizes


# (k_rot, v_rot, k_f32, v_f32): what the cache types change in the graph (cache_graph)
CacheGraph = tuple[bool, bool, bool, bool]
_QUANTIZED = frozenset({"q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"})


def _program(model: ModelInfo, fa: bool, cache: CacheGraph) -> _Program:
    """The allocator's events for the model's graph (memoized per model)."""
    key = ("galloc", fa, cache)
    found = model.cache.get(key)
    if found is None:
        graph, sizes = dense_graph(model, model.n_layer, fa, cache)
        dense = int(dict(model.arch_keys).get("leading_dense_block_count", 0)) \
            if model.n_expert else 0
        base = [int(layer.swa) + 2 * (il < dense) + 4 * layer.recurrent
                for il, layer in enumerate(model.layers[:model.n_layer])] + [8]
        # a layer's stretch of the graph also holds the next layer's state copies
        kinds = [8 * a + b for a, b in itertools.pairwise(base)]
        found = model.cache[key] = _record(graph, sizes, kinds)
    assert isinstance(found, _Program)
    return found


def cache_graph(model: ModelInfo, type_k: str, type_v: str) -> CacheGraph:
    """What the cache types add to the graph: llama_kv_cache rotates quantized K and V by a
    Hadamard matrix (heads of 64-multiples; not for MLA), and flash attention casts an f32
    cache to f16 (MLA without it copies V in the cache's type)."""
    return (type_k in _QUANTIZED and model.n_embd_head_k % 64 == 0 and not model.is_mla,
            type_v in _QUANTIZED and model.n_embd_head_v % 64 == 0 and not model.is_mla,
            type_k == "f32", type_v == "f32")


def simulated_peak(model: ModelInfo, shape: ContextShape, fa: bool,
                   cache: CacheGraph = (False, False, False, False),
                   alignment: int = CPU_ALIGN) -> int:
    """The compute buffer of the whole model on one backend, from a replay of ggml-alloc."""
    # graph_reserve: n_tokens is a multiple of n_seq_max (n_seq, where the shape has it)
    n_seqs = max(int(getattr(shape, "n_seq", 0)), shape.n_stream, 1)
    n_outputs = min(shape.n_ubatch, shape.n_batch)
    n_tokens = -(-shape.n_ubatch // n_seqs) * n_seqs  # graph_reserve: a multiple of n_seqs
    key = ("galloc-peak", fa, cache, n_tokens, shape.n_ctx_seq, shape.swa_cells, shape.n_stream,
           n_outputs, alignment)
    found = model.cache.get(key)
    if found is None:
        program = _program(model, fa, cache)
        cells = shape.n_stream
        scale = (n_tokens, n_tokens * shape.n_ctx_seq, n_tokens * shape.swa_cells, n_outputs, 1,
                 shape.n_ctx_seq * cells, shape.swa_cells * cells, n_seqs)
        found = model.cache[key] = _replay(program, scale, alignment)
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
                   cache: CacheGraph | None = None) -> list[int]:
    """Compute buffer bytes per device: the GPUs in order, then the CPU (last).

    ``cache``: cache_graph() of the cache types; None when unknown: the largest of the
    quantized / not quantized cases (f16 and quantized caches).
    """
    result = [0] * len(slots)
    n_outputs = min(shape.n_ubatch, shape.n_batch)
    computing = [i for i, s in enumerate(slots) if s.holds_layers or s.holds_output]
    alone = len(computing) == 1 and slots[computing[0]].holds_layers \
        and slots[computing[0]].holds_output and simulates(model)
    cases = [cache] if cache is not None else [
        (k, v, False, False) for k in (False, True) for v in (False, True)]

    def replayed(alignment: int) -> int:
        return max(simulated_peak(model, shape, fa, c, alignment) for c in cases)

    for i, slot in enumerate(slots):
        is_cpu = i == len(slots) - 1
        if not slot.holds_layers and not slot.holds_output:
            if is_cpu:
                # the host still embeds the tokens and builds the inputs for the GPUs
                result[i] = _al(F32 * model.n_embd * shape.n_ubatch) + _al(
                    F32 * shape.n_ctx_seq * shape.n_ubatch)
            continue
        if alone and is_cpu:
            result[i] = replayed(CPU_ALIGN)
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
            peaks.append(replayed(CUDA_ALIGN))
        result[i] = max(peaks)
    return result
