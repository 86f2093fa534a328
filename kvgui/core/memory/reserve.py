"""The reserve graph of a model for some settings: built once, recorded, replayed per shape.

llama_context::sched_reserve builds the prompt-processing graph for one full ubatch and lets
ggml-alloc place it; that buffer is what llama.cpp reports as "compute". Here the graph is
built symbolically (builders/, graph/) for what changes its structure: the architecture, flash
attention, the cache types' kind, the number of sequences, a unified cache, and which shape
variables are 1; ggml-alloc's walk is recorded once for it (graph/alloc.py) and replayed for
the sizes of each context. The recordings live in the caller's ``ModelMemo`` (memo.py):
without one, each call builds and records afresh.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from kvgui.core.gguf import ggml_types
from kvgui.core.gguf.ggml_types import GGMLType
from kvgui.core.memory import builders
from kvgui.core.memory.builders.common import GraphParams, is_quantized
from kvgui.core.memory.graph import alloc
from kvgui.core.memory.graph.alloc import Program
from kvgui.core.memory.graph.ir import Tensor
from kvgui.core.memory.graph.sched import Backend, Buft, Decisions, split_graph
from kvgui.core.memory.graph.sym import Dim, SymbolicError
from kvgui.core.memory.memo import ModelMemo

if TYPE_CHECKING:
    from kvgui.core.memory.estimate import ContextShape
    from kvgui.core.model.info import ModelInfo

log = logging.getLogger(__name__)

# The stand-in for every quantized cache type: a model's graph is the same for q4_0 ... iq4_nl
# (the Hadamard rotations; the cache itself is only viewed and stored into), so one recording
# serves them all. A distinct object: a graph that allocates a tensor of the stand-in's type
# (a copy of a quantized cache, which llama.cpp makes only where it refuses the settings: MLA
# without flash attention) depends on the exact type, and is not replayed (program()).
_QUANT = GGMLType(8, "q8_0", 32, 34)


class CacheKinds(NamedTuple):
    """What the K and V cache types change in the graph: "f32", "f16", "bf16" or
    "quantized". ``exact``: the cache types themselves where they matter (cache_kinds())."""

    k: str
    v: str
    exact: tuple[str, str] | None = None

    @property
    def graph(self) -> CacheKinds:
        """The kinds without the exact types: what a graph is keyed by."""
        return self if self.exact is None else CacheKinds(self.k, self.v)


def cache_kinds(model: ModelInfo, type_k: str, type_v: str) -> CacheKinds:
    """What the cache types change in the graph. One recording serves every quantized type,
    except where the scheduler copies a layer's cache views into another backend's compute
    buffer, a tensor of the exact quantized type: the KV cache in RAM (-nkvo) read by
    attention on a GPU, or a CPU layer whose attention CUDA's offload_op draws to the GPU.
    Llama-3.1-8B -nkvo over two devices, the first one's compute: q8_0 130.08 MiB, q5_0
    118.08, q4_0 142.08. ``exact`` carries the types for those graphs (peaks())."""
    return _cache_kinds(type_k, type_v)


@functools.lru_cache(maxsize=256)
def _cache_kinds(type_k: str, type_v: str) -> CacheKinds:
    def kind(name: str) -> str:
        return "quantized" if is_quantized(ggml_types.by_name(name)) else name

    k, v = kind(type_k), kind(type_v)
    return CacheKinds(k, v, (type_k, type_v) if "quantized" in (k, v) else None)


def _type_of(kind: str) -> GGMLType:
    return _QUANT if kind == "quantized" else ggml_types.by_name(kind)


class ShapeValues(NamedTuple):
    """The reserve ubatch of one context: what llama_context::graph_reserve builds for."""

    n_seq_max: int  # sequences in the ubatch (the tokens are a multiple of it)
    kv_unified: bool
    env: dict[str, int]  # U tokens per sequence, O outputs, K / W cells per stream

    @property
    def ones(self) -> frozenset[str]:
        return frozenset(v for v in ("U", "O") if self.env[v] == 1)


def shape_values(shape: ContextShape) -> ShapeValues:
    """sched_reserve: n_tokens = min(n_ctx, n_ubatch) rounded up to a multiple of n_seq_max;
    outputs: min(n_tokens before rounding, n_outputs_max or n_batch) (ContextShape.n_outputs;
    llama-server sets n_outputs_max to its slots)."""
    n_seqs = max(int(getattr(shape, "n_seq", 0)), shape.n_stream, 1)
    n_outputs = getattr(shape, "n_outputs", 0) or min(shape.n_ubatch, shape.n_batch)
    u = -(-shape.n_ubatch // n_seqs)
    unified = shape.n_stream == 1 and n_seqs > 1
    return ShapeValues(n_seqs, unified, {"U": u, "O": n_outputs, "K": shape.n_ctx_seq,
                                         "W": shape.swa_cells})


class GraphKey(NamedTuple):
    """What a graph is built for (one recording each)."""

    fa: bool
    kinds: CacheKinds
    n_seq_max: int
    kv_unified: bool
    ones: frozenset[str]


_NO_ONES: frozenset[str] = frozenset()


class UnsupportedGraph(Exception):
    """No exact graph for this model (no builder, or a variant the builder does not read)."""


def graph_key(fa: bool, kinds: CacheKinds, values: ShapeValues) -> GraphKey:
    """The graph a shape's values are built with: the variables that are 1 are built as the
    constant (ggml special-cases dimensions of 1), so they are part of the key."""
    env = values.env
    ones = frozenset(v for v in ("U", "O") if env[v] == 1) if 1 in (env["U"], env["O"]) \
        else _NO_ONES
    return GraphKey(fa, kinds.graph, values.n_seq_max, values.kv_unified, ones)


def params_for(key: GraphKey) -> GraphParams:
    return GraphParams(key.fa, _type_of(key.kinds.k), _type_of(key.kinds.v), key.n_seq_max,
                       key.kv_unified, True, key.ones)


class _Recordings:
    """A model's programs by key, one object per distinct program (keys whose graphs place
    the same way share it, and its replays), and the replays done."""

    def __init__(self) -> None:
        self.programs: dict[GraphKey, Program] = {}
        self.distinct: dict[Program, Program] = {}
        self.peaks: dict[tuple[int, ...], int] = {}  # by program, variables, alignment
        self.by_shape: dict[tuple[object, ...], int] = {}  # by what peak() is asked
        self.split_by_shape: dict[tuple[object, ...], tuple[int, ...]] = {}  # peaks()
        self.splits: dict[tuple[GraphKey, Layout], list[_Split]] = {}
        self.tensors: dict[GraphKey, int] = {}  # nodes + leafs of each key's graph


def recordings(memo: ModelMemo) -> _Recordings:
    """The recordings of the memo's model."""
    return memo.get("reserve", None, _Recordings)


def program(model: ModelInfo, key: GraphKey, memo: ModelMemo | None = None) -> Program:
    """The recorded allocator program of the model's graph for ``key`` (memoized)."""
    recs = recordings(_memo(model, memo))
    found = recs.programs.get(key)
    if found is None:
        try:
            result, graph = builders.build(model, params_for(key))
        except (AssertionError, AttributeError, IndexError, KeyError, SymbolicError) as exc:
            # a file the builder cannot follow, or settings ggml itself would refuse (a
            # quantized V cache without flash attention, a head size not in whole blocks)
            raise UnsupportedGraph(f"{model.arch}: {type(exc).__name__}: {exc}") from exc
        unread = builders.unread_tensors(model, graph)
        if unread:
            raise UnsupportedGraph(f"{model.arch}: tensors the graph does not read: "
                                   f"{sorted(unread)[:4]}")
        for node in result.gf.nodes:
            if node.type is _QUANT and node.view_src is None and node.loc is None:
                raise UnsupportedGraph(f"{model.arch}: {node} copies a quantized cache: its "
                                       "size depends on the exact type")
        recorded = alloc.record(result.gf)
        recs.tensors[key] = len(result.gf.nodes) + len(result.gf.leafs)
        found = recs.programs[key] = recs.distinct.setdefault(recorded, recorded)
    return found


# --- the graph's size against llama.cpp's budget for it ----------------------------------

# src/llama-context.cpp graph_max_nodes: the architectures given 40 nodes per token (or 32 per
# tensor); two more get 160 / 80 per token and 64 per tensor; dflash 12 per tensor with a
# selector rank (not modelled: dflash has no builder); every other one max(1024, 8 per tensor)
_NODES_40_PER_TOKEN = frozenset({
    "qwen3next", "kimi-linear", "bailingmoe3", "qwen35", "qwen35moe", "qwen4exp", "deepseek4",
    "nanbeige", "minimax-01", "minimax-m3", "hy_v4"})
_NODES_BIG = {"kimi-k3": 160, "glm5-next": 160, "hrm_text": 80}
# ggml.c ggml_hash_size: the next primes after powers of two
_HASH_PRIMES = (2, 3, 5, 11, 17, 37, 67, 131, 257, 521, 1031, 2053, 4099, 8209, 16411, 32771,
                65537, 131101, 262147, 524309, 1048583, 2097169, 4194319, 8388617, 16777259,
                33554467, 67108879, 134217757, 268435459, 536870923, 1073741827, 2147483659)


def graph_max_nodes(model: ModelInfo, n_tokens: int) -> int:
    """llama_context::graph_max_nodes for the reserved ubatch of ``n_tokens``. The model's
    tensor count is llama_model::n_tensors() (every tensor created), taken as the file's
    tensor table: a tied output head created twice counts one less here."""
    n_tensors = len(model.tensor_table)
    if model.arch in _NODES_BIG:
        return max(n_tokens * _NODES_BIG[model.arch], 64 * n_tensors)
    if model.arch in _NODES_40_PER_TOKEN:
        return max(n_tokens * 40, 32 * n_tensors)
    return max(1024, 8 * n_tensors)


def hash_size(n: int) -> int:
    """ggml_hash_size: the smallest listed prime >= n."""
    return next((p for p in _HASH_PRIMES if p >= n), n | 1)


def graph_tensors(model: ModelInfo, shape: ContextShape, fa: bool, kinds: CacheKinds,
                  memo: ModelMemo | None = None) -> int | None:
    """Nodes + leafs of the reserve graph for these settings (None: no exact graph).

    ggml_backend_sched_new sizes its hash set by graph_max_nodes alone ("FIXME: needs to be
    size*2 to account for leafs", ggml-backend.cpp), and ggml_backend_sched_split_graph puts
    every node and leaf in it: a graph with more of them than the set holds makes ggml abort
    (ggml-impl.h: "fatal error", the hash set full). Phi-4 with a quantized cache, flash
    attention and -np 4 is such a graph (2058 tensors, a set of 2053)."""
    memo = _memo(model, memo)
    if not supports(model, memo):
        return None
    key = graph_key(fa, kinds, shape_values(shape))
    recs = recordings(memo)
    found = recs.tensors.get(key)
    if found is None:  # counted without recording the allocator (a GPU estimate has no need)
        try:
            result, _ = builders.build(model, params_for(key))
        except (AssertionError, AttributeError, IndexError, KeyError, SymbolicError):
            return None
        found = recs.tensors[key] = len(result.gf.nodes) + len(result.gf.leafs)
    return found


def _memo(model: ModelInfo, memo: ModelMemo | None) -> ModelMemo:
    return ModelMemo(model) if memo is None else memo.for_model(model)


def supports(model: ModelInfo, memo: ModelMemo | None = None) -> bool:
    """Whether kvgui rebuilds this model's graph exactly (its architecture has a builder and
    the graph reads every tensor of the file)."""
    memo = _memo(model, memo)

    def check() -> bool:
        if model.arch not in builders.BUILDERS or not model.tensor_table:
            return False
        key = GraphKey(True, CacheKinds("f16", "f16"), 1, False, frozenset())
        try:
            _, graph = builders.build(model, params_for(key))
        except (AssertionError, AttributeError, IndexError, KeyError, SymbolicError) as exc:
            log.info("compute buffer from the stage model: %s: %s", model.arch, exc)
            return False
        unread = builders.unread_tensors(model, graph)
        if unread:
            log.info("compute buffer from the stage model: %s reads no %s", model.arch,
                     sorted(unread)[:4])
        return not unread

    return memo.get("reserve-supports", None, check)


def peak(model: ModelInfo, shape: ContextShape, fa: bool, kinds: CacheKinds,
         alignment: int, memo: ModelMemo | None = None) -> int:
    """The compute buffer on one backend: ggml-alloc's high-water mark for this context
    (memoized: a slider step asks for each cache type)."""
    memo = _memo(model, memo)
    recs = recordings(memo)
    asked = (fa, kinds, shape, alignment)
    done = recs.by_shape.get(asked)
    if done is not None:
        return done
    values = shape_values(shape)
    env = values.env
    prog = program(model, graph_key(fa, kinds, values), memo)
    peaks = recs.peaks
    sized = (id(prog), env["U"], env["O"], env["K"], env["W"], alignment)
    found = peaks.get(sized)
    if found is None:
        if len(peaks) > 4096:
            peaks.clear()
            recs.by_shape.clear()
            recs.split_by_shape.clear()
        found = peaks[sized] = alloc.replay(prog, prog.scale(env), alignment)
    recs.by_shape[asked] = found
    return found


# --- several devices: the scheduler's split graph, one buffer per backend ----------------

CPU_BUFT = Buft("CPU", host=True)
# CPU_REPACK / AMX: the CPU backend's extra buffer types (ggml_backend_cpu_device_supports_buft
# takes them), which ggml does not count as host memory (ggml_backend_buft_is_host: no is_host)
CPU_EXTRA_BUFT = Buft("CPU_REPACK", host=True, extra=True)


def cpu_backend(buft: Buft = CPU_BUFT) -> Backend:
    """The CPU backend (its compute buffer in ``buft``: CUDA's pinned host memory when a CUDA
    device is the first one, llama_context's "host buffer of the first device")."""
    return Backend("CPU", "cpu", buft, alloc.CPU_ALIGN)


def rpc_backend(index: int, name: str = "", alignment: int = 0) -> Backend:
    """An RPC device (ggml-rpc.cpp): its own buffers only, every op, no offload_op (the RPC
    device interface has none), its server's alignment (GET_ALIGNMENT; ggml-rpc-server's CPU
    backend: the CPU's)."""
    return Backend(name or f"RPC{index}", "rpc", Buft(name or f"RPC{index}", False, index),
                   alignment or alloc.CPU_ALIGN)


def n_cpu_moe(n_layers: int, cpu: int) -> tuple[tuple[str, int], ...]:
    """--n-cpu-moe N: the experts of layers 0..N-1 in host memory (common.h's
    llm_add_n_cpu_ffn_overrides with LLM_FFN_EXPS_REGEX, to the CPU buffer type)."""
    return tuple((rf"blk\.{il}\.ffn_(up|down|gate|gate_up)_(ch|)exps", cpu)
                 for il in range(n_layers))


def cuda_backend(index: int) -> Backend:
    """A CUDA device: 128-byte alignment, offload_op from a batch of 32, flash attention's f16
    scratch in its alloc size (Backend.alloc_size), all from ggml-cuda's source and not yet
    measured (benchmarks/gpu_check.sh). Not modelled: ggml-cuda's row padding of quantized
    tensors whose ne0 is no multiple of 512 (ggml_backend_cuda_buffer_type_get_alloc_size)."""
    return Backend(f"CUDA{index}", "cuda", Buft(f"CUDA{index}", False, index), alloc.CUDA_ALIGN,
                   offload_batch=32)


@dataclass(frozen=True)
class Layout:
    """Where llama.cpp puts a model for some settings, as the scheduler sees it.

    ``backends``: the devices in order, the CPU last. ``layer_backend``: the backend of each
    layer's weights (llama_model::dev_layer), ``output_backend``: the output layer's.
    ``offload_kqv``: the KV cache (and recurrent state) on its layer's device, else on the
    CPU (-nkvo). ``n_copies``: the scheduler's input copies (4 with pipeline parallelism).
    ``full_offload``: n_gpu_layers > n_layer (a rule of llama.cpp's callback). ``pins``:
    apply llama.cpp's ggml_backend_sched_set_tensor_backend hints; a reserve that only sizes
    (no_alloc: the dry run, llama-fit-params) resets the scheduler after building and loses
    them, an allocating one keeps them."""

    backends: tuple[Backend, ...]
    layer_backend: tuple[int, ...]
    output_backend: int
    offload_kqv: bool = True
    n_copies: int = 1
    full_offload: bool = False
    pins: bool = True
    # tensor buffer type overrides (-ot PATTERN=BUFT, --n-cpu-moe): (regex searched in the
    # weight's name, the backend whose buffer type it gets), the first match wins
    overrides: tuple[tuple[str, int], ...] = ()
    # the host's weights llama.cpp put in a CPU extra buffer type (CPU_REPACK, AMX: is_host
    # NULL): the CPU backend reads them, but no GPU offloads an op on them
    extra_weights: frozenset[str] = frozenset()

    @property
    def cpu(self) -> int:
        return len(self.backends) - 1

    def buft_of(self, t: Tensor) -> Buft:
        loc = t.loc
        assert loc is not None
        if loc.weight and t.name in self.extra_weights:
            return CPU_EXTRA_BUFT
        if loc.weight:
            for pattern, backend in self.overrides:
                if _compiled(pattern).search(t.name):
                    return CPU_BUFT if backend == self.cpu else self.backends[backend].buft
        if loc.kind == "input":
            b = self.cpu
        elif loc.kind == "layer":
            b = self.layer_backend[loc.il]
        elif loc.kind == "output":
            b = self.output_backend
        else:  # the KV cache or recurrent state of layer il
            b = self.layer_backend[loc.il] if self.offload_kqv else self.cpu
        return CPU_BUFT if b == self.cpu else self.backends[b].buft


@functools.lru_cache(maxsize=8192)
def _compiled(pattern: str) -> re.Pattern[str]:
    """An override's regex, compiled once (re's own cache holds 512: --n-cpu-moe 999 is more)."""
    return re.compile(pattern)


@dataclass
class _Split:
    decisions: Decisions
    parts: tuple[Program, ...]  # one per distinct buffer type
    part_of: tuple[int, ...]  # per backend: its allocator (ggml-alloc shares equal bufts)
    n_splits: int
    n_nodes: int
    # the graph allocates a tensor of a quantized cache type (a copy of a cache view into
    # another backend): it holds for ``exact`` only (None: built with the stand-in)
    type_bound: bool = False
    exact: tuple[str, str] | None = None

    def serves(self, env: dict[str, int], exact: tuple[str, str] | None) -> bool:
        return (not self.type_bound or self.exact == exact) and self.decisions.hold_for(env)


def _split_recording(model: ModelInfo, key: GraphKey, layout: Layout,
                     env: dict[str, int], exact: tuple[str, str] | None = None) -> _Split:
    try:
        params = params_for(key) if layout.offload_kqv else _no_kqv_params(key)
        if exact is not None:
            params = dataclasses.replace(params, type_k=_exact_type(key.kinds.k, exact[0]),
                                         type_v=_exact_type(key.kinds.v, exact[1]))
        result, graph = builders.build(model, params)
    except (AssertionError, AttributeError, IndexError, KeyError, SymbolicError) as exc:
        raise UnsupportedGraph(f"{model.arch}: {type(exc).__name__}: {exc}") from exc
    decisions = Decisions(env)
    assigned: dict[int, int] = {}
    if layout.pins:
        few_tokens = not decisions.at_least(graph.n_tokens, 32)
        for tensor, what, il in graph.pins:
            if what == "cpu":
                assigned[id(tensor)] = layout.cpu
            elif few_tokens or layout.full_offload:
                assigned[id(tensor)] = layout.layer_backend[il]
    n_nodes = len(result.gf.nodes)
    split = split_graph(result.gf, layout.backends, layout.buft_of, decisions, assigned,
                        layout.n_copies)
    bufts: list[Buft] = []
    part_of = []
    for b in layout.backends:
        if b.buft not in bufts:
            bufts.append(b.buft)
        part_of.append(bufts.index(b.buft))
    backends = layout.backends

    def alloc_size(t: Tensor, buffer: int) -> Dim:
        owner = next(b for b, p in zip(backends, part_of, strict=True) if p == buffer)
        return owner.alloc_size(t)

    parts = alloc.record_buffers(split, [part_of[b] for b in split.node_backend],
                                 [part_of[b] for b in split.leaf_backend], len(bufts),
                                 alloc_size)
    bound = exact is not None or any(
        n.type is _QUANT and n.view_src is None and n.loc is None for n in split.nodes)
    return _Split(decisions, parts, tuple(part_of), split.n_splits, n_nodes, bound, exact)


def _exact_type(kind: str, name: str) -> GGMLType:
    return ggml_types.by_name(name) if kind == "quantized" else _type_of(kind)


def _no_kqv_params(key: GraphKey) -> GraphParams:
    params = params_for(key)
    return GraphParams(params.flash_attn, params.type_k, params.type_v, params.n_seq_max,
                       params.kv_unified, False, params.ones)


def peaks(model: ModelInfo, shape: ContextShape, fa: bool, kinds: CacheKinds,
          layout: Layout, memo: ModelMemo | None = None) -> list[int]:
    """The compute buffer of each backend of ``layout`` (in its order): ggml-alloc per
    backend over the scheduler's split graph. A graph that copies a quantized cache is
    recorded for ``kinds.exact`` (with none given: q8_0 stands in, and it is logged)."""
    recs = recordings(_memo(model, memo))
    free = (fa, kinds.graph, shape, layout)  # (the replays that hold for any quantized type)
    done = recs.split_by_shape.get(free)
    if done is None:
        done = recs.split_by_shape.get((free, kinds.exact))
    if done is not None:
        return list(done)
    values = shape_values(shape)
    env = values.env
    key = graph_key(fa, kinds, values)
    found = recs.splits.setdefault((key, layout), [])
    exact = kinds.exact
    rec = next((r for r in found if r.serves(env, exact)), None)
    if rec is None:
        rec = next((r for r in found if r.serves(env, None)), None)
        if rec is None:
            rec = _split_recording(model, key, layout, env)
            rec.parts = tuple(recs.distinct.setdefault(p, p) for p in rec.parts)
            found.append(rec)
        if rec.type_bound and exact is not None:  # (recorded again, with the cache's types)
            rec = _split_recording(model, key, layout, env, exact)
            rec.parts = tuple(recs.distinct.setdefault(p, p) for p in rec.parts)
            found.append(rec)
        elif rec.type_bound and "quantized" in kinds:
            log.warning("%s: the scheduler copies a quantized cache whose types were not "
                        "given: q8_0 stands in", model.arch)
    out = []
    for b, backend in enumerate(layout.backends):
        part = rec.parts[rec.part_of[b]]
        sized = (id(part), env["U"], env["O"], env["K"], env["W"], backend.alignment)
        peak = recs.peaks.get(sized)
        if peak is None:
            if len(recs.peaks) > 4096:
                recs.peaks.clear()
                recs.by_shape.clear()
                recs.split_by_shape.clear()
            peak = recs.peaks[sized] = alloc.replay(part, part.scale(env),
                                                         backend.alignment)
        out.append(peak)
    recs.split_by_shape[(free, exact) if rec.type_bound else free] = tuple(out)
    return out


def _recorded(model: ModelInfo, shape: ContextShape, fa: bool, kinds: CacheKinds,
              layout: Layout, memo: ModelMemo, exact: tuple[str, str] | None) -> _Split | None:
    """The split recording peaks() replayed for these settings (None: not recorded)."""
    values = shape_values(shape)
    found = recordings(memo.for_model(model)).splits.get(
        (graph_key(fa, kinds, values), layout), [])
    return next((r for r in found if r.serves(values.env, exact)), None)


def split_count(model: ModelInfo, shape: ContextShape, fa: bool, kinds: CacheKinds,
                layout: Layout, memo: ModelMemo) -> int | None:
    """The scheduler's number of graph splits in the recording peaks() replayed for these
    settings (llama.cpp logs it as "graph splits"); None if peaks() was not asked."""
    rec = _recorded(model, shape, fa, kinds, layout, memo, kinds.exact)
    return None if rec is None else rec.n_splits


def copies_quantized_cache(model: ModelInfo, shape: ContextShape, fa: bool,
                           kinds: CacheKinds, layout: Layout, memo: ModelMemo) -> bool:
    """Whether the split graph peaks() replayed for these settings copies a quantized cache
    (then each quantized type has figures of its own); True when it was not recorded."""
    rec = _recorded(model, shape, fa, kinds, layout, memo, None)
    return rec is None or rec.type_bound
