"""Tensor overrides (--n-cpu-moe, --cpu-moe, -ot) against llama.cpp itself.

- The bundled llama.cpp's no_alloc dry run (one device, the CPU: exact bytes per buffer
  type): the overrides reach llama_model_params.tensor_buft_overrides, the experts kept on
  the CPU take CPU_REPACK where this CPU has its kernels, and weights, KV and compute are
  kvgui's to the byte; what llama.cpp refuses (a pattern std::regex rejects, an unknown
  buffer type) kvgui refuses.
- llama-fit-params over ggml-rpc-server devices (1-2 "GPUs"): each device's weights and KV
  (llama.cpp prints whole MiB, rounded down: kvgui's bytes must round to the same MiB, and
  every tensor it moves must be where llama.cpp's log says it put it), the compute buffers
  to llama.cpp's two decimals (0.01 MiB), and the scheduler's split count.

Header-faithful sparse files (a 17 GB model costs a few MB), written once per session.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kvgui.core.config.settings import ALL_MOE_LAYERS, FlashAttn, Settings
from kvgui.core.devices.device_budget import DeviceBudget, cpu
from kvgui.core.memory import reserve
from kvgui.core.memory.estimate import context_shape, estimate
from kvgui.core.memory.findings import Code
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model.info import ModelInfo, load_model
from kvgui.testing.reserve_check import rpc_layout

if TYPE_CHECKING:
    from kvgui.testing.llama_tools import LlamaTools

pytestmark = [pytest.mark.llama, pytest.mark.slow]

MiB = 1 << 20
GiB = 1 << 30

# qwen3moe (128 experts), gpt-oss (MXFP4 experts, SWA, biases), deepseek2 (MLA, a shared
# expert, a dense first layer)
MOE_MODELS = ["Qwen3-30B-A3B Q4_K_M", "gpt-oss-20b MXFP4_MOE", "DeepSeek-V2-Lite-Chat Q4_K_M"]


# --- one device: the dry run ---------------------------------------------------------------

# (no overrides: test_against_llama_cpp.py)
DRY_RUNS = [
    Settings(n_ctx=4096, mmap=False, n_cpu_moe=8),
    Settings(n_ctx=8192, mmap=False, n_cpu_moe=ALL_MOE_LAYERS, type_k="q8_0", type_v="q8_0"),
    Settings(n_ctx=4096, mmap=False,
             override_tensor=((r"blk\.(1[0-9])\.ffn_(up|gate)_exps", "CPU"),
                              (r"^token_embd\.weight$", "CPU"))),
]


@pytest.mark.parametrize("label", MOE_MODELS)
def test_dry_run_with_overrides_equals_the_estimate(sparse_model: Callable[[str], Path],
                                                    label: str) -> None:
    from kvgui.runtime.dryrun import DryRunError, dry_run_many
    from kvgui.runtime.llama_backend import probe_host_cpu

    host = [cpu(None, probe_host_cpu())]
    path = sparse_model(label)
    model = load_model(path)
    for s, got in zip(DRY_RUNS, dry_run_many(path, DRY_RUNS), strict=True):
        est = estimate(model, s, host)
        if _amx_aborts(est):  # an AMX CPU: llama.cpp aborts on an MLA weight, as predicted
            assert isinstance(got, DryRunError) and "cur_backend_id" in str(got), f"{label} {s}"
            continue
        assert not isinstance(got, DryRunError), f"{label} {s}: {got}"
        assert not est.refused
        theirs = {b.name: b.model for b in got.exact if b.model}
        assert theirs == {name: n for name, n in est.host_buffers if n}, f"{label} {s}"
        assert sum(b.context for b in got.exact) == est.kv + est.state, f"{label} {s}"
        assert sum(b.compute for b in got.exact) == est.compute, f"{label} {s}"


def test_what_llama_cpp_refuses_the_estimate_refuses(sparse_model: Callable[[str], Path]
                                                      ) -> None:
    """A pattern std::regex rejects fails the load; a buffer type no device has, an RPC
    server without an RPC build: refused before the load (as arg.cpp refuses them)."""
    import llama_cpp

    from kvgui.runtime.dryrun import DryRunError, dry_run_many

    path = sparse_model(MOE_MODELS[0])
    model = load_model(path)
    runs = [Settings(n_ctx=4096, override_tensor=((r"(?i)blk\.0", "CPU"),)),
            Settings(n_ctx=4096, override_tensor=(("exps", "CUDA0"),))]
    codes = [Code.OT_BAD_REGEX, Code.OT_UNKNOWN_BUFFER_TYPE]
    if not llama_cpp.llama_supports_rpc():
        runs.append(Settings(n_ctx=4096, rpc_servers=("127.0.0.1:1",)))
    got = dry_run_many(path, runs)
    assert all(isinstance(g, DryRunError) for g in got), got
    assert "buffer type" in str(got[1]) and (len(got) < 3 or "RPC" in str(got[2]))
    for s, code in zip(runs, codes, strict=False):
        assert [f.code for f in estimate(model, s, [cpu()]).refusals] == [code]


# --- several devices: llama-fit-params over RPC ----------------------------------------------

# (ngl, devices, n_cpu_moe or None, -ot entries with {rpc0}/{rpc1} for the devices' buffer
# types, -ts)
RPC_CASES = [
    (99, 1, 0, (), ()),  # (no overrides: test_multi_device_rpc.py has these)
    (99, 1, 8, (), ()),
    (99, 1, ALL_MOE_LAYERS, (), ()),
    (20, 1, 8, (), ()),  # partial offload: the CPU layers' experts are the CPU's anyway
    (99, 2, 8, (), ()),  # two devices: no pipeline parallelism with overrides
    (99, 2, 0, ((r"blk\.(1[0-9])\.ffn_(up|down|gate)_exps", "CPU"),), ()),
    # the first match wins: layer 2's experts stay on their device, 0-1 and 3 go to the CPU
    (99, 2, 4, ((r"blk\.2\.ffn_", "{rpc0}"),), (3, 1)),
    # the output layer and layer 0's experts moved from device 1 to device 0 and back
    (99, 2, 0, ((r"^output\.weight$", "{rpc0}"), (r"blk\.0\.ffn_down_exps", "{rpc1}")), ()),
    (16, 2, ALL_MOE_LAYERS, (), (1, 1)),
]


def _amx_aborts(est: object) -> bool:
    """kvgui predicts llama.cpp's abort on this CPU (its AMX buffer takes an MLA weight that
    then has no backend: DeepSeek's attn_v_b with flash attention); machine-dependent."""
    return any(f.code is Code.AMX_MLA_ABORTS for f in est.refusals)  # type: ignore[attr-defined]


def _kvgui(model: ModelInfo, s: Settings, endpoints: list[str], host: object) -> object:
    gpus = [DeviceBudget(f"RPC{i}", 64 * GiB, buft=f"RPC0[{e}]")
            for i, e in enumerate(endpoints)]
    return estimate(model, s, [*gpus, cpu(None, host)])  # type: ignore[arg-type]


# the whole matrix on qwen3moe; on the others the cases that differ most (the suite's time)
CASES_FOR = {MOE_MODELS[0]: RPC_CASES[1:],
             **{label: [RPC_CASES[i] for i in (2, 4, 6, 8)] for label in MOE_MODELS[1:]}}


@pytest.mark.parametrize("label", MOE_MODELS)
def test_per_device_memory_equals_llama_fit_params(
        llama_tools: LlamaTools, sparse_model: Callable[[str], Path], label: str) -> None:
    from kvgui.runtime.llama_backend import probe_host_cpu
    from kvgui.testing.rpc import RpcDevices, fit_params

    path = sparse_model(label)
    model = load_model(path)
    host = probe_host_cpu()
    aborts = 0
    with RpcDevices(llama_tools, [64 * GiB, 64 * GiB]) as devs:
        for ngl, n_dev, n_cpu_moe, ot, ts in CASES_FOR[label]:
            endpoints = devs.endpoints[:n_dev]
            names = {"rpc0": f"RPC0[{endpoints[0]}]",
                     "rpc1": f"RPC0[{endpoints[-1]}]"}
            overrides = tuple((p, b.format(**names)) for p, b in ot)
            s = Settings(n_ctx=8192, n_gpu_layers=ngl, n_cpu_moe=n_cpu_moe,
                         override_tensor=overrides, tensor_split=tuple(float(t) for t in ts),
                         flash_attn=FlashAttn.ON, mmap=False)
            what = f"{label} -ngl {ngl} x{n_dev} --n-cpu-moe {n_cpu_moe} -ot {overrides} -ts {ts}"
            r = fit_params(llama_tools, path, devs.first(n_dev), ctx=8192, ngl=ngl, ts=ts,
                           fa="on", extra=_override_args(s))
            est = _kvgui(model, s, endpoints, host)
            if _amx_aborts(est):  # the dry-run test above checks llama.cpp's own abort
                aborts += 1
                continue
            assert not est.refused, what  # type: ignore[attr-defined]
            devices = est.devices  # type: ignore[attr-defined]
            for i in range(n_dev):
                row = r.device(f"RPC{i}")
                assert devices[i].weights // MiB == row.model_mib, what
                assert (devices[i].kv + devices[i].state) // MiB == row.context_mib, what
            host_rows = {row.name: row.model_mib for row in r.host_side}
            ours = dict(est.host_buffers)  # type: ignore[attr-defined]
            assert ours.get("CPU", 0) // MiB == host_rows.get("Host", 0), what
            for name, n in ours.items():
                if name != "CPU":
                    assert n // MiB == host_rows.get(name, 0), what
            _same_placement(r.log, model, s, endpoints, host, what)
            # compute: the scheduler's split graph over these devices, as llama-fit-params
            # sizes it (no_alloc: no backend hints)
            layout = rpc_layout(model, s, n_dev, endpoints=endpoints)
            memo = ModelMemo(model)
            shape, kinds = context_shape(model, s), reserve.cache_kinds(model, s.type_k, s.type_v)
            peaks = reserve.peaks(model, shape, True, kinds, layout, memo)
            theirs = [r.compute_of(f"RPC{i}") for i in range(n_dev)] + [r.compute_of("Host")]
            assert [round(b / MiB, 2) for b in peaks] == pytest.approx(theirs, abs=0.0051), what
            assert reserve.split_count(model, shape, True, kinds, layout, memo) == r.n_splits, \
                what
    if aborts == len(CASES_FOR[label]):
        pytest.skip(f"{label}: llama.cpp aborts in every case on this AMX CPU (predicted)")


def _override_args(s: Settings) -> tuple[str, ...]:
    from kvgui.core.commandline.export import tensor_override_args

    return tuple(a for a in tensor_override_args(s) if a != "--rpc")


_OVERRIDDEN = re.compile(r"tensor (\S+) \(\d+ MiB \S+\) buffer type overridden to (\S+)")


def _same_placement(log: str, model: ModelInfo, s: Settings, endpoints: list[str],
                    host: object, what: str) -> None:
    """Every tensor llama.cpp's log says it overrode went where kvgui puts it."""
    from kvgui.core.memory import estimate as est_mod

    gpus = [DeviceBudget(f"RPC{i}", 64 * GiB, buft=f"RPC0[{e}]")
            for i, e in enumerate(endpoints)]
    placed = est_mod._placement(model, s, gpus, host)  # type: ignore[arg-type]
    host_buffer = {p.weight.name: p.buffer for p in placed.host.placed}
    layer_dev, out_dev, _ = est_mod._layer_devices(model, s, gpus)
    from kvgui.core.memory import tensor_overrides

    rules = tensor_overrides.resolve(s, gpus, (t.name for t in model.tensors),
                                     n_expert=model.n_expert)
    slots, _, _ = est_mod._tensor_slots(model, layer_dev, out_dev, rules)
    ours = dict(slots)
    theirs = dict(_OVERRIDDEN.findall(log))
    by_name = {t.name: t for t in model.tensors}
    assert theirs or not rules.assigned, what
    for name, buft in theirs.items():
        dev = ours[by_name[name]]
        if dev < 0:  # the CPU buffer type llama.cpp selected: CPU_REPACK, CPU, ...
            assert buft == host_buffer[name], f"{what}: {name}"
        else:
            assert buft == f"RPC0[{endpoints[dev]}]", f"{what}: {name}"
    assert set(theirs) == {n for n in rules.assigned}, what
