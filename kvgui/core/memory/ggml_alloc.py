"""ggml-alloc (ggml/src/ggml-alloc.c), recorded once per graph and replayed per shape.

llama.cpp's compute buffer is the high-water mark of ggml_gallocr over the reserve graph, and
that depends on where each tensor lands, not only on what is alive at once. Which tensor is
placed, reused in place or freed when depends on the graph alone; the sizes depend on the
context. So ``record`` walks the graph once (ggml_gallocr_alloc_graph_impl) into a list of
allocations and frees, and ``replay`` runs the free-block allocator (ggml_dyn_tallocr) over it
for the sizes of one shape. Layers that do the same thing from the same allocator state are
replayed once: that keeps a replay at a few layers' worth of work for any depth.
"""

from __future__ import annotations

import itertools
from bisect import bisect_left, bisect_right
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

CPU_ALIGN = 32  # ggml-backend.cpp: the CPU buffer type's alignment (TENSOR_ALIGNMENT)
CUDA_ALIGN = 128
_UNBOUNDED = 1 << 62  # the CPU buffer type has no maximum size: one chunk, an endless last block

# A tensor's size: bytes as a linear form of the shape's scale vector (see compute_graph).
Size = tuple[int, ...]


class Tensor:
    """One graph tensor, with ggml-alloc's bookkeeping for it (struct hash_node)."""

    __slots__ = ("allocated", "index", "inplace", "is_input", "is_leaf", "is_output",
                 "layout", "n_children", "n_views", "srcs", "starts_layer", "view_src",
                 "visited")

    def __init__(self, srcs: tuple[Tensor | None, ...] = (), *,
                 view_src: Tensor | None = None, inplace: bool = False,
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
        self.index = 0  # its storage (in-place results share their parent's)
        self.visited = False
        self.starts_layer = False  # the first node of a layer (the replay's unit of reuse)


class Graph:
    """Nodes and leafs in the order ggml_build_forward_expand visits them (depth first,
    sources left to right, each tensor once)."""

    def __init__(self) -> None:
        self.nodes: list[Tensor] = []
        self.leafs: list[Tensor] = []

    def expand(self, root: Tensor) -> None:
        if root.visited:
            return
        root.visited = True
        stack: list[tuple[Tensor, int]] = [(root, 0)]
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


def record(graph: Graph, sizes: Mapping[Tensor, Size]) -> Program:
    """ggml_gallocr_alloc_graph_impl's walk: leafs first, then each node is placed (in place
    over a parent when allowed) and its parents freed after their last use."""
    distinct = sorted(dict.fromkeys(sizes.values()),
                      key=lambda s: sum(1 for c in s if c) > 1)  # (stable: one term first)
    single = tuple(next(((i, c) for i, c in enumerate(s) if c), (0, 0)) for s in distinct
                   if sum(1 for c in s if c) <= 1)
    index = {size: i for i, size in enumerate(distinct)}
    ops: list[tuple[int, int]] = []
    alive: dict[int, None] = {}  # storages of intermediate tensors now allocated, oldest first
    live: list[tuple[int, ...]] = []
    starts: list[int] = []
    n_storage = 0

    def place(node: Tensor) -> None:  # ggml_gallocr_allocate_node
        nonlocal n_storage
        if node.allocated or node.view_src is not None:
            return
        node.allocated = True
        if node.inplace:
            for p in node.srcs:
                # a view parent is never "own" (views are not allocated): never reused
                if (p is None or not p.allocated or p.is_output or p.layout is None
                        or p.layout != node.layout or p.n_children != 1 or p.n_views != 0):
                    continue
                p.allocated = False  # same layout, same size: nothing left over to free
                node.index = p.index
                return
        node.index = n_storage
        n_storage += 1
        ops.append((node.index, index[sizes[node]]))
        if not node.is_leaf:
            alive[node.index] = None

    def release(node: Tensor) -> None:  # ggml_gallocr_free_node
        if not node.is_output:
            ops.append((~node.index, index[sizes[node]]))
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
            starts.append(len(ops))
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
    first, last = (starts[0], starts[-1]) if starts else (len(ops), len(ops))
    layers = tuple(tuple(ops[a:b]) for a, b in itertools.pairwise(starts))
    classes: dict[tuple[object, ...], int] = {}
    shapes = tuple(classes.setdefault(_signature(layer, live[i], live[i + 1]), len(classes))
                   for i, layer in enumerate(layers))
    return Program(tuple(distinct), single, n_storage, tuple(ops[:first]), layers,
                   tuple(ops[last:]), tuple(live), shapes)


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
    the graph has empty tensors (``scan``: then as ggml does, block by block)."""
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
        if scan:
            tail = _free_scan(o, size, hoff, hsize, tail)
            continue
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


def _free_scan(o: int, size: int, hoff: list[int], hsize: list[int], tail: int) -> int:
    """Allocator.free, step for step (ggml_dyn_tallocr_free_bytes' scan): for graphs with
    empty tensors, whose empty blocks the bisection in _run does not expect. Returns the new
    ``tail``."""
    end = o + size
    for j, ho in enumerate(hoff):
        if ho + hsize[j] == o:  # the block before it
            hsize[j] += size
            end = ho + hsize[j]
            if j + 1 < len(hoff):
                if hoff[j + 1] == end:
                    hsize[j] += hsize[j + 1]
                    del hoff[j + 1], hsize[j + 1]
            elif end == tail:
                tail = ho
                del hoff[j], hsize[j]
            return tail
        if ho == end:  # the block after it
            hoff[j] = o
            hsize[j] += size
            if j and hoff[j - 1] + hsize[j - 1] == o:
                hsize[j - 1] += hsize[j]
                del hoff[j], hsize[j]
            return tail
    if end == tail:
        return o
    j = bisect_left(hoff, o)
    hoff.insert(j, o)
    hsize.insert(j, size)
    return tail


def replay(program: Program, scale: Sequence[int], alignment: int,
           shortcut: bool = True) -> int:
    """The buffer size ggml-alloc reaches for the recorded operations at these sizes.

    With ``shortcut``, a layer whose operations and starting state (free blocks, where its
    live storages are) were met before is not run again: it ends where that one ended, and
    its high-water mark was reached then. Back in the state of an earlier layer, the layers
    in between repeat for as long as their shapes do: they are skipped by whole periods."""
    table = size_table(program, scale, alignment)
    offset = [0] * program.n_storage
    hoff: list[int] = []
    hsize: list[int] = []
    scan = 0 in table
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
