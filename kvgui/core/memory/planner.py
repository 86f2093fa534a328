"""The planner: for a budget, the placements worth running — the longest context, and the
fastest decode at the chosen context — searched over context × K/V pair × -ngl ×
--n-cpu-moe × -nkvo, ranked by predicted tokens/s (speed.py).

Why it is fast. An exact estimate of a placement kvgui has not seen costs a replay of
llama.cpp's scheduler over the model's graph (0.3–0.7 s for a 48-layer MoE); a search
visits dozens. So the search judges each candidate with a model that is exact where it
can be cheap and bounded where it cannot:

- weights per device: sums of the model's tensors by where -ngl, -ts and the overrides put
  them (per layer: the routed experts apart), as the estimate sums them;
- KV cache and recurrent state per device: per layer, cells × row bytes, as the estimate;
- compute buffers: the exact figure of a *representative* placement of the same kind (which
  devices hold layers and the output, experts on the CPU for GPU layers or not, -nkvo), at
  the candidate's context and cache types. Over placements of one kind the scheduler's
  buffers hardly move (a 48-layer MoE: equal to 0.01 MiB from 1 to 48 GPU layers); the
  representative is the smallest such placement, whose buffers are the largest seen.

Memory grows with the context, with every layer moved onto a GPU and with every layer's
experts kept there, so each dimension is a binary search. The chosen placements are then
estimated exactly (``verify``), and moved one step where the exact figure disagrees: one
layer or one layer's experts more or less. What is returned is exact.

Ranking: a placement that keeps more bytes on the GPU decodes faster, and per byte of GPU
memory freed, moving a layer's experts to the host costs only their active share of reads
(n_expert_used / n_expert) while moving a whole layer costs all of its dense weights too;
so for a mixture of experts the search first moves experts (--n-cpu-moe, all layers on the
GPU), and only when every expert is on the host, whole layers (-ngl). -nkvo (the KV cache in
host memory) is searched the same way and kept where its prediction is faster.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kvgui.core.config.settings import (
    ALL_LAYERS,
    ALL_MOE_LAYERS,
    N_CTX_PAD,
    Settings,
    SplitMode,
)
from kvgui.core.devices.device_budget import DeviceBudget
from kvgui.core.gguf import ggml_types
from kvgui.core.memory import estimate as est_mod
from kvgui.core.memory import speed as speed_mod
from kvgui.core.memory import tensor_overrides
from kvgui.core.memory.compute import cache_graph
from kvgui.core.memory.estimate import Estimate, compute_buffers, context_shape, estimate
from kvgui.core.memory.fit import COMMON_CACHE_PAIRS, MAX_CONTEXT
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.memory.speed import SpeedPrediction
from kvgui.core.model import layer_rules
from kvgui.core.model.info import ModelInfo, weight_group

Pair = tuple[str, str]


@dataclass(frozen=True)
class Placement:
    """Where the layers go: -ngl (ALL_LAYERS or a count that includes the output layer),
    the layers whose experts stay in host memory (--n-cpu-moe, 0..n_layer), -nkvo."""

    n_gpu_layers: int
    n_cpu_moe: int = 0
    kv_offload: bool = True

    def apply(self, s: Settings, n_layer: int) -> Settings:
        k = ALL_MOE_LAYERS if self.n_cpu_moe >= n_layer > 0 else self.n_cpu_moe
        return s.replace(n_gpu_layers=self.n_gpu_layers, n_cpu_moe=k,
                         kv_offload=self.kv_offload)

    def describe(self, n_layer: int) -> str:
        parts = ["-ngl all" if self.n_gpu_layers < 0 else f"-ngl {self.n_gpu_layers}"]
        if self.n_cpu_moe >= n_layer > 0:
            parts.append("--cpu-moe")
        elif self.n_cpu_moe:
            parts.append(f"--n-cpu-moe {self.n_cpu_moe}")
        if not self.kv_offload:
            parts.append("-nkvo")
        return " ".join(parts)


@dataclass(frozen=True)
class Choice:
    """One way to run the model: its settings, memory per device and predicted speed."""

    settings: Settings
    placement: Placement
    speed: SpeedPrediction
    required: tuple[int, ...]  # per device (GPUs, host): the memory it needs
    verified: bool  # the figures are the exact estimate's (else the search's model)
    cpu_layers: int  # layers (the output layer included, as -ngl counts) on the host
    cpu_expert_layers: int  # MoE layers whose routed experts are in host memory
    estimate: Estimate | None = field(default=None, compare=False, repr=False)

    @property
    def n_ctx(self) -> int:
        return self.settings.n_ctx

    @property
    def pair(self) -> Pair:
        return (self.settings.type_k, self.settings.type_v)

    def to_json(self) -> dict[str, object]:
        s = self.settings
        return {"n_ctx": s.n_ctx, "type_k": s.type_k, "type_v": s.type_v,
                "n_gpu_layers": s.n_gpu_layers, "n_cpu_moe": s.n_cpu_moe,
                "kv_offload": s.kv_offload, "cpu_layers": self.cpu_layers,
                "cpu_expert_layers": self.cpu_expert_layers, "required": list(self.required),
                "verified": self.verified, "speed": self.speed.to_json()}


@dataclass(frozen=True)
class Plan:
    """The planner's answer for one budget."""

    n_ctx: int  # the context ``fastest`` and ``by_pair`` are for
    fastest: Choice | None  # the fastest decode at n_ctx over the pairs searched
    longest: Choice | None  # the longest context any pair reaches (capped), fastest there
    by_pair: tuple[tuple[Pair, Choice | None], ...]  # each pair's fastest at n_ctx
    longest_cap: int  # the context the longest search stopped at (trained, or asked)
    candidates: int  # placements the search judged
    seconds: float

    def for_pair(self, pair: Pair) -> Choice | None:
        return dict(self.by_pair).get(pair)

    def to_json(self) -> dict[str, object]:
        return {"n_ctx": self.n_ctx,
                "fastest": self.fastest.to_json() if self.fastest else None,
                "longest": self.longest.to_json() if self.longest else None,
                "longest_cap": self.longest_cap,
                "by_pair": [{"type_k": p[0], "type_v": p[1],
                             "choice": c.to_json() if c else None} for p, c in self.by_pair],
                "candidates": self.candidates, "seconds": self.seconds}


# --- the search's model of memory ---------------------------------------------------------

@dataclass(frozen=True)
class _Tables:
    """Per layer, what a placement moves: stored weight bytes (dense, routed experts) and
    outside the layers: input (host), output, other (host) — each as the estimate counts it
    (padded to the weights' alignment); and what the user's own -ot rules pin to a device
    whatever the placement (slot -1: the host), which moves with nothing."""

    dense: tuple[int, ...]
    experts: tuple[int, ...]
    input: int
    output: int
    tied: int  # a tied output head: its copy on a GPU
    other: int
    n_layer: int
    moe: bool
    pinned: tuple[tuple[int, int], ...] = ()  # (slot, bytes) held there by -ot
    pinned_read: tuple[tuple[int, int], ...] = ()  # (slot, bytes a token reads there)
    traffic: speed_mod.LayerTraffic | None = None  # the reads of what is not pinned


def _tables(model: ModelInfo, memo: ModelMemo, base: Settings,
            gpus: Sequence[DeviceBudget]) -> _Tables:
    """The model's weights by what moves them, for these -ot rules (none: kept per model)."""
    if not base.override_tensor or not model.tensors:
        return memo.get("planner_tables", None, lambda: _make_tables(model, memo, None))
    rules = tensor_overrides.resolve(base.replace(n_cpu_moe=0), gpus,
                                     (t.name for t in model.tensors), n_expert=model.n_expert)
    return _make_tables(model, memo, rules)


def _make_tables(model: ModelInfo, memo: ModelMemo,
                 rules: tensor_overrides.Resolved | None) -> _Tables:
    tr = speed_mod.traffic(model, memo)
    n_all = len(model.layers)
    if not model.tensors:  # a header without its tensor table: the layers' sums
        return _Tables(tuple(model.layer_weights), tuple(0 for _ in model.layers),
                       model.input_weights, model.output_weights, model.tied_output_weights,
                       model.other_weights, n_all, False)
    align = layer_rules.WEIGHT_ALIGNMENT
    names = layer_rules.output_tensors(model.arch)
    dense = [0] * n_all
    experts = [0] * n_all
    r_dense = [0] * n_all
    r_experts = [0] * n_all
    outside = {"input": 0, "output": 0, "other": 0}
    r_outside = {"input": 0, "output": 0, "other": 0}
    pinned: dict[int, int] = {}
    pinned_read: dict[int, int] = {}
    has_output = any(t.name == "output.weight" for t in model.tensors)
    for t in model.tensors:
        group = weight_group(t.name, n_all, model.n_layer, names)
        if group == "skip":
            continue
        size = -(-t.nbytes // align) * align
        expert = isinstance(group, int) and bool(speed_mod.EXPERT_TENSOR.search(t.name))
        if group == "input":
            rows = t.shape[1] if len(t.shape) > 1 else 1
            read = t.nbytes // max(rows, 1)
        elif expert:
            read = int(t.nbytes * tr.active)
        else:
            read = t.nbytes
        slot = rules.slot(t.name, -2) if rules else -2  # -2: no rule matched
        if slot != -2:
            pinned[slot] = pinned.get(slot, 0) + size
            pinned_read[slot] = pinned_read.get(slot, 0) + read
            continue
        if isinstance(group, int):
            (experts if expert else dense)[group] += size
            (r_experts if expert else r_dense)[group] += t.nbytes if expert else read
        else:
            key = str(group) if group in outside else "other"
            outside[key] += size
            r_outside[key] += read
    embd = next((t for t in model.tensors if t.name == "token_embd.weight"), None)
    if not has_output and embd is not None:
        r_outside["output"] += embd.nbytes  # a tied head reads the embedding matrix whole
    if rules is None:  # the estimate's own per-model sums where nothing is pinned
        dense_t = tuple(w - e for w, e in zip(model.layer_weights, experts, strict=True))
        return _Tables(dense_t, tuple(experts), model.input_weights, model.output_weights,
                       model.tied_output_weights, model.other_weights, n_all, any(experts))
    traffic = speed_mod.LayerTraffic(tuple(r_dense), tuple(r_experts), tr.active,
                                     r_outside["input"], r_outside["output"],
                                     r_outside["other"])
    return _Tables(tuple(dense), tuple(experts), outside["input"], outside["output"],
                   model.tied_output_weights, outside["other"], n_all, any(experts),
                   tuple(sorted(pinned.items())), tuple(sorted(pinned_read.items())), traffic)


class _Search:
    """One budget's search state: the devices, the base settings, the caches."""

    def __init__(self, model: ModelInfo, base: Settings, devices: Sequence[DeviceBudget],
                 memo: ModelMemo) -> None:
        self.model = model
        self.base = base
        self.devices = list(devices)
        self.gpus = [d for d in devices if d.is_gpu]
        self.host = next((d for d in devices if not d.is_gpu), None)
        self.memo = memo
        self.t = _tables(model, memo, base, self.gpus)
        self.L = self.t.n_layer
        self.n_slots = len(self.gpus) + 1
        self.judged = 0
        # where the layers go per -ngl: shared by every search of one GPU (no split)
        self._shared_devs: dict[int, tuple[tuple[int, ...], int]] = memo.get(
            "planner_layer_devices", (base.tensor_split, len(self.gpus) <= 1 and
                                      len(self.gpus)), dict)
        self._layer_devs: dict[int, tuple[tuple[int, ...], int]] = (
            dict(self._shared_devs) if len(self.gpus) <= 1 else {})
        self._kv_at: dict[tuple[int, bool, Pair, int], tuple[list[int], list[int]]] = {}
        self._kinds: dict[Pair, tuple[object, bool]] = {}
        self._compute: dict[tuple[object, ...], tuple[int, ...]] = {}
        self._rep_ngl: dict[tuple[tuple[tuple[bool, bool], ...], bool], int] | None = None
        self._fa: dict[Pair, bool] = {}
        self._best_memo: dict[tuple[Pair, int, bool], Placement | None] = {}
        self._shape: dict[int, tuple[int, int, int]] = {}
        self._rows: dict[tuple[int, bool, Pair], tuple[tuple[int, ...], ...]] = {}
        self._weights: dict[tuple[int, int], list[int]] = {}
        self._speed: dict[tuple[Placement, Pair, int], SpeedPrediction] = {}
        self._routes: dict[Placement, speed_mod.Route] = {}
        self._reps: dict[Placement, Placement] = {}
        self._templates: dict[tuple[Pair, Placement], Settings] = {}

    # where the layers are, per -ngl
    def layer_devices(self, ngl: int) -> tuple[tuple[int, ...], int]:
        hit = self._layer_devs.get(ngl)
        if hit is None:
            s = self.base.replace(n_gpu_layers=ngl)
            devs, out, _ = est_mod._layer_devices(self.model, s, self.gpus)
            hit = self._layer_devs[ngl] = (tuple(devs), out)
            if len(self.gpus) <= 1:  # no split: the same for every budget
                self._shared_devs[ngl] = hit
        return hit

    def settings(self, pair: Pair, n_ctx: int, p: Placement) -> Settings:
        key = (pair, p)
        t = self._templates.get(key)
        if t is None:
            t = self._templates[key] = p.apply(
                self.base.replace(type_k=pair[0], type_v=pair[1]), self.L)
        return t if t.n_ctx == n_ctx else _with_ctx(t, n_ctx)

    def shape(self, n_ctx: int) -> tuple[int, int, int]:
        """(cells per stream of a full-attention layer, streams, cells of a sliding one)."""
        hit = self._shape.get(n_ctx)
        if hit is None:
            sh = context_shape(self.model, _with_ctx(self.base, n_ctx))
            hit = self._shape[n_ctx] = (sh.n_ctx_seq, sh.n_stream, sh.swa_cells)
        return hit

    def kv_rows(self, p: Placement, pair: Pair) -> tuple[tuple[int, ...], ...]:
        """Per slot: bytes per cell of its full-attention and sliding layers, and the
        recurrent state it holds (the estimate's KV arithmetic, grouped once)."""
        key = (p.n_gpu_layers, p.kv_offload, pair)
        hit = self._rows.get(key)
        if hit is not None:
            return hit
        m = self.model
        fa = self.flash_attn(pair)
        tk, tv = ggml_types.by_name(pair[0]), ggml_types.by_name(pair[1])
        v_max = m.n_embd_v_max if not fa else 0
        per_state = (m.n_embd_r + m.n_embd_s) * 4 * max(1, self.base.n_parallel)
        devs, _ = self.layer_devices(p.n_gpu_layers)
        cpu = self.n_slots - 1
        full = [0] * self.n_slots
        swa = [0] * self.n_slots
        state = [0] * self.n_slots
        for il, layer in enumerate(m.layers):
            d = devs[il]
            slot = cpu if (d < 0 or not p.kv_offload) else d
            if layer.has_kv:
                row = tk.row_bytes(layer.n_embd_k) + tv.row_bytes(
                    v_max if (v_max and layer.n_embd_v) else layer.n_embd_v)
                (swa if layer.swa else full)[slot] += row
            if layer.recurrent:
                state[slot] += per_state
        hit = self._rows[key] = (tuple(full), tuple(swa), tuple(state))
        return hit

    def kv(self, p: Placement, pair: Pair, n_ctx: int) -> tuple[list[int], list[int]]:
        """Per slot: the KV cache and state held, and what one sequence reads per token."""
        key = (p.n_gpu_layers, p.kv_offload, pair, n_ctx)
        hit = self._kv_at.get(key)
        if hit is None:
            hit = self._kv_at[key] = self._kv(p, pair, n_ctx)
        return hit

    def _kv(self, p: Placement, pair: Pair, n_ctx: int) -> tuple[list[int], list[int]]:
        full, swa, state = self.kv_rows(p, pair)
        n_ctx_seq, n_stream, swa_cells = self.shape(n_ctx)
        n_par = max(1, self.base.n_parallel)
        held = [f * n_ctx_seq * n_stream + w * swa_cells * n_stream + st
                for f, w, st in zip(full, swa, state, strict=True)]
        read = [f * n_ctx_seq + w * swa_cells + st // n_par
                for f, w, st in zip(full, swa, state, strict=True)]
        return held, read

    def kv_per_token(self, pair: Pair) -> int:
        """KV bytes one more token costs (the order in which pairs reach furthest)."""
        top = Placement(ALL_LAYERS)
        return sum(self.kv(top, pair, 2 * N_CTX_PAD)[0]) - sum(self.kv(top, pair, N_CTX_PAD)[0])

    def flash_attn(self, pair: Pair) -> bool:
        """Flash attention as the estimate resolves it for this pair."""
        hit = self._fa.get(pair)
        if hit is None:
            s = self.base.replace(type_k=pair[0], type_v=pair[1])
            hit = est_mod.resolve_flash_attn(self.model, s)
            if ggml_types.is_quantized(s.type_v) and s.flash_attn.value == "auto":
                hit = True
            self._fa[pair] = hit
        return hit

    def cpu_experts(self, devs: Sequence[int], k: int) -> tuple[bool, ...]:
        return tuple(bool(self.t.experts[il]) and (d < 0 or il < k) for il, d in enumerate(devs))

    def weights(self, p: Placement) -> list[int]:
        key = (p.n_gpu_layers, p.n_cpu_moe)
        hit = self._weights.get(key)
        if hit is None:
            hit = self._weights[key] = self._weights_of(p)
        return hit

    def _weights_of(self, p: Placement) -> list[int]:
        devs, out = self.layer_devices(p.n_gpu_layers)
        cpu = self.n_slots - 1
        w = [0] * self.n_slots
        w[cpu] += self.t.input + self.t.other
        w[cpu if out < 0 else out] += self.t.output + (self.t.tied if out >= 0 else 0)
        for il, d in enumerate(devs):
            slot = cpu if d < 0 else d
            w[slot] += self.t.dense[il]
            w[cpu if il < p.n_cpu_moe else slot] += self.t.experts[il]
        for slot, nbytes in self.t.pinned:  # the user's -ot, whatever the placement
            w[cpu if slot < 0 else slot] += nbytes
        return w

    # the representative placement of a candidate's kind
    def kind(self, p: Placement) -> tuple[tuple[tuple[bool, bool], ...], bool, bool, bool]:
        devs, out = self.layer_devices(p.n_gpu_layers)
        holds = tuple((any(d == g for d in devs), out == g) for g in range(len(self.gpus)))
        cpu_layers = any(d < 0 for d in devs)
        gpu_experts_on_cpu = any(d >= 0 and il < p.n_cpu_moe and self.t.experts[il]
                                 for il, d in enumerate(devs))
        return (holds, cpu_layers, gpu_experts_on_cpu, p.kv_offload)

    def representative(self, p: Placement) -> Placement:
        hit = self._reps.get(p)
        if hit is None:
            hit = self._reps[p] = self._representative(p)
        return hit

    def _representative(self, p: Placement) -> Placement:
        if self._rep_ngl is None:
            # the smallest -ngl of each device pattern: its buffers are the largest seen
            self._rep_ngl = {}
            for ngl in [*range(self.L + 1), ALL_LAYERS]:
                devs, out = self.layer_devices(ngl)
                holds = tuple((any(d == g for d in devs), out == g)
                              for g in range(len(self.gpus)))
                self._rep_ngl.setdefault((holds, any(d < 0 for d in devs)), ngl)
        holds, cpu_layers, experts, kvo = self.kind(p)
        ngl = self._rep_ngl[(holds, cpu_layers)]
        k = 0
        if experts:  # the first GPU layer with experts, kept on the host
            devs, _ = self.layer_devices(ngl)
            first = next((il for il, d in enumerate(devs) if d >= 0 and self.t.experts[il]),
                         self.L - 1)
            k = first + 1
        return Placement(ngl, k, kvo)

    def compute(self, p: Placement, pair: Pair, n_ctx: int) -> tuple[int, ...]:
        rep = self.representative(p)
        # the cache types change the graph only by their kind (compute.cache_graph)
        kinds = self._kinds.get(pair)
        if kinds is None:
            kinds = self._kinds[pair] = (cache_graph(self.model, *pair), self.flash_attn(pair))
        key = (rep, kinds, n_ctx)
        hit = self._compute.get(key)
        if hit is None:
            hit = self._compute[key] = compute_buffers(
                self.model, self.settings(pair, n_ctx, rep), self.devices, self.memo)
        return hit

    def judge(self, p: Placement, pair: Pair, n_ctx: int) -> tuple[bool, list[int]]:
        """Whether ``p`` fits by the search's model, and each device's memory."""
        self.judged += 1
        w = self.weights(p)
        held, _ = self.kv(p, pair, n_ctx)
        c = self.compute(p, pair, n_ctx)
        need = [a + b + x for a, b, x in zip(w, held, c, strict=True)]
        need[-1] += self.model.n_vocab * self.base.n_parallel * 4
        ok = all(g.budget is None or n <= g.budget for g, n in zip(self.gpus, need, strict=False))
        if ok and self.host is not None and self.host.budget is not None:
            ok = need[-1] <= self.host.budget
        return ok, need

    def fits(self, p: Placement, pair: Pair, n_ctx: int) -> bool:
        return self.judge(p, pair, n_ctx)[0]

    # the fastest placement of a pair at a context
    def best(self, pair: Pair, n_ctx: int, nkvo: bool = True) -> Placement | None:
        """The fastest placement that fits, or None. -nkvo is tried only where the KV cache
        on the GPUs left something on the host (else nothing could be faster)."""
        key = (pair, n_ctx, nkvo)
        if key in self._best_memo:
            return self._best_memo[key]
        on = self._best(pair, n_ctx, True)
        found = [on] if on is not None else []
        if nkvo and self.gpus and on != Placement(ALL_LAYERS, 0, True) and (
                on is None or self.speed(Placement(ALL_LAYERS, 0, False), pair, n_ctx
                                         ).tokens_per_s > self.speed(on, pair, n_ctx).tokens_per_s):
            # (-nkvo at its best, every weight on the GPUs, must beat what was found: the
            # cache read from RAM at every token is what it costs)
            off = self._best(pair, n_ctx, False)
            if off is not None:
                found.append(off)
        if len(found) > 1:
            found.sort(key=lambda c: -self.speed(c, pair, n_ctx).tokens_per_s)
        self._best_memo[key] = found[0] if found else None
        return self._best_memo[key]

    def _best(self, pair: Pair, n_ctx: int, kvo: bool) -> Placement | None:
        L = self.L
        if not self.gpus:
            p = Placement(0, 0, True)
            return p if kvo and self.fits(p, pair, n_ctx) else None
        top = Placement(ALL_LAYERS, 0, kvo)
        if self.fits(top, pair, n_ctx):
            return top
        moe_all = L if self.t.moe else 0
        if self.t.moe and self.fits(Placement(ALL_LAYERS, L, kvo), pair, n_ctx):
            k = _first_true(1, L, lambda k: self.fits(Placement(ALL_LAYERS, k, kvo),
                                                      pair, n_ctx))
            return Placement(ALL_LAYERS, k, kvo)
        if not self.fits(Placement(0, moe_all, kvo), pair, n_ctx):
            return None
        ngl = _last_true(0, L, lambda n: self.fits(Placement(n, moe_all, kvo), pair, n_ctx))
        return Placement(ngl, moe_all, kvo)

    def speed(self, p: Placement, pair: Pair, n_ctx: int) -> SpeedPrediction:
        key = (p, pair, n_ctx)
        hit = self._speed.get(key)
        if hit is None:
            r = self._routes.get(p)
            if r is None:
                devs, out = self.layer_devices(p.n_gpu_layers)
                r = self._routes[p] = speed_mod.route(
                    self.model, p.kv_offload, self.devices, devs, out,
                    self.cpu_experts(devs, p.n_cpu_moe), self.memo, self.t.traffic,
                    self.t.pinned_read)
            _, read = self.kv(p, pair, n_ctx)
            hit = self._speed[key] = speed_mod.timing(r, self.devices, read)
        return hit

    def counts(self, p: Placement) -> tuple[int, int]:
        devs, out = self.layer_devices(p.n_gpu_layers)
        cpu_layers = sum(d < 0 for d in devs) + (out < 0)
        return cpu_layers, sum(self.cpu_experts(devs, p.n_cpu_moe))

    def choice(self, p: Placement, pair: Pair, n_ctx: int, exact: Estimate | None) -> Choice:
        cpu_layers, cpu_experts = self.counts(p)
        if exact is not None:
            required = tuple(d.required for d in exact.devices)
        else:
            required = tuple(self.judge(p, pair, n_ctx)[1])
        return Choice(self.settings(pair, n_ctx, p), p, self.speed(p, pair, n_ctx), required,
                      exact is not None, cpu_layers, cpu_experts, exact)

    # exact check of a chosen placement, moved by one step where the estimate disagrees
    def exact(self, p: Placement, pair: Pair, n_ctx: int) -> Estimate:
        return estimate(self.model, self.settings(pair, n_ctx, p), self.devices, self.memo)

    def verify(self, p: Placement, pair: Pair, n_ctx: int, steps: int = 4
               ) -> tuple[Placement, Estimate] | None:
        e = self.exact(p, pair, n_ctx)
        if e.fits is not False and not e.refused:
            for _ in range(steps):  # the bound may have cost a step: try one better
                q = self._step(p, +1)
                if q is None:
                    break
                f = self.exact(q, pair, n_ctx)
                if f.fits is False or f.refused:
                    break
                p, e = q, f
            return p, e
        for _ in range(steps):
            q = self._step(p, -1)
            if q is None:
                return None
            p, e = q, self.exact(q, pair, n_ctx)
            if e.fits is not False and not e.refused:
                return p, e
        return None

    def _step(self, p: Placement, d: int) -> Placement | None:
        """The next placement towards the GPU (+1) or the host (-1) in the search's order:
        experts first while every layer is on the GPU, then whole layers."""
        L = self.L
        moe = self.t.moe
        ngl = L + 1 if p.n_gpu_layers < 0 else p.n_gpu_layers
        if d > 0:
            if ngl >= L + 1:
                if moe and p.n_cpu_moe > 0:
                    return Placement(ALL_LAYERS, p.n_cpu_moe - 1, p.kv_offload)
                return None
            if ngl + 1 >= L + 1:
                return Placement(ALL_LAYERS, p.n_cpu_moe, p.kv_offload)
            return Placement(ngl + 1, p.n_cpu_moe, p.kv_offload)
        if ngl >= L + 1 and moe and p.n_cpu_moe < L:
            return Placement(ALL_LAYERS, p.n_cpu_moe + 1, p.kv_offload)
        if ngl <= 0:
            return None
        return Placement(ngl - 1, p.n_cpu_moe, p.kv_offload)


def _with_ctx(s: Settings, n_ctx: int) -> Settings:
    """``s`` at another context, without Settings' validation of every field again (the
    search makes thousands of these; a context in 256 steps up to MAX_CONTEXT is valid)."""
    t = copy.copy(s)
    object.__setattr__(t, "n_ctx", n_ctx)
    return t


def _search_for(model: ModelInfo, settings: Settings, devices: Sequence[DeviceBudget],
                memo: ModelMemo) -> _Search:
    """The search state of these settings and budget, kept in the memo: what one search
    worked out (placements, KV rows, representatives' buffers, each pair's best at each
    context) serves the next, at another context or for another pair."""
    base = settings.replace(n_ctx=N_CTX_PAD, type_k="f16", type_v="f16",
                            n_gpu_layers=ALL_LAYERS, n_cpu_moe=0, kv_offload=True)
    return memo.get("planner_search", (base, tuple(devices)),
                    lambda: _Search(model, base, devices, memo))


def _first_true(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """The smallest x in [lo, hi] with ok(x), given ok(hi) and ok monotone."""
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _last_true(lo: int, hi: int, ok: Callable[[int], bool]) -> int:
    """The largest x in [lo, hi] with ok(x), given ok(lo) and ok monotone."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def plan(model: ModelInfo, settings: Settings, devices: Sequence[DeviceBudget], *,
         n_ctx: int | None = None, pairs: Sequence[Pair] | None = None,
         memo: ModelMemo | None = None, longest_cap: int | None = None,
         nkvo: bool = True, verify: bool = True, verify_pairs: Sequence[Pair] = ()) -> Plan:
    """The fastest placement of each pair at ``n_ctx`` (default: the settings'), the fastest
    of them, and the longest context any pair reaches (up to ``longest_cap``, default the
    trained context) with its fastest placement. ``devices``: the GPUs then the host, as
    estimate() takes them, each with its bandwidth (speed.py). ``verify``: estimate the
    chosen placements exactly (and step them where the estimate disagrees); without it the
    choices are the search's (``Choice.verified`` False); ``verify_pairs``: these pairs'
    choices in ``by_pair`` are made exact too (the window's current pair)."""
    t0 = time.perf_counter()
    memo = ModelMemo(model) if memo is None else memo.for_model(model)
    all_devices = list(devices)
    gpus = [d for d in all_devices if d.is_gpu]
    if settings.split_mode is SplitMode.NONE and gpus:  # only the main GPU is used
        if settings.main_gpu >= len(gpus):
            return Plan(settings.n_ctx if n_ctx is None else n_ctx, None, None,
                        tuple((p, None) for p in (pairs or COMMON_CACHE_PAIRS)), 0, 0, 0.0)
        devices = [gpus[settings.main_gpu], *(d for d in all_devices if not d.is_gpu)]
    user = settings
    if len(devices) < len(all_devices):  # searched as that GPU alone, given back as -sm none
        settings = settings.replace(split_mode=SplitMode.LAYER, main_gpu=0)
    search = _search_for(model, settings, devices, memo)
    search.judged = 0
    n_ctx = settings.n_ctx if n_ctx is None else n_ctx
    pairs = tuple(pairs) if pairs else COMMON_CACHE_PAIRS
    # settings llama.cpp refuses for a pair (a block size, a quantized V without FA) are
    # refused whatever the placement: left out
    usable = [p for p in pairs if not estimate_refused(model, search.settings(
        p, N_CTX_PAD, Placement(0)), memo)]
    cap = longest_cap or model.n_ctx_train or MAX_CONTEXT

    def settle(p: Placement | None, pair: Pair, c: int) -> Choice | None:
        if p is None:
            return None
        if not verify:
            return search.choice(p, pair, c, None)
        done = search.verify(p, pair, c)
        if done is None:
            return None
        q, e = done
        return search.choice(q, pair, c, e)

    # each pair's fastest by the search's model; the fastest of all is then made exact
    by_pair: list[tuple[Pair, Choice | None]] = []
    for pair in pairs:
        p = search.best(pair, n_ctx, nkvo) if pair in usable else None
        if p is not None and pair in verify_pairs:
            by_pair.append((pair, settle(p, pair, n_ctx)))
        else:
            by_pair.append((pair, None if p is None else search.choice(p, pair, n_ctx, None)))
    fastest: Choice | None = None
    for c in sorted((c for _, c in by_pair if c is not None),
                    key=lambda c: -c.speed.tokens_per_s):
        fastest = c if c.verified or not verify else settle(c.placement, c.pair, n_ctx)
        if fastest is not None:
            by_pair = [(pair, fastest if pair == fastest.pair else other)
                       for pair, other in by_pair]
            break

    # the longest context: a binary search over the context (256 steps) for the pair with
    # the smallest cache, then whether each other pair reaches as far (or further); of
    # those that reach it, the fastest
    units = cap // N_CTX_PAD
    best_ctx = 0
    reach: list[Pair] = []
    for pair in sorted(usable, key=lambda p: search.kv_per_token(p)):
        lo = max(best_ctx, N_CTX_PAD) // N_CTX_PAD
        if search.best(pair, lo * N_CTX_PAD, nkvo) is None:
            continue
        if lo * N_CTX_PAD == best_ctx and search.best(
                pair, min(units, lo + 1) * N_CTX_PAD, nkvo) is None:
            reach.append(pair)  # as far as the best so far, not further
            continue
        def reaches(u: int, pair: Pair = pair) -> bool:
            return search.best(pair, u * N_CTX_PAD, nkvo) is not None

        reached = _last_true(lo, units, reaches) * N_CTX_PAD
        if reached > best_ctx:
            best_ctx, reach = reached, [pair]
        elif reached == best_ctx:
            reach.append(pair)
    longest = None
    reach.sort(key=lambda pair: -search.speed(search.best(pair, best_ctx, nkvo),  # type: ignore[arg-type]
                                              pair, best_ctx).tokens_per_s)
    for pair in reach:
        longest = settle(search.best(pair, best_ctx, nkvo), pair, best_ctx)
        if longest is not None:
            break
    if longest is None and reach and verify:  # the bound was optimistic at the very end
        pair = reach[0]
        for ctx in range(best_ctx - N_CTX_PAD, max(N_CTX_PAD, best_ctx - 16 * N_CTX_PAD) - 1,
                         -N_CTX_PAD):
            longest = settle(search.best(pair, ctx, nkvo), pair, ctx)
            if longest is not None:
                break
    if len(devices) < len(all_devices):  # -sm none: the other GPUs need nothing
        used = [all_devices.index(d) for d in devices]

        def widen(c: Choice | None) -> Choice | None:
            if c is None:
                return None
            req = [0] * len(all_devices)
            for i, r in zip(used, c.required, strict=True):
                req[i] = r
            s = c.settings.replace(split_mode=user.split_mode, main_gpu=user.main_gpu)
            exact = estimate(model, s, all_devices, memo) if c.verified else None
            return dataclasses.replace(c, settings=s, required=tuple(req), estimate=exact)

        fastest, longest = widen(fastest), widen(longest)
        by_pair = [(p, widen(c)) for p, c in by_pair]
    return Plan(n_ctx, fastest, longest, tuple(by_pair), cap, search.judged,
                time.perf_counter() - t0)


def estimate_refused(model: ModelInfo, s: Settings, memo: ModelMemo) -> bool:
    """llama.cpp refuses these settings whatever the placement (the rule check alone)."""
    return any(f.is_refusal for f in memo.get(
        "check", (s.type_k, s.type_v, s.flash_attn, s.swa_full,
                  est_mod.beyond_trained(model, s) and s.n_ctx),
        lambda: est_mod.check(model, s)))


def placement_of(model: ModelInfo, s: Settings) -> Placement:
    """The placement a Settings object describes (--cpu-moe: every layer's experts)."""
    n = len(model.layers)
    k = n if s.n_cpu_moe < 0 else min(s.n_cpu_moe, n)
    return Placement(s.n_gpu_layers, k, s.kv_offload)


def predict_speed(model: ModelInfo, s: Settings, devices: Sequence[DeviceBudget],
                  memo: ModelMemo | None = None) -> SpeedPrediction:
    """The predicted decode speed of exactly these settings (their pair, context and
    placement; the user's -ot overrides are not counted: only --n-cpu-moe's experts)."""
    memo = ModelMemo(model) if memo is None else memo.for_model(model)
    search = _Search(model, s, devices, memo)
    return search.speed(placement_of(model, s), (s.type_k, s.type_v), s.n_ctx)
