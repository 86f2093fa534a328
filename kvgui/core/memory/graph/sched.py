"""ggml_backend_sched (ggml/src/ggml-backend.cpp): which backend runs each node, the splits, the
input copies, and the graph ggml-alloc then places per backend.

llama.cpp hands its graph to the scheduler with one backend per device (GPUs in order, the CPU
last) and each backend's compute buffer type. ``split_graph`` is
ggml_backend_sched_split_graph over the IR: pass 1 assigns nodes from where their data or their
weights live (inputs to the CPU; an op with host weights to a GPU whose ``offload_op`` wants
it), passes 2-4 expand the assignments up and down (GPUs first, the CPU only where nothing else
reaches) and give the sources the rest, pass 5 cuts the graph where the backend changes and
adds a copy for each source that lives on a backend the split's cannot read (once per source
and backend; ``n_copies`` of them, never freed, with pipeline parallelism), pass 6 makes the
graph inputs' copies, and the graph copy is built: per split its input dependencies and copies,
then its nodes. ``alloc.record`` then walks that graph with each node in its backend's buffer.

With one backend everything lands on it and the split graph is the graph itself: the plain
single-device replay.

The scheduler's view of a device is a ``Backend`` (its buffer type, alignment, which buffer
types it can read, ``offload_op``) and of a tensor with its own storage a ``Buft`` (where the
placement put it); what depends on the shape (a GPU's offload_op batch threshold, llama.cpp's
n_tokens < 32 rule) is decided at the shape given and recorded (``Decisions``), so a recording
is reused for every shape that decides alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from kvgui.core.memory.graph import ops as ggml
from kvgui.core.memory.graph.ir import INPUT, OUTPUT, VIEW_OPS, Graph, Tensor
from kvgui.core.memory.graph.sym import Dim, evaluate, pad

GGML_SCHED_MAX_COPIES = 4  # ggml/CMakeLists.txt (llama-cpp-python's build keeps it)


@dataclass(frozen=True)
class Buft:
    """A buffer type: ``host`` memory (the CPU backend reads it) or a device's own."""

    name: str
    host: bool
    device: int = -1  # the backend (index) whose memory it is; -1 for host memory
    # a CPU extra buffer type (CPU_REPACK, AMX): the CPU reads it (``host``), but its is_host
    # is NULL, so ggml_backend_buffer_is_host is false and no GPU's offload_op takes its ops
    extra: bool = False


@dataclass(frozen=True)
class Backend:
    """One backend of the scheduler, as far as placement and allocation go.

    ``kind``: "cpu", "cuda" or "rpc" (an RPC device reads only its own buffers, runs every op,
    and has no offload_op). ``offload_batch``: the batch size from which offload_op takes an
    op whose weights are in host memory (CUDA: op_offload_min_batch_size, 32); 0: never."""

    name: str
    kind: str
    buft: Buft
    alignment: int
    offload_batch: int = 0

    @property
    def is_cpu(self) -> bool:
        return self.kind == "cpu"

    def supports_buft(self, buft: Buft) -> bool:
        if self.is_cpu:
            return buft.host  # ggml_backend_cpu_device_supports_buft (extra bufts are host)
        return buft.device == self.buft.device and not buft.host

    def supports_op(self, t: Tensor) -> bool:
        return True  # (every op of the builders' graphs runs on the CPU, CUDA and RPC)

    def alloc_size(self, t: Tensor) -> Dim:
        """ggml_backend_buft_get_alloc_size: ggml_nbytes (CPU, RPC to a CPU server); CUDA
        adds its flash-attention scratch (ggml_cuda_flash_attn_ext_get_alloc_size)."""
        size = ggml.nbytes(t)
        if self.kind == "cuda" and t.op == "FLASH_ATTN_EXT":
            size = _cuda_fattn_alloc_size(t, size)
        return size


def _cuda_fattn_alloc_size(dst: Tensor, nbytes: Dim) -> Dim:
    """fattn.cu / fattn-common.cuh: the MMA and tile kernels (those a ubatch of more than two
    tokens per sequence gets on Volta and later) read K and V as f16, converted into space
    after the result, 128-byte aligned; V that is a view of K (MLA) shares K's."""
    k, v = dst.src[1], dst.src[2]
    assert k is not None and v is not None
    end = nbytes
    if k.type.id != ggml.F16.id:
        end = pad(end, 128) + ggml.nelements(k) * ggml.F16.type_size
    v_is_k = v.view_src is not None and (v.view_src is k or (
        v.view_src is k.view_src and v.view_offs == k.view_offs))
    if v.type.id != ggml.F16.id and not v_is_k:
        end = pad(end, 128) + ggml.nelements(v) * ggml.F16.type_size
    return end


@dataclass
class Decisions:
    """Comparisons of shape-dependent sizes made while scheduling, at ``env``: a recording
    serves every shape for which they come out the same."""

    env: Mapping[str, int]
    made: list[tuple[Dim, int, bool]] = field(default_factory=list)

    def at_least(self, d: Dim, n: int) -> bool:
        if isinstance(d, int):
            return d >= n
        outcome = evaluate(d, self.env) >= n
        self.made.append((d, n, outcome))
        return outcome

    def hold_for(self, env: Mapping[str, int]) -> bool:
        return all((evaluate(d, env) >= n) == outcome for d, n, outcome in self.made)


@dataclass
class SplitGraph:
    """The scheduler's graph copy: what ggml_gallocr_reserve_n is given."""

    nodes: list[Tensor]
    leafs: list[Tensor]
    node_backend: list[int]
    leaf_backend: list[int]
    splits: list[tuple[int, int]]  # (backend, number of inputs copied in)
    backend_of: dict[int, int]  # id(tensor) -> backend (every tensor of the graph)

    @property
    def n_splits(self) -> int:
        return len(self.splits)


@dataclass
class _Split:
    """ggml_backend_sched_split: a backend's run of nodes and the inputs copied for it."""

    backend: int
    start: int
    end: int = 0
    inputs: list[Tensor] = field(default_factory=list)


def _batch_size(t: Tensor) -> Dim:
    """ggml-cuda.cu get_op_batch_size."""
    if t.op == "GET_ROWS":
        return 0
    if t.op == "MUL_MAT":
        return t.ne[1]
    if t.op in ("MUL_MAT_ID", "ROPE", "ROPE_BACK"):
        return t.ne[2]
    return ggml.nrows(t)


def split_graph(graph: Graph, backends: Sequence[Backend],
                buft_of: Callable[[Tensor], Buft], decisions: Decisions,
                assigned: Mapping[int, int] | None = None, n_copies: int = 1,
                op_offload: bool = True) -> SplitGraph:
    """ggml_backend_sched_split_graph. ``buft_of``: the buffer type of a tensor with its own
    storage (``loc``); ``assigned``: user assignments (ggml_backend_sched_set_tensor_backend),
    by id(tensor). The graph's nodes have their sources replaced by the input copies (as in
    ggml); build a fresh graph for each call."""
    n_backends = len(backends)
    cpu = n_backends - 1
    bid: dict[int, int] = dict(assigned or {})

    def tid(t: Tensor | None) -> int:
        return -1 if t is None else bid.get(id(t), -1)

    def buffer_of(t: Tensor) -> Buft | None:
        owner = t.view_src if t.view_src is not None else t
        return buft_of(owner) if owner.loc is not None else None

    def backend_from_buffer(t: Tensor, op: Tensor) -> int:
        buft = buffer_of(t)
        if buft is None:
            return -1
        for i, b in enumerate(backends):
            if b.supports_buft(buft) and b.supports_op(op):
                return i
        return -1

    def from_cur(t: Tensor) -> int:  # ggml_backend_sched_backend_id_from_cur
        cur = backend_from_buffer(t, t)
        if cur != -1:
            return cur
        if t.view_src is not None:
            cur = backend_from_buffer(t.view_src, t)
            if cur != -1:
                return cur
        if buffer_of(t) is not None:
            raise ValueError(f"pre-allocated tensor {t} in a buffer no backend runs {t.op} on")
        if t.flags & INPUT:
            return cpu
        if t.op not in ("ROPE", "FLASH_ATTN_EXT"):  # (their weights are too small to decide)
            for src in t.src:
                if src is None or src.loc is None or src.view_src is not None \
                        or not src.loc.weight:
                    continue
                src_backend = backend_from_buffer(src, t)
                src_buft = buffer_of(src)
                if op_offload and src_backend == cpu and src_buft is not None and \
                        src_buft.host and not src_buft.extra:
                    for b in range(src_backend):
                        backend = backends[b]
                        if backend.supports_op(t) and backend.offload_batch and \
                                decisions.at_least(_batch_size(t), backend.offload_batch):
                            return b
                return src_backend
        return -1

    nodes = graph.nodes
    # pass 1: assign backends to ops with pre-allocated inputs
    for t in graph.leafs:
        if tid(t) == -1:
            bid[id(t)] = from_cur(t)
    for t in nodes:
        if tid(t) == -1:
            bid[id(t)] = from_cur(t)

    def set_if_supported(t: Tensor, b: int) -> None:
        if backends[b].supports_op(t):
            bid[id(t)] = b

    # pass 2: expand the GPU backends down and up (skipping the CPU), then the rest
    def expand(order: Sequence[Tensor], skip_cpu: bool) -> None:
        cur = -1
        for t in order:
            if t.op in VIEW_OPS:
                continue
            b = tid(t)
            if b != -1:
                cur = -1 if (skip_cpu and b == cpu) else b
            elif cur != -1:
                set_if_supported(t, cur)

    rev = nodes[::-1]
    expand(nodes, True)
    expand(rev, True)
    expand(nodes, False)
    expand(rev, False)

    def buffer_supported(t: Tensor, b: int) -> bool:
        buft = buffer_of(t)
        if buft is None:
            tb = tid(t)
            if tb == -1 and t.view_src is not None:
                tb = tid(t.view_src)
            if tb == -1:
                return False
            buft = backends[tb].buft
        return backends[b].supports_buft(buft)

    # pass 3: upgrade to higher-priority backends with the same buffer type; the unassigned
    # to the backend that supports most of their inputs
    for t in nodes:
        if t.op in VIEW_OPS:
            continue
        b = tid(t)
        if b == -1:
            best = -1
            for c, backend in enumerate(backends):
                if backend.supports_op(t):
                    n = sum(1 for s in t.src if s is not None
                            and (tid(s) != -1 or tid(s.view_src) != -1)
                            and buffer_supported(s, c))
                    if n > best:
                        best = n
                        bid[id(t)] = c
        else:
            for c in range(b):
                if backends[c].buft == backends[b].buft and backends[c].supports_op(t) and \
                        all(buffer_supported(s, c) for s in t.src if s is not None):
                    bid[id(t)] = c
                    break

    # pass 4: the remaining sources from their node or their view's source
    for t in nodes:
        if t.view_src is not None and tid(t) == -1:
            bid[id(t)] = tid(t.view_src)
        cur = tid(t)
        for s in t.src:
            if s is None or tid(s) != -1:
                continue
            bid[id(s)] = tid(s.view_src) if s.view_src is not None else cur
        for c in range(n_backends):
            if tid(t) != -1:
                break
            set_if_supported(t, c)
        if tid(t) == -1:
            raise ValueError(f"no backend runs {t}")

    # pass 5: split where the backend changes; copy the inputs a split cannot read
    splits: list[_Split] = []
    copies: dict[tuple[int, int], list[Tensor]] = {}  # (id(src), backend) -> its n_copies
    i = 0
    while i < len(nodes) and nodes[i].op in VIEW_OPS:
        i += 1
    first_backend = tid(nodes[i]) if i < len(nodes) else cpu
    split = _Split(first_backend, 0)
    splits.append(split)
    cur_backend = first_backend
    for j in range(i, len(nodes)):
        t = nodes[j]
        if t.op in VIEW_OPS:
            continue
        b = tid(t)
        need_new = False
        if b == cur_backend and split.inputs:
            for s in t.src:
                if s is not None and s.loc is not None and s.view_src is None \
                        and s.loc.weight and tid(s) != cur_backend \
                        and not buffer_supported(s, cur_backend):
                    need_new = True  # (a weight on another backend: start afresh)
                    break
        if b != cur_backend or need_new:
            split.end = j
            split = _Split(b, j)
            splits.append(split)
            cur_backend = b
        for k, s in enumerate(t.src):
            if s is None:
                continue
            sb = tid(s)
            assert sb != -1, f"unassigned input {s}"
            if sb != cur_backend and not buffer_supported(s, cur_backend):
                key = (id(s), cur_backend)
                if key not in copies:
                    made = []
                    for _ in range(n_copies):
                        dup = ggml.dup_tensor(ggml.Context(), s)
                        dup.nb = s.nb
                        dup.name = f"{backends[cur_backend].name}#{s.name}"
                        if n_copies > 1:
                            dup.flags |= INPUT | OUTPUT  # (never overwritten)
                        bid[id(dup)] = cur_backend
                        made.append(dup)
                    copies[key] = made
                    split.inputs.append(s)
                t.src[k] = copies[key][0]  # (the current copy)
    split.end = len(nodes)

    # pass 6: with pipeline parallelism, every graph input gets its copies too
    graph_inputs: list[Tensor] = []
    if n_copies > 1:
        for leaf in graph.leafs:
            if not leaf.flags & INPUT:
                continue
            lb = tid(leaf)
            key = (id(leaf), lb)
            if key not in copies:
                made = []
                for c in range(n_copies):
                    dup = leaf
                    if c != 0:
                        dup = ggml.dup_tensor(ggml.Context(), leaf)
                        dup.nb = leaf.nb
                        dup.il = -1
                        bid[id(dup)] = lb
                    dup.flags |= INPUT | OUTPUT
                    made.append(dup)
                copies[key] = made
            graph_inputs.append(leaf)

    # the graph copy: per split its input dependencies and copies, then its nodes
    out_nodes: list[Tensor] = []
    node_backend: list[int] = []
    for sp in splits:
        sb = sp.backend
        il = nodes[sp.start].il if sp.start < len(nodes) else -1  # (where the copies are)
        for inp in sp.inputs:
            dep = ggml.view_tensor(ggml.Context(), inp)  # (op NONE: counts as a child only)
            dep.src = [inp]
            dep.il = il
            out_nodes.append(dep)
            node_backend.append(tid(inp))
            cpy = copies[(id(inp), sb)][0]
            cpy.il = il
            out_nodes.append(cpy)
            node_backend.append(sb)
        for j in range(sp.start, sp.end):
            out_nodes.append(nodes[j])
            node_backend.append(tid(nodes[j]))
    leafs: list[Tensor] = []
    leaf_backend: list[int] = []
    if n_copies > 1:
        for inp in graph_inputs:
            lb = tid(inp)
            for dup in copies[(id(inp), lb)]:
                leafs.append(dup)
                leaf_backend.append(lb)
        for sp in splits:
            for inp in sp.inputs:
                for dup in copies[(id(inp), sp.backend)]:
                    leafs.append(dup)
                    leaf_backend.append(sp.backend)
    for leaf in graph.leafs:
        leafs.append(leaf)
        leaf_backend.append(tid(leaf))
    return SplitGraph(out_nodes, leafs, node_backend, leaf_backend,
                      [(sp.backend, len(sp.inputs)) for sp in splits], bid)
