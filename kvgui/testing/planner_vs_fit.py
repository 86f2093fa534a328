"""kvgui's planner against llama.cpp's own ``--fit``, on an RPC "GPU" of a chosen size.

One case: a model (a sparse, header-faithful file), a card of 8, 12 or 16 GiB (a
ggml-rpc-server whose CPU device reports that much memory) and a context. llama.cpp's
``llama-fit-params -fit on -fitt MARGIN`` picks the layers (and, for a MoE, which layers'
experts stay in host memory) so each device keeps MARGIN MiB free; with ``-c 0`` it picks
the context too. kvgui's planner gets the same budget (the card less the margin) and must
find a placement with at least that context and no more layers, nor layers' experts, on
the CPU. Its placement is then given back to llama-fit-params (``-fit off``): llama.cpp's
own figures must fit the same target, so a kvgui placement that "wins" by miscounting is
caught.

fit.cpp can leave one layer *partly* on the GPU (its up, or up and gate, expert tensors:
LAYER_FRACTION_UP/GATE, or its attention alone: LAYER_FRACTION_ATTN); kvgui places whole
layers' experts, so such a layer counts as a CPU expert layer of llama.cpp's (listed apart
as "partial").
"""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from kvgui.core.config.settings import ALL_LAYERS, Settings
from kvgui.core.devices.device_budget import DeviceBudget, cpu
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.memory.planner import plan
from kvgui.core.model.info import ModelInfo
from kvgui.testing.llama_tools import LlamaTools
from kvgui.testing.rpc import FitChoice, RpcDevices, RpcError, fit_params

MiB = 1 << 20
GiB = 1 << 30
MARGIN_MIB = 1024  # llama.cpp's default -fitt

# fit.cpp's get_overflow_pattern: which parts of layer il go to host memory
_OVERFLOW = re.compile(r"blk\\\.(\d+)\\\.ffn_(.*)")


@dataclass(frozen=True)
class Placed:
    """A placement's host side: layers (the output layer included, as -ngl counts) on the
    CPU, layers whose routed experts are all in host memory, and partly there."""

    n_ctx: int
    cpu_layers: int
    cpu_expert_layers: int
    partial_layers: int = 0
    flags: str = ""

    @property
    def host_expert_layers(self) -> int:
        return self.cpu_expert_layers + self.partial_layers


@dataclass(frozen=True)
class CaseResult:
    label: str
    card_gib: int
    ctx_asked: int  # 0: llama.cpp picks the context too
    fit: Placed | None  # None: llama.cpp's --fit found nothing
    kvgui: Placed | None
    kvgui_fits_per_llama: bool | None  # kvgui's placement under llama-fit-params -fit off
    kvgui_device_mib: int | None  # llama.cpp's model+context+compute for kvgui's placement
    target_mib: int
    kvgui_seconds: float
    fit_seconds: float
    kvgui_speed: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        """Never worse than --fit: at least its context, no more on the CPU, and llama.cpp
        itself agrees kvgui's placement fits."""
        if self.fit is None:
            return True
        k = self.kvgui
        return (k is not None and k.n_ctx >= self.fit.n_ctx
                and k.cpu_layers <= self.fit.cpu_layers
                and k.cpu_expert_layers <= self.fit.host_expert_layers
                and self.kvgui_fits_per_llama is True)

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["ok"] = self.ok
        return d


def fit_placed(model: ModelInfo, choice: FitChoice) -> Placed:
    """What ``-fit on`` chose, counted as kvgui counts a placement."""
    n_all = len(model.layers) + 1
    ngl = n_all if choice.n_gpu_layers < 0 else min(choice.n_gpu_layers, n_all)
    first_gpu = n_all - ngl  # the last ngl of (layers + output) are on the devices
    full: set[int] = set(range(min(first_gpu, len(model.layers))))  # CPU layers: all there
    partial: set[int] = set()
    for pattern, buft in choice.overrides:
        m = _OVERFLOW.fullmatch(pattern)
        if not m or not buft.startswith("CPU"):
            continue
        il = int(m.group(1))
        if il >= len(model.layers):  # fit.cpp also names the output layer's index: no tensor
            continue
        if "exps" in m.group(2) and "(up|down|gate_up|gate)" in m.group(2):
            full.add(il)  # LAYER_FRACTION_MOE: every expert tensor of the layer
        else:
            partial.add(il)  # ATTN / UP / GATE: some of its feed-forward tensors
    experts = {il for il in full if model.layers[il].experts}
    partial = {il for il in partial - full if model.layers[il].experts}
    flags = f"-ngl {choice.n_gpu_layers}" + (f" -ot ({len(choice.overrides)})"
                                             if choice.overrides else "")
    return Placed(choice.n_ctx, n_all - ngl, len(experts), len(partial), flags)


def run_case(tools: LlamaTools, path: Path, model: ModelInfo, label: str, card_gib: int,
             ctx: int, memo: ModelMemo | None = None, margin_mib: int = MARGIN_MIB,
             host: object = None) -> CaseResult:
    """One case (see the module's docstring); ``ctx`` 0: llama.cpp picks it."""
    size = card_gib * GiB
    target = size - margin_mib * MiB
    memo = memo or ModelMemo(model)
    with RpcDevices(tools, [size]) as devs:
        t0 = time.perf_counter()
        fit: Placed | None
        note = ""
        try:
            r = fit_params(tools, path, devs, ctx=ctx, fit=True, fit_target_mib=[margin_mib])
            assert r.choice is not None
            fit = fit_placed(model, r.choice)
        except RpcError as exc:
            fit, note = None, f"--fit: {exc}"
        fit_s = time.perf_counter() - t0
        n_ctx = fit.n_ctx if fit is not None else (ctx or model.n_ctx_train)
        devices = [DeviceBudget("RPC0", target, buft=f"RPC0[{devs.endpoints[0]}]"),
                   cpu(None, host)]  # type: ignore[arg-type]
        t0 = time.perf_counter()
        found = plan(model, Settings(n_ctx=n_ctx), devices, pairs=[("f16", "f16")],
                     memo=memo, verify_pairs=[("f16", "f16")]).for_pair(("f16", "f16"))
        kv_s = time.perf_counter() - t0
        mine = None
        agrees: bool | None = None
        used: int | None = None
        speed = ""
        if found is not None:
            s = found.settings
            flags = found.placement.describe(len(model.layers))
            mine = Placed(s.n_ctx, found.cpu_layers, found.cpu_expert_layers, 0, flags)
            speed = found.speed.text
            ngl = "all" if s.n_gpu_layers == ALL_LAYERS else s.n_gpu_layers
            check = fit_params(tools, path, devs, ctx=s.n_ctx, ngl=ngl,
                               n_cpu_moe=(len(model.layers) if s.n_cpu_moe < 0 else
                                          s.n_cpu_moe) or None,
                               extra=() if s.kv_offload else ("-nkvo",))
            row = check.device("RPC0")
            used = row.model_mib + row.context_mib + row.compute_mib
            # the breakdown is in whole MiB rounded down: the two-decimal compute line
            # and the rest's MiB are compared with the target in MiB
            compute = check.compute_of("RPC0")
            agrees = row.model_mib + row.context_mib + compute <= target / MiB + 1
    return CaseResult(label, card_gib, ctx, fit, mine, agrees, used, target // MiB,
                      kv_s, fit_s, speed, note)


def markdown(results: list[CaseResult]) -> str:
    """The README's table: one row per case."""
    lines = ["| model | card | -c | llama.cpp --fit | kvgui planner | kvgui speed | "
             "llama.cpp's MiB for kvgui's (target) | ok |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        def cell(p: Placed | None) -> str:
            if p is None:
                return "no placement"
            extra = f" + {p.partial_layers} partial" if p.partial_layers else ""
            return (f"{p.n_ctx:,}: {p.cpu_layers} CPU layers, {p.cpu_expert_layers}"
                    f"{extra} CPU expert layers")
        lines.append(
            f"| {r.label} | {r.card_gib} GiB | {r.ctx_asked or 'auto'} | {cell(r.fit)} | "
            f"{cell(r.kvgui)} (`{r.kvgui.flags if r.kvgui else ''}`) | {r.kvgui_speed} | "
            f"{r.kvgui_device_mib if r.kvgui_device_mib is not None else '—'} "
            f"({r.target_mib}) | {'yes' if r.ok else '**no**'} |")
    return "\n".join(lines)
