"""ggml-alloc (ggml/src/ggml-alloc.c), recorded once per graph and replayed per shape.

llama.cpp's compute buffer is the high-water mark of ggml_gallocr over the reserve graph, and
that depends on where each tensor lands, not only on what is alive at once. Which tensor is
placed, reused in place or freed when depends on the graph alone (the symbolic IR: layouts
compare as polynomials); the sizes depend on the context. So ``record`` walks the graph once
(ggml_gallocr_alloc_graph_impl) into a list of allocations and frees, and ``replay`` runs the
free-block allocator (ggml_dyn_tallocr) over it for the sizes of one shape. Layers that do the
same thing from the same allocator state are replayed once: that keeps a replay at a few
layers' worth of work for any depth.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph import sym
from kvgui.core.memory.graph.ir import Graph, Tensor
from kvgui.core.memory.graph.sym import Dim, Mono, monomials

CPU_ALIGN = 32  # ggml-backend.cpp: the CPU buffer type's alignment (TENSOR_ALIGNMENT)
CUDA_ALIGN = 128
_UNBOUNDED = 1 << 62  # the CPU buffer type has no maximum size: one chunk, an endless last block

# A tensor's size: bytes as a linear form of the program's monomials (``Program.monos``): the
# scale vector of a shape holds each monomial's value.
Size = tuple[int, ...]


class Allocator:
    """ggml_dyn_tallocr: best fit among the free blocks before the last, else the last block
    (which grows the buffer); freed ranges merge with their neighbours.

    The reference form; ``replay`` runs the same rules inline (tests hold them equal)."""

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


# An operation: (storage, size index) places a storage, (~storage, size index) frees one.
Ops = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Program:
    """What ggml-alloc does for one graph, independent of tensor sizes.

    ``prologue`` runs before the first layer, ``layers[i]`` is layer i up to the next layer's
    start, ``epilogue`` the last layer and the output head. ``live[i]``: the storages
    allocated across layer i's start. Layers with the same ``shapes`` entry do the same
    operations up to renaming (their live storages in order, their own, the same inputs), so
    from the same allocator state they end in the same state."""

    sizes: tuple[Size, ...]  # the distinct sizes: one term first, then the rest
    single: tuple[tuple[int, int], ...]  # (scale index, coefficient) of those with one term
    n_storage: int
    prologue: Ops
    layers: tuple[Ops, ...]
    epilogue: Ops
    live: tuple[tuple[int, ...], ...]
    shapes: tuple[int, ...]
    monos: tuple[Mono, ...] = ()  # what each scale entry is the value of
    _repeats: dict[int, list[int]] = field(default_factory=dict, compare=False, repr=False)

    def repeats(self, period: int) -> list[int]:
        """For each layer x: the first layer from x on whose shape differs from the one
        ``period`` before it (or the layer count)."""
        found = self._repeats.get(period)
        if found is None:
            shapes, n = self.shapes, len(self.shapes)
            found = [n] * (n + 1)
            for x in range(n - 1, period - 1, -1):
                found[x] = x if shapes[x] != shapes[x - period] else found[x + 1]
            self._repeats[period] = found
        return found

    def scale(self, env: Mapping[str, int]) -> list[int]:
        """The value of each monomial for one shape (variable values ``env``)."""
        values = dict(env)
        out = []
        for mono in self.monos:
            x = 1
            for v in mono:
                if v not in values:  # a derived variable (GGML_PAD of a size): from the rest
                    sym.with_derived(values, (v,))
                x *= values[v]
            out.append(x)
        return out


class _Hash:
    """ggml-alloc's hash_node for one tensor, plus the storage it was given."""

    __slots__ = ("allocated", "n_children", "n_views", "storage")

    def __init__(self) -> None:
        self.n_children = 0
        self.n_views = 0
        self.allocated = False
        self.storage = -1


class _Walk(Protocol):
    nodes: list[Tensor]
    leafs: list[Tensor]


def _nbytes(t: Tensor, buffer: int) -> Dim:
    return ggml.nbytes(t)


def record(graph: Graph | _Walk, alloc_size: Callable[[Tensor, int], Dim] = _nbytes,
           layer_of: Callable[[Tensor], int] | None = None) -> Program:
    """ggml_gallocr_alloc_graph_impl on one buffer: leafs, then the inputs, then each node
    with its parents (placed in place over a parent when allowed), each parent freed after
    its last child; outputs are never freed.

    ``alloc_size(tensor, buffer)``: ggml_backend_buft_get_alloc_size (the bytes placed for a
    tensor, before alignment). ``layer_of``: the layer a node belongs to (default its ``il``);
    the first node of each layer starts a unit of the replay's reuse."""
    sizes, size_of, _, ops, starts, live = _walk(graph, alloc_size, layer_of, None, None)
    return _program(sizes, size_of, ops, starts, live)


def record_buffers(graph: _Walk, node_buffers: Sequence[int], leaf_buffers: Sequence[int],
                   n_buffers: int, alloc_size: Callable[[Tensor, int], Dim] = _nbytes,
                   layer_of: Callable[[Tensor], int] | None = None) -> tuple[Program, ...]:
    """ggml_gallocr_alloc_graph_impl over several buffers (the scheduler's graph copy, with
    each node's and leaf's buffer as node_buffer_ids / leaf_buffer_ids give them): a parent
    reused in place keeps its buffer; an input or a parent is placed in the buffer of the node
    being walked. Each buffer has its own allocator, which sees only its own operations in
    order: one Program per buffer."""
    sizes, size_of, buffer_of, ops, starts, live = _walk(graph, alloc_size, layer_of,
                                                         node_buffers, leaf_buffers)
    parts = []
    for b in range(n_buffers):
        mine = [i for i, (s, _) in enumerate(ops) if buffer_of[s if s >= 0 else ~s] == b]
        at = 0
        b_starts = []
        for start in starts:  # (the same layer boundaries, counted in this buffer's ops)
            while at < len(mine) and mine[at] < start:
                at += 1
            b_starts.append(at)
        b_live = [tuple(s for s in alive if buffer_of[s] == b) for alive in live]
        used = sorted({ops[i][1] for i in mine})  # (this buffer's sizes only)
        renumber = {k: n for n, k in enumerate(used)}
        parts.append(_program([sizes[k] for k in used], [renumber.get(k, 0) for k in size_of],
                              [(ops[i][0], renumber[ops[i][1]]) for i in mine], b_starts,
                              b_live))
    return tuple(parts)


def _walk(graph: Graph | _Walk, alloc_size: Callable[[Tensor, int], Dim],
          layer_of: Callable[[Tensor], int] | None, node_buffers: Sequence[int] | None,
          leaf_buffers: Sequence[int] | None
          ) -> tuple[list[Dim], list[int], list[int], list[tuple[int, int]], list[int],
                     list[tuple[int, ...]]]:
    """The walk itself: distinct sizes, each storage's size and buffer, the operations, where
    each layer starts in them and the storages alive there."""
    hashes: dict[int, _Hash] = {}

    def h(t: Tensor) -> _Hash:
        found = hashes.get(id(t))
        if found is None:
            found = hashes[id(t)] = _Hash()
        return found

    sizes: dict[Dim, int] = {}  # distinct byte sizes, in order of first use
    size_of: list[int] = []  # per storage: its size index
    buffer_of: list[int] = []  # per storage: its buffer
    ops: list[tuple[int, int]] = []
    alive: dict[int, None] = {}  # storages placed by the node walk, still allocated
    live: list[tuple[int, ...]] = []
    starts: list[int] = []
    in_walk = False

    def allocate_node(node: Tensor, buffer: int) -> None:  # ggml_gallocr_allocate_node
        if node.loc is not None or node.view_src is not None:  # external data, or a view
            return
        hn = h(node)
        if hn.allocated:
            return
        hn.allocated = True
        if node.op in ggml.CAN_INPLACE:
            layout = None
            for parent in node.src:
                if parent is None or parent.loc is not None:
                    continue
                ph = hashes.get(id(parent))
                if ph is None or not ph.allocated:  # not own: views are never allocated
                    continue
                if parent.is_output or (parent.view_src is not None
                                        and parent.view_src.is_output):
                    continue
                if layout is None:
                    layout = node.layout()
                if parent.layout() != layout:
                    continue
                if ph.n_children == 1 and ph.n_views == 0:
                    # (a view parent is never own, so ggml's branch for views cannot apply;
                    # the same layout means the same size: no extra space to free)
                    hn.storage = ph.storage
                    ph.allocated = False
                    return
        size = alloc_size(node, buffer)
        k = sizes.get(size)
        if k is None:
            k = sizes[size] = len(sizes)
        hn.storage = len(size_of)
        size_of.append(k)
        buffer_of.append(buffer)
        ops.append((hn.storage, k))
        if in_walk:
            alive[hn.storage] = None

    def free_node(node: Tensor, hn: _Hash) -> None:  # ggml_gallocr_free_node
        if node.is_output:
            return
        ops.append((~hn.storage, size_of[hn.storage]))
        hn.allocated = False
        alive.pop(hn.storage, None)

    for i, leaf in enumerate(graph.leafs):
        allocate_node(leaf, leaf_buffers[i] if leaf_buffers is not None else 0)
    for i, node in enumerate(graph.nodes):
        buffer = node_buffers[i] if node_buffers is not None else 0
        if node.view_src is not None and node.op != "NONE":
            h(node.view_src).n_views += 1
        if node.is_input:
            allocate_node(node, buffer)
        for src in node.src:
            if src is None:
                continue
            h(src).n_children += 1
            if src.is_input:
                allocate_node(src, buffer)
    in_walk = True
    layer_of = layer_of or (lambda t: t.il)
    next_layer = 0
    for i, node in enumerate(graph.nodes):
        buffer = node_buffers[i] if node_buffers is not None else 0
        il = layer_of(node)
        if il >= next_layer:
            starts.append(len(ops))
            live.append(tuple(alive))
            next_layer = il + 1
        for parent in node.src:
            if parent is not None:
                allocate_node(parent, buffer)
        allocate_node(node, buffer)
        for parent in node.src:
            if parent is None:
                continue
            ph = h(parent)
            ph.n_children -= 1
            if ph.n_children == 0 and ph.n_views == 0:
                vs = parent.view_src
                if vs is not None:
                    vh = h(vs)
                    vh.n_views -= 1
                    if vh.n_views == 0 and vh.n_children == 0 and vh.allocated:
                        free_node(vs, vh)
                elif ph.allocated:
                    free_node(parent, ph)
    return list(sizes), size_of, buffer_of, ops, starts, live


def _program(sizes: list[Dim], size_of: list[int], ops: list[tuple[int, int]],
             starts: list[int], live: list[tuple[int, ...]]) -> Program:
    """The recording as a Program: sizes as linear forms over their monomials (those with one
    term first, for the replay's fast path), the walk cut into layers and their shapes."""
    basis: dict[Mono, int] = {}
    forms = [monomials(s) for s in sizes]
    for form in forms:
        for m, _ in form:
            basis.setdefault(m, len(basis))
    order = sorted(range(len(sizes)), key=lambda i: len(forms[i]) > 1)  # (stable)
    rank = {old: new for new, old in enumerate(order)}
    dense: list[Size] = []
    single: list[tuple[int, int]] = []
    for old in order:
        vec = [0] * len(basis)
        for m, c in forms[old]:
            vec[basis[m]] = c
        dense.append(tuple(vec))
        if len(forms[old]) <= 1:
            single.append(next(((basis[m], c) for m, c in forms[old]), (0, 0)))
    ops = [(s, rank[k]) for s, k in ops]
    first, last = (starts[0], starts[-1]) if starts else (len(ops), len(ops))
    layers = tuple(tuple(ops[a:b]) for a, b in itertools.pairwise(starts))
    classes: dict[tuple[object, ...], int] = {}
    shapes = tuple(classes.setdefault(_signature(layer, live[i], live[i + 1]), len(classes))
                   for i, layer in enumerate(layers))
    return Program(tuple(dense), tuple(single), len(size_of), tuple(ops[:first]), layers,
                   tuple(ops[last:]), tuple(live), shapes, tuple(basis))


def _signature(ops: Ops, live_in: tuple[int, ...], live_out: tuple[int, ...]
               ) -> tuple[object, ...]:
    """A layer's operations with its storages renamed: those alive at its start by position,
    its own by order of placement; any other (an input it is the last user of) keeps its
    name, so such a layer matches no other."""
    own: dict[int, int] = {}
    given = {s: i for i, s in enumerate(live_in)}

    def name(s: int) -> tuple[int, int]:
        if s in given:
            return (0, given[s])
        if s in own:
            return (1, own[s])
        return (2, s)

    renamed: list[object] = [len(live_in)]
    for s, k in ops:
        if s >= 0:
            own[s] = len(own)
            renamed.append((0, own[s], k))
        else:
            renamed.append((1, name(~s), k))
    renamed.append(tuple(name(s) for s in live_out))
    return tuple(renamed)


def size_table(program: Program, scale: Sequence[int], alignment: int) -> list[int]:
    """Each distinct size in bytes at ``scale``, aligned (ggml_backend_buft_get_alloc_size)."""
    table = [-(-scale[i] * c // alignment) * alignment for i, c in program.single]
    table += [-(-sum(c * x for c, x in zip(size, scale, strict=True)) // alignment) * alignment
              for size in program.sizes[len(table):]]
    return table


def _run(ops: Ops, table: list[int], offset: list[int], hoff: list[int], hsize: list[int],
         tail: int, top: int, scan: bool = False) -> tuple[int, int]:
    """Allocator.alloc / free for each operation, inline (this is the estimate's hot path).
    The free blocks before the last are ``hoff`` / ``hsize`` (by offset), the last one starts
    at ``tail``; returns the new ``tail`` and the high-water mark ``top`` (at least ``top``).
    A block before the last lies below ``tail``, so only growing the last moves ``top``.
    Frees find their neighbours by bisection: the blocks are apart and never empty, unless
    the graph has empty tensors (``scan``: then _run_scan, as ggml does, block by block)."""
    if scan:
        return _run_scan(ops, table, offset, hoff, hsize, top)
    for s, k in ops:
        size = table[k]
        if s >= 0:
            if not hsize or size > max(hsize):  # no block before the last is big enough
                offset[s] = tail
                tail += size
                if tail > top:
                    top = tail
            else:
                best, best_size = 0, _UNBOUNDED
                for j, bs in enumerate(hsize):
                    if size <= bs <= best_size:
                        best, best_size = j, bs
                o = offset[s] = hoff[best]
                if best_size == size:
                    del hoff[best], hsize[best]
                else:
                    hoff[best] = o + size
                    hsize[best] = best_size - size
            continue
        o = offset[~s]
        end = o + size
        j = bisect_right(hoff, o)  # the first block after it (a block is never inside it)
        if j and hoff[j - 1] + hsize[j - 1] == o:  # merge with the block before it
            hsize[j - 1] += size
            if j < len(hoff):
                if hoff[j] == end:
                    hsize[j - 1] += hsize[j]
                    del hoff[j], hsize[j]
            elif end == tail:
                tail = hoff[j - 1]
                del hoff[j - 1], hsize[j - 1]
        elif j < len(hoff) and hoff[j] == end:  # with the block after it
            hoff[j] = o
            hsize[j] += size
        elif end == tail:
            tail = o
        else:
            hoff.insert(j, o)
            hsize.insert(j, size)
    return tail, top


def _run_scan(ops: Ops, table: list[int], offset: list[int], hoff: list[int],
              hsize: list[int], top: int) -> tuple[int, int]:
    """Allocator.alloc / free step for step, for graphs with empty tensors (fam-hybrid: the
    empty copies of a recurrent state's extra rows over several devices): ``hoff`` / ``hsize``
    hold every free block in ggml's list order, the endless one included (start them as
    ``[0]`` / ``[_UNBOUNDED]``). An empty block freed beyond the endless one lands after it
    (ggml_dyn_tallocr_insert_block), and empty blocks leave the list out of address order:
    only the list itself, scanned as ggml scans it, gives the same placements. Returns the
    endless block's start (as _run's ``tail``) and the high-water mark."""
    for s, k in ops:
        size = table[k]
        if s >= 0:  # ggml_dyn_tallocr_alloc: best fit before the list's last, else the last
            n = len(hsize)
            best, best_size = n - 1, _UNBOUNDED + 1
            for j in range(n - 1):
                bs = hsize[j]
                if size <= bs <= best_size:
                    best, best_size = j, bs
            o = offset[s] = hoff[best]
            hoff[best] += size
            hsize[best] -= size
            if hsize[best] == 0:
                del hoff[best], hsize[best]
            if o + size > top:
                top = o + size
            continue
        o = offset[~s]  # ggml_dyn_tallocr_free_bytes
        end = o + size
        n = len(hoff)
        for j in range(n):
            if hoff[j] + hsize[j] == o:
                hsize[j] += size
                if j < n - 1 and hoff[j] + hsize[j] == hoff[j + 1]:
                    hsize[j] += hsize[j + 1]
                    del hoff[j + 1], hsize[j + 1]
                break
            if end == hoff[j]:
                hoff[j] = o
                hsize[j] += size
                if j and hoff[j - 1] + hsize[j - 1] == o:
                    hsize[j - 1] += hsize[j]
                    del hoff[j], hsize[j]
                break
        else:
            j = 0
            while j < n and hoff[j] < o:
                j += 1
            hoff.insert(j, o)
            hsize.insert(j, size)
    tail = next(o for o, z in zip(hoff, hsize, strict=True) if z > _UNBOUNDED // 2)
    return tail, top


def replay(program: Program, scale: Sequence[int], alignment: int,
           shortcut: bool = True) -> int:
    """The buffer size ggml-alloc reaches for the recorded operations at these sizes.

    With ``shortcut``, a layer whose operations and starting state (free blocks, where its
    live storages are) were met before is not run again: it ends where that one ended, and
    its high-water mark was reached then. Back in the state of an earlier layer, the layers
    in between repeat for as long as their shapes do: they are skipped by whole periods."""
    table = size_table(program, scale, alignment)
    offset = [0] * program.n_storage
    scan = 0 in table
    hoff: list[int] = [0] if scan else []  # (_run_scan lists the endless block too)
    hsize: list[int] = [_UNBOUNDED] if scan else []
    tail, top = _run(program.prologue, table, offset, hoff, hsize, 0, 0, scan)
    layers, live, shapes = program.layers, program.live, program.shapes
    if not shortcut:
        for ops in layers:
            tail, top = _run(ops, table, offset, hoff, hsize, tail, top, scan)
    elif layers:
        # state: (free block offsets, sizes, last block, offsets of the live storages)
        states: dict[tuple[object, ...], int] = {}
        saved: list[tuple[tuple[int, ...], tuple[int, ...], int, tuple[int, ...]]] = []
        after: dict[tuple[int, int], int] = {}  # (shape, state at its start): state at its end
        n = len(layers)
        state = (tuple(hoff), tuple(hsize), tail, tuple(offset[s] for s in live[0]))
        cur = states.setdefault(state, 0)
        saved.append(state)
        held = True  # the allocator is in state ``cur``
        met: dict[int, int] = {}  # state: the last layer that started in it
        i = 0
        while i < n:
            j = met.get(cur)
            met[cur] = i
            if j is not None:
                # back in the state of layer j: the layers from i repeat those from j for as
                # long as their shapes do, and so does the state at every period
                period = i - j
                skip = (program.repeats(period)[i] - i) // period * period
                if skip:
                    i += skip
                    held = False
                    continue
            key = (shapes[i], cur)
            known = after.get(key)
            if known is not None:  # (its high-water mark is in ``top`` already)
                i += 1
                cur = known
                held = False
                continue
            if not held:
                h_off, h_size, tail, at = saved[cur]
                hoff[:], hsize[:] = h_off, h_size
                for s, o in zip(live[i], at, strict=True):
                    offset[s] = o
            tail, top = _run(layers[i], table, offset, hoff, hsize, tail, top, scan)
            i += 1
            state = (tuple(hoff), tuple(hsize), tail, tuple(offset[s] for s in live[i]))
            cur = states.setdefault(state, len(saved))
            if cur == len(saved):
                saved.append(state)
            after[key] = cur
            held = True
        if not held:
            h_off, h_size, tail, at = saved[cur]
            hoff[:], hsize[:] = h_off, h_size
            for s, o in zip(live[n], at, strict=True):
                offset[s] = o
    tail, top = _run(program.epilogue, table, offset, hoff, hsize, tail, top, scan)
    return top
