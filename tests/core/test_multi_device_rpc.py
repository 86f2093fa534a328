"""Compute buffers over several devices against llama.cpp's own: ggml-rpc-server devices and
llama-fit-params (built from the bundled llama.cpp), which reports each device's compute
buffer (no_alloc, in MiB to two decimals: kvgui must match to that precision, 0.01 MiB) and
the scheduler's split count (kvgui's must be equal).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.memory import reserve
from kvgui.core.memory.estimate import context_shape
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model.info import ModelInfo, load_model
from kvgui.testing.reserve_check import rpc_layout

if TYPE_CHECKING:
    from kvgui.testing.llama_tools import LlamaTools

pytestmark = [pytest.mark.llama, pytest.mark.slow]

GiB = 1 << 30

# (ngl, tensor split, flash attention, cache type, -nkvo)
CASES = [
    (99, (), "on", "f16", False),  # every layer and the output: pipeline parallelism
    (20, (), "on", "f16", False),  # partial offload
    (99, (3, 1), "on", "q8_0", False),  # -ts 3,1, quantized cache (Hadamard inputs)
    (18, (3, 1), "off", "f16", False),
    (99, (), "on", "f16", True),  # -nkvo: attention on the CPU, splits per layer
]


@pytest.mark.parametrize("label", ["Llama-3.1-8B-Instruct Q4_K_M", "Gemma-3-12B-it Q4_K_M"])
def test_compute_per_device_equals_llama_fit_params(
        llama_tools: LlamaTools, sparse_model: Callable[[str], Path], label: str) -> None:

    path = sparse_model(label)
    model = load_model(path)
    _each_device_equals_llama_fit_params(llama_tools, path, model, label)


def test_experts_on_the_cpu_equal_llama_fit_params(
        llama_tools: LlamaTools, sparse_model: Callable[[str], Path]) -> None:
    """--n-cpu-moe: the experts of the first layers stay in host memory (a tensor override),
    their products run on the CPU, and no pipeline parallelism."""
    from kvgui.testing.rpc import RpcDevices, fit_params

    path = sparse_model("Qwen3-30B-A3B Q4_K_M")
    model = load_model(path)
    with RpcDevices(llama_tools, [24 * GiB, 24 * GiB]) as devs:
        r = fit_params(llama_tools, path, devs, ctx=8192, ngl=99, n_cpu_moe=10, fa="on")
        theirs = [r.compute_mib[f"RPC0[{e}]"] for e in devs.endpoints] + [r.compute_mib["CPU"]]
    s = Settings(n_ctx=8192)
    layout = rpc_layout(model, s, 2, n_cpu_moe=10)
    assert layout.n_copies == 1
    ours = reserve.peaks(model, context_shape(model, s), True, reserve.CacheKinds("f16", "f16"),
                         layout)
    assert [round(b / 2**20, 2) for b in ours] == pytest.approx(theirs, abs=0.0051)


# --- fam-dense ---
# A dense family of its own builder over two devices: phi3 (fused qkv, LongRoPE factor tables
# duplicated into every layer's buffer, the output on the last device) by default; cohere2
# (two caches, token_embd duplicated as the output) and granite with KVGUI_TEST_ALL_FAMILIES=1.
DENSE_RPC_KEYS = ["phi3"] if os.environ.get("KVGUI_TEST_ALL_FAMILIES") != "1" else \
    ["phi3", "cohere2", "granite"]


@pytest.mark.parametrize("key", DENSE_RPC_KEYS)
def test_dense_family_per_device_equals_llama_fit_params(
        llama_tools: LlamaTools, tmp_path: Path, key: str) -> None:
    from kvgui.testing.arch_fixtures import fixtures
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    spec = next(f.spec for f in fixtures() if f.key == key)
    path = write_sparse_gguf(spec, tmp_path / "model.gguf")
    model = load_model(path)
    _each_device_equals_llama_fit_params(llama_tools, path, model, key)


# --- fam-moe ---
# GLM-4.5-Air: a dense lead layer, shared experts beside routed ones with exp_probs_b, a
# NextN block the main graph skips; (ngl, tensor split, flash attention, cache type,
# --n-cpu-moe, -ot (regex, RPC device or -1 for the CPU))
MOE_CASES = [
    (99, (), "on", "f16", 0, ()),  # pipeline parallelism: 4 input copies
    (99, (), "off", "f16", 99, ()),  # every layer's experts on the CPU, one split per layer
    (30, (3, 1), "on", "q8_0", 5, ()),  # partial offload, the first layers' experts on the CPU
    (99, (1, 1), "on", "f16", 0, ((r"blk\.(2|3|4)\.ffn_.*_exps", -1),)),
    (99, (1, 1), "on", "f16", 0, ((r"blk\.[0-9]*[02468]\.ffn_.*_shexp", 1),)),  # to RPC1
]


def test_moe_expert_overrides_equal_llama_fit_params(
        llama_tools: LlamaTools, sparse_model: Callable[[str], Path]) -> None:
    """Experts in host memory (--n-cpu-moe), an -ot to the CPU and one to the other device:
    each device's compute buffer and the split count as llama-fit-params reports them."""
    from kvgui.core.memory.compute import Offload
    from kvgui.testing.rpc import RpcDevices, fit_params

    path = sparse_model("GLM-4.5-Air Q4_K_M")
    model = load_model(path)
    with RpcDevices(llama_tools, [64 * GiB, 64 * GiB]) as devs:
        names = [f"RPC0[{e}]" for e in devs.endpoints]
        for ngl, ts, fa, ctype, n_cpu_moe, ot in MOE_CASES:
            r = fit_params(llama_tools, path, devs, ctx=8192, ngl=ngl, ts=ts, fa=fa, ctk=ctype,
                           ctv=ctype, n_cpu_moe=n_cpu_moe or None,
                           overrides=[(p, "CPU" if d < 0 else names[d]) for p, d in ot])
            theirs = [r.compute_mib.get(n, 0.0) for n in names] + [r.compute_mib["CPU"]]
            s = Settings(n_ctx=8192, n_gpu_layers=ngl, tensor_split=ts, type_k=ctype,
                         type_v=ctype, flash_attn=FlashAttn.ON if fa == "on" else FlashAttn.OFF)
            layout = rpc_layout(model, s, 2, n_cpu_moe=n_cpu_moe)
            if ot:  # the -ot entries, through Offload's rules (no pipeline parallelism)
                cpu = layout.cpu
                offload = Offload(tuple(-1 if b == cpu else b for b in layout.layer_backend),
                                  -1 if layout.output_backend == cpu else layout.output_backend,
                                  2, s.kv_offload, ot)
                layout = offload.layout_with(layout.backends, pins=False)
            assert (layout.n_copies == 4) == (ngl == 99 and not n_cpu_moe and not ot)
            memo = ModelMemo(model)
            shape, kinds = context_shape(model, s), reserve.cache_kinds(model, ctype, ctype)
            ours = reserve.peaks(model, shape, fa == "on", kinds, layout, memo)
            what = f"-ngl {ngl} -ts {ts} -fa {fa} {ctype} --n-cpu-moe {n_cpu_moe} -ot {ot}"
            assert [round(b / 2**20, 2) for b in ours] == pytest.approx(theirs, abs=0.0051), what
            assert reserve.split_count(model, shape, fa == "on", kinds, layout, memo) \
                == r.n_splits, what
# --- end fam-moe ---


# --- fam-hybrid ---
# A hybrid of its own builder over two devices: falcon-h1 (attention and a Mamba-2 mixer in
# every layer: KV cache and recurrent state on each layer's device, ssm_scan / ssm_conv beside
# flash attention) by default; a Mamba-1 stack, Qwen3.5's gated delta net, Gemma 3n's shared
# caches, RWKV-7 and granitehybrid (whose empty state-row copies on the second device leave
# ggml's free list out of address order: alloc._run_scan) with KVGUI_TEST_ALL_FAMILIES=1.
HYBRID_RPC_KEYS = ["falcon-h1"] if os.environ.get("KVGUI_TEST_ALL_FAMILIES") != "1" else \
    ["falcon-h1", "mamba", "qwen35", "gemma3n", "rwkv7", "granitehybrid"]


@pytest.mark.parametrize("key", HYBRID_RPC_KEYS)
def test_hybrid_family_per_device_equals_llama_fit_params(
        llama_tools: LlamaTools, tmp_path: Path, key: str) -> None:
    from kvgui.core.model.archspec import ModelSpec
    from kvgui.testing.arch_fixtures import fixtures
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    s0 = next(f.spec for f in fixtures() if f.key == key)
    path = write_sparse_gguf(ModelSpec(s0.name, s0.arch, "BF16", s0.hp), tmp_path / "m.gguf")
    model = load_model(path)
    _each_device_equals_llama_fit_params(llama_tools, path, model, key)


def _each_device_equals_llama_fit_params(llama_tools: LlamaTools, path: Path, model: ModelInfo,
                                         name: str) -> None:
    """Over two ggml-rpc-server devices, for each of CASES: kvgui's compute buffer per device
    and its split count against what llama-fit-params prints (two decimals of MiB)."""
    from kvgui.testing.rpc import RpcDevices, fit_params

    with RpcDevices(llama_tools, [24 * GiB, 24 * GiB]) as devs:
        for ngl, ts, fa, ctype, nkvo in CASES:
            r = fit_params(llama_tools, path, devs, ctx=8192, ngl=ngl, ts=ts, fa=fa, ctk=ctype,
                           ctv=ctype, extra=("-nkvo",) if nkvo else ())
            theirs = [r.compute_mib.get(f"RPC0[{e}]", 0.0) for e in devs.endpoints]
            theirs.append(r.compute_mib["CPU"])
            s = Settings(n_ctx=8192, n_gpu_layers=ngl, tensor_split=ts, type_k=ctype,
                         type_v=ctype, kv_offload=not nkvo,
                         flash_attn=FlashAttn.ON if fa == "on" else FlashAttn.OFF)
            memo = ModelMemo(model)
            shape, kinds = context_shape(model, s), reserve.cache_kinds(model, ctype, ctype)
            layout = rpc_layout(model, s, 2)
            ours = reserve.peaks(model, shape, fa == "on", kinds, layout, memo)
            what = f"{name} -ngl {ngl} -ts {ts} -fa {fa} {ctype} nkvo={nkvo}"
            assert [round(b / 2**20, 2) for b in ours] == pytest.approx(theirs, abs=0.0051), what
            assert reserve.split_count(model, shape, fa == "on", kinds, layout, memo) \
                == r.n_splits, what
