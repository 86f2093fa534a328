"""kvgui's per-device figures against llama.cpp's scheduler, over a matrix of settings.

For one model file (a header-faithful sparse GGUF) and running ``ggml-rpc-server`` devices,
each case of :func:`cases` (``-ngl`` all / partial × 1-3 devices × ``-nkvo`` × MoE experts on
the CPU × flash attention × f16 / q8_0 / q4_0 caches) is run through ``llama-fit-params -fit
off -fitp on -v`` and through kvgui, and compared device by device:

- weights and KV cache (+ recurrent state) of every device and of the host: llama.cpp prints
  whole MiB rounded down, so kvgui's bytes must round down to the same MiB;
- the compute buffer of every device and of the host: llama.cpp's ``sched_reserve`` prints
  two decimals, so kvgui must be within 0.005 MiB (its error is also kept, in %);
- the scheduler's split count.

llama-fit-params sizes without allocating (no_alloc), which resets the scheduler's backend
hints; kvgui's layout for it is :func:`kvgui.testing.reserve_check.rpc_layout` (the estimate's
own placement, hints off). ``benchmarks/accuracy.py --devices`` prints the table; a test runs a
few cases so that this code cannot rot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.devices.device_budget import DeviceBudget, cpu
from kvgui.core.devices.hardware.cpu import HostCpu
from kvgui.core.memory import reserve
from kvgui.core.memory.estimate import context_shape, estimate
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model.info import ModelInfo
from kvgui.testing.reserve_check import rpc_layout

if TYPE_CHECKING:
    from kvgui.testing.llama_tools import LlamaTools
    from kvgui.testing.rpc import FitParamsResult, RpcDevices

MiB = 1 << 20
GiB = 1 << 30
#: what each RPC device reports (llama-fit-params never allocates: no RAM is taken)
DEVICE_BYTES = 64 * GiB


@dataclass(frozen=True)
class Case:
    """One placement: ``-ngl``, the number of devices (``-ts`` for two of them), ``-nkvo``,
    ``--n-cpu-moe``, flash attention and the cache type (K and V alike)."""

    ngl: int
    n_devices: int
    tensor_split: tuple[float, ...]
    nkvo: bool
    n_cpu_moe: int
    fa: bool
    cache: str
    n_ctx: int = 16384

    def settings(self) -> Settings:
        return Settings(n_ctx=self.n_ctx, n_gpu_layers=self.ngl, tensor_split=self.tensor_split,
                        kv_offload=not self.nkvo, n_cpu_moe=self.n_cpu_moe,
                        type_k=self.cache, type_v=self.cache, mmap=False,
                        flash_attn=FlashAttn.ON if self.fa else FlashAttn.OFF)

    def describe(self) -> str:
        ts = f" -ts {','.join(f'{t:g}' for t in self.tensor_split)}" if self.tensor_split else ""
        return (f"-ngl {self.ngl} x{self.n_devices}{ts}{' -nkvo' if self.nkvo else ''}"
                f"{f' --n-cpu-moe {self.n_cpu_moe}' if self.n_cpu_moe else ''}"
                f" -fa {'on' if self.fa else 'off'} {self.cache}")


def cases(model: ModelInfo, n_ctx: int = 16384) -> list[Case]:
    """The matrix for ``model``: every layer / half of them on the devices, one to three
    devices (two of them split 3:1), the KV cache on the devices or in RAM, for a MoE the
    experts of no layer / of the first third on the CPU, and flash attention on with an f16,
    q8_0 and q4_0 cache plus off with f16 (llama.cpp quantizes V only with flash attention)."""
    n_layer = model.n_layer
    moe = (0, max(1, n_layer // 3)) if model.n_expert else (0,)
    out = []
    for ngl in (99, n_layer // 2):
        for n_dev in (1, 2, 3):
            ts = (3.0, 1.0) if n_dev == 2 else ()
            for nkvo in (False, True):
                for n_cpu_moe in moe:
                    for fa, cache in ((True, "f16"), (True, "q8_0"), (True, "q4_0"),
                                      (False, "f16")):
                        out.append(Case(ngl, n_dev, ts, nkvo, n_cpu_moe, fa, cache, n_ctx))
    return out


@dataclass
class Outcome:
    """One case's comparison. ``mismatches`` names every figure that differs (empty: equal)."""

    case: Case
    weights_exact: bool = True
    kv_exact: bool = True
    compute_exact: bool = True  # every device's compute within llama.cpp's 0.01 MiB
    splits_exact: bool = True
    compute_error: float = 0.0  # the largest relative error of a device's compute buffer
    refused: str = ""  # kvgui refused the settings (llama-fit-params then must fail too)
    mismatches: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not self.mismatches

    def failed(self, why: str) -> Outcome:
        """No figure could be compared: every one counts as missed."""
        self.mismatches.append(why)
        self.weights_exact = self.kv_exact = self.compute_exact = self.splits_exact = False
        return self


def compare_case(tools: LlamaTools, path: Path, model: ModelInfo, devices: RpcDevices,
                 case: Case, host: HostCpu | None = None) -> Outcome:
    """Run llama-fit-params for ``case`` on the first ``case.n_devices`` of ``devices`` and
    compare kvgui's figures with what it prints (see the module's docstring)."""
    from kvgui.testing.rpc import RpcError, fit_params

    view = devices.first(case.n_devices)
    endpoints = view.endpoints
    s = case.settings()
    gpus = [DeviceBudget(f"RPC{i}", DEVICE_BYTES, buft=f"RPC0[{e}]")
            for i, e in enumerate(endpoints)]
    est = estimate(model, s, [*gpus, cpu(None, host)])
    out = Outcome(case)
    extra = ("-nkvo",) if case.nkvo else ()
    try:
        r = fit_params(tools, path, view, ctx=case.n_ctx, ngl=case.ngl, ts=case.tensor_split,
                       n_cpu_moe=case.n_cpu_moe or None, fa="on" if case.fa else "off",
                       ctk=case.cache, ctv=case.cache, extra=extra)
    except RpcError as e:
        if est.refused:
            out.refused = est.refusals[0].message
            return out
        return out.failed(f"llama-fit-params failed, kvgui did not refuse: {e}")
    if est.refused:
        return out.failed("kvgui refused what llama.cpp accepts: " + est.refusals[0].message)
    _compare_memory(out, est, r, case.n_devices)
    _compare_compute(out, model, s, case, endpoints, r)
    return out


def _compare_memory(out: Outcome, est: object, r: FitParamsResult, n_devices: int) -> None:
    devices = est.devices  # type: ignore[attr-defined]
    for i in range(n_devices):
        row = r.device(f"RPC{i}")
        if devices[i].weights // MiB != row.model_mib:
            out.weights_exact = False
            out.mismatches.append(f"RPC{i} weights {devices[i].weights / MiB:.2f} MiB, "
                                  f"llama.cpp {row.model_mib}")
        kv = devices[i].kv + devices[i].state
        if kv // MiB != row.context_mib:
            out.kv_exact = False
            out.mismatches.append(f"RPC{i} KV {kv / MiB:.2f} MiB, llama.cpp {row.context_mib}")
    host_rows = {row.name: row for row in r.host_side}
    ours = dict(est.host_buffers)  # type: ignore[attr-defined]
    for name in set(ours) | set(host_rows) - {"Host"}:
        theirs = host_rows.get("Host" if name == "CPU" else name)
        mib = theirs.model_mib if theirs else 0
        if ours.get(name, 0) // MiB != mib:
            out.weights_exact = False
            out.mismatches.append(f"host {name} weights {ours.get(name, 0) / MiB:.2f} MiB, "
                                  f"llama.cpp {mib}")
    hosted = devices[-1]
    kv = hosted.kv + hosted.state
    if kv // MiB != r.host.context_mib:
        out.kv_exact = False
        out.mismatches.append(f"host KV {kv / MiB:.2f} MiB, llama.cpp {r.host.context_mib}")


def _compare_compute(out: Outcome, model: ModelInfo, s: Settings, case: Case,
                     endpoints: Sequence[str], r: FitParamsResult) -> None:
    layout = rpc_layout(model, s, case.n_devices, endpoints=endpoints)
    memo = ModelMemo(model)
    shape = context_shape(model, s)
    kinds = reserve.cache_kinds(model, case.cache, case.cache)
    peaks = reserve.peaks(model, shape, case.fa, kinds, layout, memo)
    names = [f"RPC{i}" for i in range(case.n_devices)] + ["Host"]
    for name, ours in zip(names, peaks, strict=True):
        theirs = r.compute_of(name)
        if abs(round(ours / MiB, 2) - theirs) > 0.0051:
            out.compute_exact = False
            out.mismatches.append(f"{name} compute {ours / MiB:.2f} MiB, llama.cpp {theirs:.2f}")
        if theirs:
            err = ours / MiB / theirs - 1
            if abs(err) > abs(out.compute_error):
                out.compute_error = err
    ours_splits = reserve.split_count(model, shape, case.fa, kinds, layout, memo)
    if ours_splits != r.n_splits:
        out.splits_exact = False
        out.mismatches.append(f"splits {ours_splits}, llama.cpp {r.n_splits}")


__all__ = ["DEVICE_BYTES", "Case", "Outcome", "cases", "compare_case"]
