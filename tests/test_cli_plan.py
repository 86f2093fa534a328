"""``kvgui fit``'s planner on the command line: the fastest placement with its command line,
RPC servers as devices (typed-in memory, or asked from a real ggml-rpc-server)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

GiB = 1 << 30


def kvgui(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvgui", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_fit_plans_a_moe_with_its_experts_on_the_cpu() -> None:
    r = kvgui("fit", "Qwen3-30B-A3B Q4_K_M", "--vram", "12GiB", "--gpu-bandwidth", "504",
              "-c", "32768", "-ctk", "q8_0", "-ctv", "q8_0", "--json")
    # the status is of the settings given (every layer's experts on the GPU: over); the
    # plan says how it runs
    assert r.returncode == 1, r.stderr
    plan = json.loads(r.stdout)["plan"]
    mine = next(p["choice"] for p in plan["by_pair"] if p["type_k"] == "q8_0"
                and p["type_v"] == "q8_0")
    assert mine["n_gpu_layers"] == -1 and 0 < mine["n_cpu_moe"] < 48
    assert mine["cpu_expert_layers"] == mine["n_cpu_moe"] and mine["cpu_layers"] == 0
    speed = plan["fastest"]["speed"]
    assert 0 < speed["low"] < speed["tokens_per_s"] < speed["high"]
    gpu = speed["devices"][0]
    assert gpu["bandwidth"] == 504e9 and not gpu["bandwidth_assumed"]
    flags = plan["commands"]["fastest"]
    assert "--n-cpu-moe" in flags and flags[flags.index("-ngl") + 1] == "all"
    text = kvgui("fit", "Qwen3-30B-A3B Q4_K_M", "--vram", "12GiB", "-c", "32768")
    assert "Plan: the fastest way to run it" in text.stdout and "--n-cpu-moe" in text.stdout


def test_rpc_servers_with_typed_memory_come_before_the_gpus() -> None:
    r = kvgui("fit", "Llama-3.1-8B-Instruct Q4_K_M", "--vram", "4GiB", "--rpc",
              "192.0.2.7:50052", "--rpc-mem", "6GiB", "-c", "8192", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    names = [d["name"] for d in data["budget"]]
    assert names[0] == "RPC0 (192.0.2.7:50052)" and names[1].startswith("GPU")
    assert data["budget"][0]["total"] == 6 * GiB
    flags = data["plan"]["commands"]["fastest"]
    assert flags[flags.index("--rpc") + 1] == "192.0.2.7:50052"
    bad = kvgui("fit", "Llama-3.1-8B-Instruct Q4_K_M", "--vram", "4GiB", "--rpc",
                "127.0.0.1:1", "-c", "8192")  # nobody there, no size typed
    assert bad.returncode == 2 and "127.0.0.1:1: cannot connect" in bad.stderr
    assert "--rpc-mem" in bad.stderr or "=SIZE" in bad.stderr


@pytest.mark.llama
def test_an_rpc_servers_memory_is_asked(llama_tools) -> None:
    from kvgui.testing.rpc import RpcDevices

    with RpcDevices(llama_tools, [12 * GiB]) as devs:
        r = kvgui("fit", "Llama-3.1-8B-Instruct Q4_K_M", "--gpu", "none", "--rpc",
                  devs.rpc_arg, "-c", "8192", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["budget"][0]["total"] == 12 * GiB  # what the server's device reports
    assert data["plan"]["fastest"]["n_gpu_layers"] == -1  # an 8B model fits a 12 GiB device
