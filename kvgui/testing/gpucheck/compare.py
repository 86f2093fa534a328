"""llama.cpp's figures per device against kvgui's, for the same model, settings and devices.

A device's memory is three parts in llama.cpp's memory breakdown: model (weights), context
(KV caches and recurrent state) and compute; kvgui's ``DeviceMemory`` gives the same three
(weights, kv + state, compute). GPUs are named as llama.cpp names them (``CUDA0``); every
host buffer type (CPU, CUDA_Host, AMX, CPU_REPACK) is ``Host``. The output (logits) buffer is
in neither breakdown and is left out.

Two compute figures: kvgui's estimate models a real, allocating load, in which llama.cpp's
backend hints (ggml_backend_sched_set_tensor_backend) survive; a no_alloc load (the dry run,
llama-fit-params) resets the scheduler after building the graph and loses them (see
reserve.Layout.pins). So a no_alloc run is held against the same replay with the hints off
(``no_alloc_compute``), and a real load against the estimate itself.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from kvgui.core.config.settings import Settings
from kvgui.core.devices.device_budget import DeviceBudget, cpu
from kvgui.core.devices.hardware.cpu import HostCpu
from kvgui.core.memory import reserve
from kvgui.core.memory.compute import Offload
from kvgui.core.memory.estimate import Estimate, context_shape, estimate
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model.info import ModelInfo
from kvgui.runtime.llama_log import BufferBytes
from kvgui.testing.rpc import FitParamsResult

log = logging.getLogger(__name__)

MiB = 1 << 20
HOST = "Host"
PARTS = ("model", "context", "compute")
#: llama.cpp prints compute buffers with two decimals: equal means within half a hundredth
COMPUTE_MIB_TOLERANCE = 0.0051


@dataclass(frozen=True)
class Parts:
    model: int
    context: int
    compute: int

    def get(self, part: str) -> int:
        return int(getattr(self, part))

    @property
    def total(self) -> int:
        return self.model + self.context + self.compute


def llama_parts(exact: Sequence[BufferBytes]) -> dict[str, Parts]:
    """llama.cpp's exact breakdown per device: each GPU by its device name, the host buffer
    types together as ``Host``, the CPU's extra ones (AMX, CPU_REPACK) too: kvgui's host figure
holds them (common_memory_breakdown_print prints those on rows of their own)."""
    sums: dict[str, list[int]] = {}
    for b in exact:
        # host buffer types, and the CPU's extra ones (AMX is not "host": its data is packed)
        key = HOST if b.is_host or b.device == "CPU" else b.device
        acc = sums.setdefault(key, [0, 0, 0])
        acc[0] += b.model
        acc[1] += b.context
        acc[2] += b.compute
    return {k: Parts(*v) for k, v in sums.items()}


def kvgui_parts(est: Estimate, compute: Sequence[int] | None = None) -> dict[str, Parts]:
    """kvgui's estimate per device (the CPU as ``Host``); ``compute`` replaces the compute
    figures (GPUs in order, the CPU last) with another replay's."""
    out = {}
    for i, d in enumerate(est.devices):
        c = d.compute if compute is None else compute[i]
        out[d.name if d.is_gpu else HOST] = Parts(d.weights, d.kv + d.state, c)
    return out


def estimate_for(model: ModelInfo, s: Settings, gpus: Sequence[str], host: HostCpu | None,
                 memo: ModelMemo | None = None) -> Estimate:
    """kvgui's estimate for these GPUs (no budget: nothing is judged) and this host. A host
    whose CPU kernels crash (kvgui.runtime.cpu_kernels) would be a refusal, with no figures:
    the sizes do not depend on it, so it is left out here."""
    if host is not None and host.kernels_crash:
        host = replace(host, kernels_crash="")
    devices = [DeviceBudget(name, None) for name in gpus]
    return estimate(model, s, [*devices, cpu(None, host)], memo)


def cuda_layout(model: ModelInfo, s: Settings, n_gpus: int, *, pins: bool,
                kind: str = "cuda") -> reserve.Layout:
    """The scheduler's view of ``n_gpus`` CUDA devices for these settings, with llama.cpp's
    backend hints (``pins``: an allocating load) or without (a no_alloc load). ``kind``
    "rpc": ggml-rpc-server devices instead (the rehearsal's stand-in for GPUs; the CPU's
    compute buffer then in plain host memory), as kvgui.testing.reserve_check.rpc_layout."""
    from kvgui.core.memory import estimate as est_module

    gpus = [DeviceBudget(f"GPU{i}", None) for i in range(n_gpus)]
    layer_dev, out_dev, _ = est_module._layer_devices(model, s, gpus)
    offload = Offload(tuple(layer_dev), out_dev, n_gpus, s.kv_offload)
    if kind == "rpc":
        rpc = tuple(reserve.rpc_backend(i) for i in range(n_gpus))
        return offload.layout_with((*rpc, reserve.cpu_backend()), pins=pins)
    host = reserve.Buft("CUDA_Host", host=True)
    backends = tuple(reserve.cuda_backend(i) for i in range(n_gpus))
    return offload.layout_with((*backends, reserve.cpu_backend(host)), pins=pins)


def no_alloc_compute(model: ModelInfo, s: Settings, fa: bool, n_gpus: int,
                     memo: ModelMemo, kind: str = "cuda") -> tuple[list[int], int | None] | None:
    """The compute buffer per device (GPUs, then the CPU) and the split count as a no_alloc
    load makes them; None with no GPU or a model whose graph kvgui does not rebuild."""
    if n_gpus == 0 or not reserve.supports(model, memo):
        return None
    layout = cuda_layout(model, s, n_gpus, pins=False, kind=kind)
    shape = context_shape(model, s)
    kinds = reserve.cache_kinds(model, s.type_k, s.type_v)
    try:
        peaks = reserve.peaks(model, shape, fa, kinds, layout, memo)
    except reserve.UnsupportedGraph as exc:
        log.info("no replay for %s: %s", model.arch, exc)
        return None
    return peaks, reserve.split_count(model, shape, fa, kinds, layout, memo)


_SPLITS = re.compile(r"graph(?: \([^)]*\))?: nodes = ([\d /]+), splits = (\d+)")


def llama_graph(log_text: str) -> tuple[str | None, int | None]:
    """The last reserve graph's node count and split count from llama.cpp's log."""
    found = _SPLITS.findall(log_text)
    if not found:
        return None, None
    nodes, splits = found[-1]
    return nodes.strip(), int(splits)


def settings_json(s: Settings) -> dict[str, Any]:
    return {"n_ctx": s.n_ctx, "type_k": s.type_k, "type_v": s.type_v,
            "flash_attn": s.flash_attn.value, "n_gpu_layers": s.n_gpu_layers,
            "n_batch": s.n_batch, "n_ubatch": s.n_ubatch, "n_parallel": s.n_parallel,
            "mmap": s.mmap}


def exact_rows(theirs: Mapping[str, Parts], ours: Mapping[str, Parts],
               estimate_compute: Mapping[str, Parts] | None = None) -> dict[str, Any]:
    """Per device and part: llama.cpp's bytes, kvgui's, the difference (kvgui - llama.cpp);
    ``estimate_compute``: the estimate's own compute where ``ours`` holds another replay's."""
    rows: dict[str, Any] = {}
    for dev in sorted(set(theirs) | set(ours), key=lambda d: (d == HOST, d)):
        t, o = theirs.get(dev), ours.get(dev)
        rows[dev] = {}
        for part in PARTS:
            a = t.get(part) if t else 0
            b = o.get(part) if o else 0
            cell = {"llama": a, "kvgui": b, "diff": b - a}
            if part == "compute" and estimate_compute is not None and dev in estimate_compute:
                cell["kvgui_estimate"] = estimate_compute[dev].compute
            rows[dev][part] = cell
    return rows


def all_equal(rows: Mapping[str, Any]) -> bool:
    return all(cell["diff"] == 0 for dev in rows.values() for cell in dev.values())


def fit_rows(r: FitParamsResult, ours: Mapping[str, Parts]) -> dict[str, Any]:
    """Against llama-fit-params' printed figures: model and context in whole MiB rounded down
    (its breakdown table), compute to two decimals (its sched_reserve lines). The host is its
    "Host" row plus the rows of the CPU's extra buffer types (AMX, CPU_REPACK), each rounded
    down: kvgui's figure is equal when it lies within one MiB per row above their sum."""
    from kvgui.testing.gpucheck.fitparams import compute_of

    rows: dict[str, Any] = {}
    host_rows = r.host_side
    groups: list[tuple[str, Sequence[Any]]] = [(d.name, [d]) for d in r.devices]
    if host_rows:
        groups.append((HOST, host_rows))
    for dev, printed in groups:
        o = ours.get(dev, Parts(0, 0, 0))
        n = len(printed)
        cells: dict[str, Any] = {}
        for part, attr in (("model", "model_mib"), ("context", "context_mib")):
            theirs = sum(getattr(p, attr) for p in printed)
            mine = o.get(part) / MiB
            cells[part] = {"llama_mib": theirs, "kvgui_mib": round(mine, 2),
                           "equal": theirs <= mine < theirs + n}
        comp = compute_of(r, dev)
        cells["compute"] = {"llama_mib": comp, "kvgui_mib": round(o.compute / MiB, 2),
                            "equal": abs(round(o.compute / MiB, 2) - comp)
                            <= COMPUTE_MIB_TOLERANCE}
        if dev != HOST:
            d = printed[0]
            cells["device_mib"] = {"total": d.total_mib, "free": d.free_mib,
                                   "unaccounted": d.unaccounted_mib}
        rows[dev] = cells
    return rows


def fit_equal(rows: Mapping[str, Any]) -> bool:
    return all(cell["equal"] for dev in rows.values() for k, cell in dev.items()
               if k in PARTS)


def summarize(cases: Sequence[Mapping[str, Any]], *, exact: bool) -> dict[str, Any]:
    """Counts of equal parts per device kind (GPU / Host) and the largest differences."""
    ran = [c for c in cases if c.get("devices")]
    out: dict[str, Any] = {"cases": len(cases), "ran": len(ran),
                           "failed": sum(1 for c in cases if c.get("error")),
                           "all_equal": sum(1 for c in ran if c.get("equal"))}
    per: dict[str, dict[str, Any]] = {}
    for c in ran:
        for dev, parts in c["devices"].items():
            kind = HOST if dev == HOST else "GPU"
            for part in PARTS:
                cell = parts.get(part)
                if cell is None:
                    continue
                acc = per.setdefault(f"{kind}.{part}", {"equal": 0, "of": 0, "max_abs_diff": 0})
                acc["of"] += 1
                if exact:
                    acc["equal"] += cell["diff"] == 0
                    acc["max_abs_diff"] = max(acc["max_abs_diff"], abs(cell["diff"]))
                else:
                    acc["equal"] += bool(cell["equal"])
                    d = abs(cell["kvgui_mib"] - cell["llama_mib"])
                    acc["max_abs_diff"] = max(acc["max_abs_diff"], round(d, 2))
    out["parts"] = per
    return out
