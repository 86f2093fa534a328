"""RPC servers as GPUs and llama-fit-params' answers: the parser on captured real output (data/,
from this llama.cpp on sparse catalog models; RPC ports rewritten to 50100+), then the whole
path on the built tools."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from kvgui.testing.rpc import (
    GiB,
    MiB,
    RpcDevices,
    RpcError,
    fit_params,
    last_trial,
    parse_fit_choice,
    parse_result,
)

DATA = Path(__file__).parent / "data"
LLAMA_8B = "Llama-3.1-8B-Instruct Q4_K_M"


def _captured(name: str, *, fit: bool):  # -> FitParamsResult
    return parse_result((), (DATA / f"{name}.stdout").read_text(),
                        (DATA / f"{name}.log").read_text(), fit=fit)


# --- the parser, on real output ----------------------------------------------------------------


def test_breakdown_per_device_of_a_two_device_split() -> None:
    # Llama-3.1-8B Q4_K_M, 32K, q8_0 K and V, -ngl 20 -ts 3,1 on a 12 GiB and an 8 GiB device
    r = _captured("llama8b_32k_q8_ngl20_ts31", fit=False)
    rpc0, rpc1 = r.devices
    assert (rpc0.name, rpc0.description, rpc0.total_mib) == ("RPC0", "127.0.0.1:50100", 12288)
    assert (rpc1.name, rpc1.total_mib) == ("RPC1", 8192)
    assert (rpc0.model_mib, rpc0.context_mib, rpc0.compute_mib) == (1832, 1020, 132)
    assert (rpc1.model_mib, rpc1.context_mib, rpc1.compute_mib) == (940, 272, 258)
    assert rpc0.self_mib == 1832 + 1020 + 132 and rpc0.unaccounted_mib == -rpc0.self_mib
    assert (r.host.model_mib, r.host.context_mib, r.host.compute_mib) == (282, 884, 140)
    assert r.offloaded_layers == (20, 33)  # 19 repeating layers + the output layer
    # KV: 68 MiB per layer (8 heads x 128 x 32768 cells x 2 x 34/32 bytes), where its layer is
    layers = Counter(r.kv_layer_devices.values())
    assert layers == {"CPU": 13, "RPC0": 15, "RPC1": 4}
    assert (r.host.context_mib, rpc0.context_mib, rpc1.context_mib) == (13 * 68, 15 * 68, 4 * 68)
    (kv,) = r.kv_caches
    assert (kv.cells, kv.layers, kv.type_k, kv.k_mib, kv.size_mib) == (32768, 32, "q8_0", 1088.0,
                                                                        2176.0)
    # the two-decimal compute buffers, matched to devices through the RPC endpoint
    assert r.compute_of("RPC0") == 132.09 and r.compute_of("RPC1") == 258.50
    assert r.compute_of("Host") == 140.09 and r.output_mib == {"CPU": 0.49}
    # -fitp on's stdout says the same per device
    for row in (rpc0, rpc1, r.host):
        assert r.fitp[row.name] == (row.model_mib, row.context_mib, row.compute_mib)


def test_host_side_buffer_types_are_rows_of_their_own() -> None:
    r = _captured("llama8b_32k_q8_ngl20_ts31", fit=False)
    names = [row.name for row in r.host_side]
    assert names[0] == "Host"
    # captured on an AMX machine: the repacked weights are a buffer type of their own, which
    # -fitp's Host line leaves out
    assert names[1:] == ["AMX"] and r.device("AMX").model_mib == 1664
    assert r.fitp["Host"][0] == r.host.model_mib
    with pytest.raises(KeyError, match="RPC2 not in the breakdown"):
        r.device("RPC2")


def test_two_sliding_window_caches() -> None:
    r = _captured("gemma3_12b_16k_ngl99", fit=False)
    assert [(kv.cells, kv.layers, kv.size_mib) for kv in r.kv_caches] == [
        (16384, 8, 1024.0), (1536, 40, 480.0)]
    (dev,) = r.devices
    assert dev.context_mib == 1504 == 1024 + 480
    assert r.compute_of("RPC0") == 519.50 and r.offloaded_layers == (49, 49)


def test_what_fit_on_chose_and_its_last_trial() -> None:
    r = _captured("llama8b_32k_q8_fit_4g_3g", fit=True)
    assert r.choice is not None
    assert (r.choice.n_ctx, r.choice.n_gpu_layers, r.choice.tensor_split) == (32768, 23, (15, 8))
    assert r.choice.overrides == () and r.choice.n_cpu_moe == 0
    assert r.log.count("memory breakdown [MiB]") == 8  # one per trial
    assert last_trial(r.log).count("memory breakdown [MiB]") == 1
    assert [d.total_mib for d in r.devices] == [4096, 3072] and r.fitp == {}


def test_fit_on_moe_overrides() -> None:
    choice = parse_fit_choice((DATA / "qwen3moe_32k_fit_8g_8g.stdout").read_text())
    assert (choice.n_gpu_layers, choice.tensor_split) == (49, (17, 32))
    # the experts of the last 20 layers in host memory, not the first K as --n-cpu-moe K does
    assert choice.cpu_moe_layers == tuple(range(29, 49)) and choice.n_cpu_moe is None
    assert choice.overrides[0] == (r"blk\.16\.ffn_(gate|gate_up|down).*", "RPC0[127.0.0.1:50101]")
    assert choice.overrides[1] == (r"blk\.28\.ffn_down.*", "CPU")


def test_unexpected_fit_output_is_an_error() -> None:
    with pytest.raises(RpcError, match="no fitted command line"):
        parse_fit_choice("RPC0 1 2 3\n")
    with pytest.raises(RpcError, match="unexpected fitted command line"):
        parse_fit_choice("-c 4096 -ngl x\n")


# --- the whole path, on the built tools -----------------------------------------------------


@pytest.mark.slow
def test_rpc_devices_of_given_sizes_split_a_model(llama_tools, sparse_model: Callable[[str], Path]
                                                  ) -> None:
    model = sparse_model(LLAMA_8B)
    with RpcDevices(llama_tools, [12 * GiB, 8 * GiB]) as devs:
        procs, endpoints = [s.process for s in devs.servers], devs.endpoints
        r = fit_params(llama_tools, model, devs, ctx=32768, ngl=20, ts=(3, 1), ctk="q8_0",
                       ctv="q8_0", fa="on")
    assert all(p.poll() is not None for p in procs)  # stopped on leaving
    assert [(d.name, d.description, d.total_mib, d.free_mib) for d in r.devices] == [
        ("RPC0", endpoints[0], 12288, 12288), ("RPC1", endpoints[1], 8192, 8192)]
    assert Counter(r.kv_layer_devices.values()) == {"CPU": 13, "RPC0": 15, "RPC1": 4}
    assert [d.context_mib for d in (r.host, *r.devices)] == [13 * 68, 15 * 68, 4 * 68]
    assert r.compute_of("RPC1") > r.compute_of("RPC0") > 0  # the output layer is on RPC1


def test_servers_are_stopped_when_the_test_fails(llama_tools) -> None:
    with pytest.raises(ZeroDivisionError), RpcDevices(llama_tools, [GiB, GiB]) as devs:
        procs = [s.process for s in devs.servers]
        assert all(p.poll() is None for p in procs)
        _ = 1 / 0
    assert all(p.poll() is not None for p in procs) and devs.servers == []


@pytest.mark.slow
def test_fit_on_choice_fits_with_the_margin(llama_tools, sparse_model: Callable[[str], Path]
                                            ) -> None:
    model = sparse_model(LLAMA_8B)
    with RpcDevices(llama_tools, [4 * GiB, 3 * GiB]) as devs:
        r = fit_params(llama_tools, model, devs, ctx=32768, ctk="q8_0", ctv="q8_0", fa="on",
                       fit=True)
        c = r.choice
        assert c is not None and c.n_ctx == 32768 and 0 < c.n_gpu_layers < 33
        again = fit_params(llama_tools, model, devs, ctx=c.n_ctx, ngl=c.n_gpu_layers,
                           ts=c.tensor_split, overrides=c.overrides, ctk="q8_0", ctv="q8_0",
                           fa="on")
    for d in again.devices:  # --fit's default target: 1024 MiB left free on each device
        assert d.total_mib is not None and d.total_mib - d.self_mib >= 1024, d
    assert sum(d.self_mib for d in again.devices) > 4 * 1024  # and it did use them


@pytest.mark.llama
def test_the_tools_allocate_like_the_bundled_library(llama_tools,
                                                     sparse_model: Callable[[str], Path]) -> None:
    # same commit, same CPU options: the CPU-only figures equal the bundled library's dry run
    # (on an AMX machine both put the same weights in the AMX buffer type)
    from kvgui.core.config.settings import FlashAttn, Settings
    from kvgui.runtime.dryrun import dry_run_many

    model = sparse_model(LLAMA_8B)
    s = Settings(n_ctx=32768, type_k="q8_0", type_v="q8_0", flash_attn=FlashAttn.ON,
                 n_gpu_layers=0)
    (bundled,) = dry_run_many(model, [s])
    assert not isinstance(bundled, Exception) and bundled.exact
    r = fit_params(llama_tools, model, None, ctx=32768, ngl=0, ctk="q8_0", ctv="q8_0", fa="on")
    host = [b for b in bundled.exact if b.is_host]
    assert r.host.model_mib == sum(b.model for b in host) // MiB
    assert r.host.context_mib == sum(b.context for b in host) // MiB
    assert r.compute_of("Host") == bundled.compute_mib["CPU"]
    others = {b.name: b for b in bundled.exact if not b.is_host}
    assert {row.name for row in r.host_side[1:]} == set(others)
    for row in r.host_side[1:]:
        assert row.model_mib == others[row.name].model // MiB


_HOLDER = """
import sys, time
from kvgui.testing.llama_tools import LlamaTools
from kvgui.testing.rpc import RpcDevices
with RpcDevices(LlamaTools(__import__("pathlib").Path(sys.argv[1])), [None]) as devs:
    print(devs.servers[0].process.pid, flush=True)
    time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_servers_die_with_a_killed_test_process(llama_tools) -> None:
    import subprocess
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG: Linux only")
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(llama_tools.bin)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        pid = int(holder.stdout.readline())
        assert _alive(pid)
    finally:
        holder.kill()  # SIGKILL: no with-block exit, no atexit
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
