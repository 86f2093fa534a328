"""The reserve graph of a model for some settings: built once, recorded, replayed per shape.

llama_context::sched_reserve builds the prompt-processing graph for one full ubatch and lets
ggml-alloc place it; that buffer is what llama.cpp reports as "compute". Here the graph is
built symbolically (builders/, graph/) for what changes its structure: the architecture, flash
attention, the cache types' kind, the number of sequences, a unified cache, and which shape
variables are 1; ggml-alloc's walk is recorded once for it (graph/alloc.py) and replayed for
the sizes of each context. A model keeps its programs in ``ModelInfo.cache``.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, NamedTuple

from kvgui.core.gguf import ggml_types
from kvgui.core.gguf.ggml_types import GGMLType
from kvgui.core.memory import builders
from kvgui.core.memory.builders.common import GraphParams, is_quantized
from kvgui.core.memory.graph import alloc
from kvgui.core.memory.graph.alloc import Program
from kvgui.core.memory.graph.sym import SymbolicError

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
    "quantized"."""

    k: str
    v: str


def cache_kinds(model: ModelInfo, type_k: str, type_v: str) -> CacheKinds:
    return _cache_kinds(type_k, type_v)


@functools.lru_cache(maxsize=256)
def _cache_kinds(type_k: str, type_v: str) -> CacheKinds:
    def kind(name: str) -> str:
        return "quantized" if is_quantized(ggml_types.by_name(name)) else name

    return CacheKinds(kind(type_k), kind(type_v))


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
    outputs: min(n_tokens before rounding, n_outputs_max = n_batch)."""
    n_seqs = max(int(getattr(shape, "n_seq", 0)), shape.n_stream, 1)
    n_outputs = min(shape.n_ubatch, shape.n_batch)
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


def _recordings(model: ModelInfo) -> _Recordings:
    """Kept with the model object (dataclasses.replace shares the memo dict between a model
    and its altered copies)."""
    found = model.cache.get("reserve-recordings")
    if found is None or found[0] is not model:
        found = model.cache["reserve-recordings"] = (model, _Recordings())
    recordings: _Recordings = found[1]
    return recordings


def program(model: ModelInfo, key: GraphKey) -> Program:
    """The recorded allocator program of the model's graph for ``key`` (memoized)."""
    recordings = _recordings(model)
    found = recordings.programs.get(key)
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
        found = recordings.programs[key] = recordings.distinct.setdefault(recorded, recorded)
    return found


def supports(model: ModelInfo) -> bool:
    """Whether kvgui rebuilds this model's graph exactly (memoized per model object)."""
    found = model.cache.get("reserve-supports")
    if found is None or found[0] is not model:
        ok = model.arch in builders.BUILDERS and bool(model.tensor_table)
        if ok:
            try:
                program(model, GraphKey(True, CacheKinds("f16", "f16"), 1, False, frozenset()))
            except UnsupportedGraph as exc:
                log.info("compute buffer from the stage model: %s", exc)
                ok = False
        found = model.cache["reserve-supports"] = (model, ok)
    return bool(found[1])


def peak(model: ModelInfo, shape: ContextShape, fa: bool, kinds: CacheKinds,
         alignment: int) -> int:
    """The compute buffer on one backend: ggml-alloc's high-water mark for this context
    (memoized: a slider step asks for each cache type)."""
    recordings = _recordings(model)
    asked = (fa, kinds, shape, alignment)
    done = recordings.by_shape.get(asked)
    if done is not None:
        return done
    values = shape_values(shape)
    env = values.env
    ones = frozenset(v for v in ("U", "O") if env[v] == 1) if 1 in (env["U"], env["O"]) \
        else _NO_ONES
    prog = program(model, GraphKey(fa, kinds, values.n_seq_max,
                                   values.kv_unified, ones))
    peaks = recordings.peaks
    memo = (id(prog), env["U"], env["O"], env["K"], env["W"], alignment)
    found = peaks.get(memo)
    if found is None:
        if len(peaks) > 4096:
            peaks.clear()
            recordings.by_shape.clear()
        found = peaks[memo] = alloc.replay(prog, prog.scale(env), alignment)
    recordings.by_shape[asked] = found
    return found
