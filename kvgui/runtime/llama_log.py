"""llama.cpp's own memory figures, read from its log.

llama.cpp prints every buffer it allocates (model, KV cache, recurrent state, output, compute)
in MiB with two decimals. ``parse_llama_log`` turns that text into a ``LlamaCppMemory``, keeping
the printed MiB so callers compare "to the logged precision" (half a hundredth of a MiB). The
dry run (kvgui.runtime.dryrun) adds exact byte counts where llama.cpp exposes them.

``LlamaLogCapture`` routes llama.cpp's log (and ggml's) to Python through ``llama_log_set``;
it imports llama_cpp only when used.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

MIB = 1024 * 1024
# A value printed with "%.2f MiB" is within this many bytes of the true one.
LOGGED_PRECISION_BYTES = int(0.005 * MIB) + 1

# ggml.h enum ggml_log_level (llama-cpp-python's _logger.py still uses an older numbering).
LOG_NONE, LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_CONT = range(6)


def mib_to_bytes(mib: float) -> int:
    return round(mib * MIB)


def matches_logged(n_bytes: int, logged_mib: float) -> bool:
    """Whether ``n_bytes`` prints as ``logged_mib`` with llama.cpp's "%.2f" (allowing float32)."""
    return abs(n_bytes / MIB - logged_mib) <= 0.005 + 1e-6


@dataclass(frozen=True)
class KVCache:
    """One ``llama_kv_cache: size = …`` line; an iSWA model logs two (role "non-SWA", "SWA")."""

    cells: int
    layers: int
    n_seq: int
    n_stream: int
    type_k: str
    k_mib: float
    type_v: str
    v_mib: float
    size_mib: float
    role: str = ""  # "", "non-SWA" or "SWA" (from the iSWA "creating … KV cache" line before it)

    @property
    def k_bytes(self) -> int:
        return mib_to_bytes(self.k_mib)

    @property
    def v_bytes(self) -> int:
        return mib_to_bytes(self.v_mib)


@dataclass(frozen=True)
class RecurrentState:
    """One ``llama_memory_recurrent: size = …`` line (Mamba/RWKV/hybrid models)."""

    cells: int
    layers: int
    n_seq: int
    n_rs_seq: int
    type_r: str
    r_mib: float
    type_s: str
    s_mib: float
    p_mib: float
    size_mib: float

    @property
    def size_bytes(self) -> int:
        return mib_to_bytes(self.r_mib) + mib_to_bytes(self.s_mib) + mib_to_bytes(self.p_mib)


@dataclass(frozen=True)
class BufferBytes:
    """Exact bytes of one buffer type, from llama.cpp's memory breakdown (not from the log)."""

    name: str
    is_host: bool
    device: str
    model: int
    context: int
    compute: int


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    description: str
    type: str  # "cpu", "gpu", "igpu", "accel", "meta"
    free: int | None = None
    total: int | None = None


@dataclass
class LlamaCppMemory:
    """What llama.cpp reported for one model + settings. Byte dicts are keyed by buffer name."""

    n_ctx: int | None = None
    n_ctx_seq: int | None = None
    n_seq_max: int | None = None
    n_batch: int | None = None
    n_ubatch: int | None = None
    flash_attn_type: str | None = None  # as requested after llama_init_from_model's checks
    flash_attn: bool | None = None  # resolved
    kv_unified: bool | None = None
    model_buffers_mib: dict[str, float] = field(default_factory=dict)
    kv_buffers_mib: dict[str, float] = field(default_factory=dict)
    output_mib: dict[str, float] = field(default_factory=dict)
    compute_mib: dict[str, float] = field(default_factory=dict)
    compute_precise_mib: dict[str, float] = field(default_factory=dict)  # debug, 4 decimals
    kv_caches: list[KVCache] = field(default_factory=list)
    recurrent: list[RecurrentState] = field(default_factory=list)
    graph_nodes: str | None = None  # "1234" or "1234 / 1200" (pp / tg)
    graph_splits: str | None = None
    layers_offloaded: tuple[int, int] | None = None  # (offloaded, total) from load_tensors
    devices: list[DeviceInfo] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Filled by the dry run only:
    exact: list[BufferBytes] | None = None
    model_size: int | None = None  # llama_model_size(): sum of the weights' bytes
    wall_s: float | None = None  # the context's creation in the child (plus the model's load)
    stats: dict[str, Any] = field(default_factory=dict)  # child's import/load/context s, max_rss
    log: str = ""

    # --- bytes, rounded from the logged MiB -----------------------------------------------
    @property
    def model_buffers(self) -> dict[str, int]:
        return {k: mib_to_bytes(v) for k, v in self.model_buffers_mib.items()}

    @property
    def output(self) -> dict[str, int]:
        return {k: mib_to_bytes(v) for k, v in self.output_mib.items()}

    @property
    def compute(self) -> dict[str, int]:
        return {k: mib_to_bytes(v) for k, v in self.compute_mib.items()}

    # --- totals, exact where the dry run got them -----------------------------------------
    @property
    def weights(self) -> int:
        if self.exact is not None:
            return sum(b.model for b in self.exact)
        logged = sum(self.model_buffers.values())
        if logged == 0 and self.model_size is not None:
            return self.model_size  # a no_alloc load logs 0.00 MiB model buffers
        return logged

    @property
    def kv_k(self) -> int:
        return sum(c.k_bytes for c in self.kv_caches)

    @property
    def kv_v(self) -> int:
        return sum(c.v_bytes for c in self.kv_caches)

    @property
    def state(self) -> int:
        """Recurrent state (R, S, P), to the logged precision."""
        return sum(r.size_bytes for r in self.recurrent)

    @property
    def kv(self) -> int:
        """The KV caches: exact from the breakdown (its "context" less the recurrent state)."""
        if self.exact is not None:
            return sum(b.context for b in self.exact) - self.state
        return self.kv_k + self.kv_v

    @property
    def context_exact(self) -> int | None:
        """KV caches plus recurrent state, exact (llama.cpp's "context" memory), if known."""
        return None if self.exact is None else sum(b.context for b in self.exact)

    @property
    def compute_total(self) -> int:
        if self.exact is not None:
            return sum(b.compute for b in self.exact)
        return sum(self.compute.values())

    @property
    def output_total(self) -> int:
        return sum(self.output.values())

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.state + self.compute_total + self.output_total

    @property
    def exact_fields(self) -> tuple[str, ...]:
        """Which of the memory figures are exact bytes; the others are to the logged precision."""
        if self.exact is None:
            return ()
        return ("weights", "kv", "compute") if not self.recurrent else ("weights", "compute")

    def memory(self) -> dict[str, int]:
        return {
            "weights": self.weights,
            "kv_k": self.kv_k,
            "kv_v": self.kv_v,
            "kv": self.kv,
            "state": self.state,
            "compute": self.compute_total,
            "output": self.output_total,
            "total": self.total,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "n_ctx": self.n_ctx,
            "n_ctx_seq": self.n_ctx_seq,
            "n_seq_max": self.n_seq_max,
            "flash_attn": self.flash_attn,
            "memory": self.memory(),
            "exact": list(self.exact_fields),
            "kv_caches": [c.__dict__ | {"k_bytes": c.k_bytes, "v_bytes": c.v_bytes}
                          for c in self.kv_caches],
            "recurrent": [r.__dict__ for r in self.recurrent],
            "buffers": [b.__dict__ for b in self.exact] if self.exact is not None else None,
            "model_buffers_mib": self.model_buffers_mib,
            "output_mib": self.output_mib,
            "compute_mib": self.compute_mib,
            "devices": [d.__dict__ for d in self.devices],
            "wall_s": self.wall_s,
            "stats": self.stats,
        }


# --- parsing ------------------------------------------------------------------------------

_F = r"(-?\d+(?:\.\d+)?)"
_RE = {
    "model_buf": re.compile(rf"^~?\w+: +(\S+) model buffer size = +{_F} MiB", re.M),
    "kv_buf": re.compile(rf"^~?\w+: +(\S+) KV buffer size = +{_F} MiB", re.M),
    "output": re.compile(rf"^~?\w+: +(\S+) +output buffer size = +{_F} MiB", re.M),
    "compute": re.compile(rf"^~?\w+: +(\S+) compute buffer size = +{_F} MiB", re.M),
    "compute_precise": re.compile(rf"^~?\w+: +(\S+) compute buffer size is +{_F} MiB", re.M),
    "kv": re.compile(
        rf"^llama_kv_cache: size = +{_F} MiB \( *(\d+) cells, +(\d+) layers, +(\d+)/(\d+) seqs\), "
        rf"K \((\w+)\): +{_F} MiB, V \((\w+)\): +{_F} MiB",
        re.M,
    ),
    "iswa": re.compile(r"^llama_kv_cache_iswa: creating +(non-SWA|SWA) KV cache", re.M),
    "recurrent": re.compile(
        rf"^llama_memory_recurrent: size = +{_F} MiB \( *(\d+) cells, +(\d+) layers, +(\d+) seqs"
        rf" +(\d+) rs_seq\), R \((\w+)\): +{_F} MiB, S \((\w+)\): +{_F} MiB, "
        rf"P \((\w+)\): +{_F} MiB",
        re.M,
    ),
    "ctx_int": re.compile(
        r"^llama_context: (n_ctx|n_ctx_seq|n_seq_max|n_batch|n_ubatch) += (\d+)$", re.M
    ),
    "fa_type": re.compile(r"^llama_context: flash_attn += (\w+)$", re.M),
    "kv_unified": re.compile(r"^llama_context: kv_unified += (\w+)$", re.M),
    "fa_resolved": re.compile(
        r"^\w+: Flash Attention (enabled|not supported, set to disabled)$", re.M
    ),
    "graph": re.compile(
        r"^\w+: graph(?: \([^)]*\))?: nodes = ([\d /]+), splits = ([\d /]+),", re.M
    ),
    "offloaded": re.compile(r"^load_tensors: offloaded (\d+)/(\d+) layers to GPU$", re.M),
    "device": re.compile(
        r"^\w+: using device (\S+) \((.*)\) \((.*)\) - (\d+) MiB free$", re.M
    ),
}


def _add(d: dict[str, float], key: str, mib: float) -> None:
    d[key] = round(d.get(key, 0.0) + mib, 2)


def parse_llama_log(text: str) -> LlamaCppMemory:
    """Every memory figure in a llama.cpp log (model load + context creation).

    If the log holds several contexts (one model, many settings), pass one context's part:
    the per-context figures would otherwise add up.
    """
    m = LlamaCppMemory(log=text)
    for name, mib in _RE["model_buf"].findall(text):
        _add(m.model_buffers_mib, name, float(mib))
    for name, mib in _RE["kv_buf"].findall(text):
        _add(m.kv_buffers_mib, name, float(mib))
    for name, mib in _RE["output"].findall(text):
        _add(m.output_mib, name, float(mib))
    for name, mib in _RE["compute"].findall(text):
        m.compute_mib[name] = float(mib)  # one line per backend; a re-reserve replaces it
    for name, mib in _RE["compute_precise"].findall(text):
        m.compute_precise_mib[name] = float(mib)

    roles = [(x.start(), x.group(1)) for x in _RE["iswa"].finditer(text)]
    for x in _RE["kv"].finditer(text):
        role = next((r for pos, r in reversed(roles) if pos < x.start()), "")
        size, cells, layers, n_seq, n_stream, tk, k, tv, v = x.groups()
        m.kv_caches.append(KVCache(
            cells=int(cells), layers=int(layers), n_seq=int(n_seq), n_stream=int(n_stream),
            type_k=tk, k_mib=float(k), type_v=tv, v_mib=float(v), size_mib=float(size), role=role,
        ))
    for x in _RE["recurrent"].finditer(text):
        size, cells, layers, n_seq, n_rs, tr, r, ts, s, _tp, p = x.groups()
        m.recurrent.append(RecurrentState(
            cells=int(cells), layers=int(layers), n_seq=int(n_seq), n_rs_seq=int(n_rs),
            type_r=tr, r_mib=float(r), type_s=ts, s_mib=float(s), p_mib=float(p),
            size_mib=float(size),
        ))

    for key, value in _RE["ctx_int"].findall(text):
        setattr(m, key, int(value))
    if fa := _RE["fa_type"].findall(text):
        m.flash_attn_type = fa[-1]
    if ku := _RE["kv_unified"].findall(text):
        m.kv_unified = ku[-1] == "true"
    resolved = _RE["fa_resolved"].findall(text)
    if m.flash_attn_type == "enabled":
        m.flash_attn = True
    elif m.flash_attn_type == "disabled":
        m.flash_attn = False
    elif resolved:
        m.flash_attn = resolved[-1] == "enabled"
    if g := _RE["graph"].findall(text):
        m.graph_nodes, m.graph_splits = (s.strip() for s in g[-1])
    if off := _RE["offloaded"].findall(text):
        m.layers_offloaded = (int(off[-1][0]), int(off[-1][1]))
    for name, desc, _id, free in _RE["device"].findall(text):
        m.devices.append(DeviceInfo(name, desc, "gpu", free=int(free) * MIB))
    return m


def error_lines(records: list[tuple[int, str]]) -> list[str]:
    """The ERROR-level lines of a captured log, stripped."""
    return [t.strip() for lvl, t in records if lvl == LOG_ERROR and t.strip()]


# --- capture ------------------------------------------------------------------------------

_install_lock = threading.Lock()
_keepalive: list[Any] = []  # ctypes callbacks llama.cpp may still call: never garbage-collect


class LlamaLogCapture:
    """Collects llama.cpp's log lines (with their ggml level) while installed.

    ``sink`` also receives each piece as it arrives (the dry-run child streams it to stderr,
    so a GGML_ASSERT abort still leaves the log behind).
    """

    def __init__(self, sink: Callable[[int, str], None] | None = None) -> None:
        self.records: list[tuple[int, str]] = []
        self._sink = sink
        self._last_level = LOG_INFO
        self._callback: Any = None
        self._previous: tuple[Any, Any] | None = None

    def _on_log(self, level: int, text: bytes | None, _user_data: Any) -> None:
        try:
            s = (text or b"").decode("utf-8", "replace")
            if level == LOG_CONT:
                level = self._last_level
            self._last_level = level
            self.records.append((level, s))
            if self._sink is not None:
                self._sink(level, s)
        except Exception:  # an exception must never cross into C
            pass

    @property
    def text(self) -> str:
        return "".join(t for _, t in self.records)

    def clear(self) -> None:
        self.records = []

    def install(self) -> None:
        import ctypes

        from llama_cpp import llama_cpp as lc

        with _install_lock:
            prev_cb = lc.llama_log_callback()
            prev_ud = ctypes.c_void_p()
            lc.llama_log_get(ctypes.byref(prev_cb), ctypes.byref(prev_ud))
            self._previous = (prev_cb, prev_ud)
            self._callback = lc.llama_log_callback(self._on_log)
            _keepalive.append(self._callback)
            lc.llama_log_set(self._callback, ctypes.c_void_p(0))

    def uninstall(self) -> None:
        import ctypes

        from llama_cpp import llama_cpp as lc

        with _install_lock:
            if self._previous is not None:
                cb, ud = self._previous
                lc.llama_log_set(cb, ud if ud.value else ctypes.c_void_p(0))
                self._previous = None


@contextmanager
def capture_llama_log(
    sink: Callable[[int, str], None] | None = None,
) -> Iterator[LlamaLogCapture]:
    cap = LlamaLogCapture(sink)
    cap.install()
    try:
        yield cap
    finally:
        cap.uninstall()
