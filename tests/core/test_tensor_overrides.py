"""Tensor buffer overrides (-ot, --cpu-moe, --n-cpu-moe) in the estimate: which weights move,
to which device, in which host buffer type, and what llama.cpp says of bad ones. Pure core on
real catalog headers; llama.cpp itself checks the figures in test_offload_against_llama_cpp.py
(the dry run and llama-fit-params over RPC devices)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kvgui.core.config.settings import (
    ALL_MOE_LAYERS,
    Settings,
    n_cpu_moe_overrides,
    tensor_overrides,
)
from kvgui.core.devices.device_budget import DeviceBudget, cpu
from kvgui.core.devices.hardware.cpu import PRESETS
from kvgui.core.memory import tensor_overrides as to
from kvgui.core.memory.estimate import DeviceMemory, _placement, estimate
from kvgui.core.memory.findings import Code
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model.catalog import find
from kvgui.core.model.info import ModelInfo
from kvgui.core.sizes import GiB

AVX2 = PRESETS["avx2"]
EXPS = re.compile(r"\.ffn_(up|down|gate|gate_up)_(ch|)exps")


def model(label: str) -> ModelInfo:
    metadata, tensors, file_bytes = find(label).header()
    return ModelInfo.from_header(metadata, tensors, file_bytes=file_bytes)


@pytest.fixture(scope="module")
def qwen3moe() -> ModelInfo:
    return model("Qwen3-30B-A3B Q4_K_M")


@pytest.fixture(scope="module")
def memo(qwen3moe: ModelInfo) -> ModelMemo:
    """One memo for the module: equal placements share their compute graph's recording."""
    return ModelMemo(qwen3moe)


def gpu(name: str = "GPU", buft: str = "") -> DeviceBudget:
    return DeviceBudget(name, 64 * GiB, buft=buft)


def experts(m: ModelInfo, layers: range) -> int:
    """The padded bytes of these layers' expert weights (as a model buffer holds them)."""
    return sum(-(-t.nbytes // 32) * 32 for t in m.tensors if EXPS.search(t.name)
               and int(t.name.split(".")[1]) in layers)


# --- ECMAScript patterns as std::regex reads them --------------------------------------------

# (pattern, names): each name searched with the pattern; what libstdc++'s std::regex says is
# checked below when a C++ compiler is at hand
REGEX_CASES = [
    (r"blk\.(1[0-9]|2[0-9])\.ffn_.*_exps", ["blk.12.ffn_up_exps.weight", "blk.3.ffn_up_exps.weight",
                                           "blk.29.ffn_down_exps.weight"]),
    (r"exps", ["blk.0.ffn_gate_exps.weight", "blk.0.ffn_gate_inp.weight"]),
    (r"\.ffn_(up|down|gate|gate_up)_(ch|)exps", ["blk.1.ffn_gate_up_exps.weight",
                                                 "blk.1.ffn_up_shexp.weight"]),
    (r"^output\.weight$", ["output.weight", "output_norm.weight"]),
    (r"[[:digit:]]+\.attn", ["blk.7.attn_q.weight", "token_embd.weight"]),
    (r"blk\.[0-9]{1,2}\.", ["blk.7.x", "blk.123.x"]),  # (no ',' in an -ot, but in Settings)
    (r"\q\A", ["qA", "q"]),  # escaped letters that are no ECMAScript escape: the letters
    (r"a*+b", ["aab", "b", "c"]),
    (r"[]x]", ["]x", "x"]),
    (r"[^]", ["x", ""]),
    (r"a}", ["a}"]),
    (r"[a&&b~~]", ["&", "~", "c"]),
    (r"(ffn_(down|up))\b", ["ffn_down.weight", "ffn_downx"]),
    (r"(?:up|down)_exps(?=\.weight)", ["up_exps.weight", "up_exps.bias"]),
    (r"", ["anything"]),
]
# patterns std::regex refuses (RegexError here)
BAD_REGEX = [r"(?i)exps", r"(?<=blk)\.0", r"(?P<x>a)", r"a{", r"a{1,x}", r"(a", r"a)", r"*a",
             r"[a", "a\\", r"[[:nope:]]"]


@pytest.mark.parametrize(("pattern", "names"), REGEX_CASES)
def test_patterns_translate(pattern: str, names: list[str]) -> None:
    regex = to.compile_pattern(pattern)
    assert isinstance(regex, re.Pattern)
    assert [bool(regex.search(n)) for n in names]  # (compared with std::regex below)


@pytest.mark.parametrize("pattern", BAD_REGEX)
def test_bad_patterns_are_refused(pattern: str) -> None:
    with pytest.raises(to.RegexError):
        to.compile_pattern(pattern)


_STD_REGEX = r"""
#include <iostream>
#include <regex>
#include <string>
int main() {  // lines "pattern\tname": 1 / 0 (std::regex_search), ERR (std::regex_error)
    std::string line;
    while (std::getline(std::cin, line)) {
        auto tab = line.find('\t');
        try {
            std::regex r(line.substr(0, tab));
            std::cout << (std::regex_search(line.substr(tab + 1), r) ? "1" : "0") << "\n";
        } catch (const std::regex_error &) { std::cout << "ERR\n"; }
    }
}
"""


@pytest.fixture(scope="session")
def std_regex() -> Path:
    """A tiny program that answers with libstdc++'s std::regex (what llama.cpp links), built
    once per machine into kvgui's cache (KVGUI_CACHE_DIR)."""
    import hashlib

    from kvgui.testing.llama_tools import cache_root

    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler to build std::regex's reference")
    key = hashlib.sha256((cxx + _STD_REGEX).encode()).hexdigest()[:12]
    exe = cache_root() / f"std-regex-{key}"
    if not exe.is_file():
        exe.parent.mkdir(parents=True, exist_ok=True)
        src = exe.with_suffix(".cpp")
        src.write_text(_STD_REGEX)
        tmp = exe.with_suffix(f".tmp{os.getpid()}")
        subprocess.run([cxx, "-O1", "-o", str(tmp), str(src)], check=True, timeout=300)
        tmp.replace(exe)
    return exe


def test_patterns_search_as_std_regex_does(std_regex: Path) -> None:
    cases = [(p, n) for p, names in REGEX_CASES for n in names] + [(p, "x") for p in BAD_REGEX]
    out = subprocess.run([str(std_regex)], input="".join(f"{p}\t{n}\n" for p, n in cases),
                         capture_output=True, text=True, check=True, timeout=60).stdout.split()
    for (pattern, name), theirs in zip(cases, out, strict=True):
        try:
            ours = "1" if to.compile_pattern(pattern).search(name) else "0"
        except to.RegexError:
            ours = "ERR"
        assert ours == theirs, f"{pattern!r} on {name!r}"


# --- buffer type names ------------------------------------------------------------------------

def test_buffer_type_names() -> None:
    gpus = [gpu(buft="RPC0[10.0.0.2:50052]"), gpu(), gpu()]
    slots = to.buffer_type_slots(gpus)
    assert slots["CPU"] == to.CPU_SLOT
    assert slots["RPC0[10.0.0.2:50052]"] == 0  # llama.cpp puts RPC devices first
    assert slots["CUDA0"] == slots["Vulkan0"] == 1 and slots["CUDA1"] == slots["ROCm1"] == 2
    assert "CUDA2" not in slots and "RPC1[10.0.0.2:50052]" not in slots


# --- the estimate -------------------------------------------------------------------------

def test_n_cpu_moe_moves_exactly_the_first_layers_experts(qwen3moe: ModelInfo,
                                                          memo: ModelMemo) -> None:
    devices = [gpu(), cpu(None, PRESETS["none"])]
    base = estimate(qwen3moe, Settings(), devices, memo)
    for n in (1, 47):
        e = estimate(qwen3moe, Settings(n_cpu_moe=n), devices, memo)
        moved = experts(qwen3moe, range(n))
        assert base.devices[0].weights - e.devices[0].weights == moved
        # plain CPU (no repack); mmap maps from the first CPU weight to the last: the layers
        # between token_embd and the experts are mapped, not used (mapped_idle)
        def used(d: DeviceMemory) -> int:
            return d.weights - d.mapped_idle

        assert used(e.devices[1]) - used(base.devices[1]) == moved
        no_mmap = estimate(qwen3moe, Settings(n_cpu_moe=n, mmap=False), devices, memo)
        assert no_mmap.devices[1].weights - used(base.devices[1]) == moved
        assert e.kv == base.kv  # the KV cache stays with its layer
    every = estimate(qwen3moe, Settings(n_cpu_moe=ALL_MOE_LAYERS), devices, memo)
    assert every.devices[0].weights == base.devices[0].weights - experts(qwen3moe, range(48))
    assert estimate(qwen3moe, Settings(n_cpu_moe=48), devices, memo).devices == every.devices
    assert estimate(qwen3moe, Settings(n_cpu_moe=999), devices, memo).devices == every.devices


def test_ot_is_the_same_as_the_overrides_n_cpu_moe_makes(qwen3moe: ModelInfo,
                                                         memo: ModelMemo) -> None:
    devices = [gpu(), cpu(None, AVX2)]
    a = estimate(qwen3moe, Settings(n_cpu_moe=6), devices, memo)
    b = estimate(qwen3moe, Settings(override_tensor=n_cpu_moe_overrides(6)), devices, memo)
    c = estimate(qwen3moe, Settings(override_tensor=((r"blk\.[0-5]\.ffn_.*_exps", "CPU"),)),
                 devices)
    assert a.devices == b.devices == c.devices
    assert a.host_buffers == b.host_buffers == c.host_buffers


def test_the_first_matching_override_wins(qwen3moe: ModelInfo, memo: ModelMemo) -> None:
    devices = [gpu(), cpu(None, PRESETS["none"])]
    s = Settings(n_cpu_moe=4, override_tensor=((r"blk\.0\.ffn_up_exps", "CUDA0"),))
    assert tensor_overrides(s)[0] == (r"blk\.0\.ffn_up_exps", "CUDA0")
    e = estimate(qwen3moe, s, devices, memo)
    base = estimate(qwen3moe, Settings(), devices, memo)
    up0 = next(-(-t.nbytes // 32) * 32 for t in qwen3moe.tensors
               if t.name == "blk.0.ffn_up_exps.weight")
    assert base.devices[0].weights - e.devices[0].weights == experts(qwen3moe, range(4)) - up0


def test_overrides_to_a_gpu_take_cpu_layers_there(qwen3moe: ModelInfo, memo: ModelMemo) -> None:
    """-ngl 10 and the attention of every CPU layer on the GPU (an -ot to CUDA0)."""
    devices = [gpu(), cpu(None, PRESETS["none"])]
    base = estimate(qwen3moe, Settings(n_gpu_layers=10), devices, memo)
    attn = re.compile(r"attn_(q|k|v|output)\.weight")
    e = estimate(qwen3moe, Settings(n_gpu_layers=10, override_tensor=((r"attn_", "CUDA0"),)),
                 devices)
    cpu_attn = sum(-(-t.nbytes // 32) * 32 for t in qwen3moe.tensors if attn.search(t.name)
                   and int(t.name.split(".")[1]) < 48 - 9 and "norm" not in t.name)
    norms = sum(-(-t.nbytes // 32) * 32 for t in qwen3moe.tensors if "attn_" in t.name
                and "norm" in t.name and int(t.name.split(".")[1]) < 48 - 9)
    assert e.devices[0].weights - base.devices[0].weights == cpu_attn + norms
    assert e.kv == base.kv and e.devices[1].kv == base.devices[1].kv  # KV stays per layer


@pytest.mark.parametrize(("gpus", "mmap", "expert_buffer"), [
    ([], True, "CPU_REPACK"),  # the CPU alone: Q4_K experts repacked (AVX2)
    ([gpu(buft="RPC0[h:1]")], True, "CPU_REPACK"),  # an RPC device has no host buffer type
    ([gpu(buft="RPC0[h:1]")], False, "CPU_REPACK"),
    ([gpu()], True, "CPU_Mapped"),  # a GPU's pinned host buffer type first, then mmap
    ([gpu()], False, "GPU_Host"),  # -lm none: pinned host memory
])
def test_experts_on_the_cpu_take_llama_cpps_host_buffer_types(
        qwen3moe: ModelInfo, memo: ModelMemo, gpus: list[DeviceBudget], mmap: bool,
        expert_buffer: str) -> None:
    s = Settings(n_cpu_moe=ALL_MOE_LAYERS, mmap=mmap)
    e = estimate(qwen3moe, s, [*gpus, cpu(None, AVX2)], memo)
    buffers = dict(e.host_buffers)
    placed = {p.weight.name: p.buffer for p in _placement(qwen3moe, s, gpus, AVX2).host.placed}
    gate_up = [n for n in placed if re.search(r"ffn_(gate|up)_exps", n)]
    assert len(gate_up) == 96 and {placed[n] for n in gate_up} == {
        "CPU" if expert_buffer == "CPU_Mapped" else expert_buffer}
    assert buffers.get(expert_buffer, 0) > 0
    if gpus:  # the GPU keeps attention, norms, routers, the output layer
        assert e.devices[0].weights == sum(
            -(-t.nbytes // 32) * 32 for t in qwen3moe.tensors
            if not t.name.startswith("token_embd") and not EXPS.search(t.name))


def test_findings(qwen3moe: ModelInfo, memo: ModelMemo) -> None:
    devices = [gpu(), cpu(None, AVX2)]
    bad = estimate(qwen3moe, Settings(override_tensor=(("(?i)exps", "CPU"), ("x", "CUDA0"))),
                   devices)
    assert bad.refused and [f.code for f in bad.refusals] == [Code.OT_BAD_REGEX]
    assert bad.refusals[0].fix == {"override_tensor": (("x", "CUDA0"),)}
    unknown = estimate(qwen3moe, Settings(override_tensor=(("exps", "CUDA1"),)), devices, memo)
    assert [f.code for f in unknown.refusals] == [Code.OT_UNKNOWN_BUFFER_TYPE]
    assert "CUDA0" in unknown.refusals[0].message
    none = estimate(qwen3moe, Settings(override_tensor=(("nothing_is_called_so", "CPU"),)),
                    devices)
    assert none.has(Code.OT_NO_MATCH) and not none.refused
    assert estimate(qwen3moe, Settings(n_cpu_moe=4), devices, memo).has(Code.CPU_OVERRIDE_MMAP)
    assert not estimate(qwen3moe, Settings(n_cpu_moe=4, mmap=False), devices, memo).has(
        Code.CPU_OVERRIDE_MMAP)
    dense = model("Llama-3.1-8B-Instruct Q4_K_M")
    d = estimate(dense, Settings(n_cpu_moe=8), devices)
    base = estimate(dense, Settings(), devices)
    assert d.has(Code.CPU_MOE_NO_EXPERTS) and not d.refused
    assert [x.weights for x in d.devices] == [x.weights for x in base.devices]


def test_shared_experts_stay_with_their_layer() -> None:
    """DeepSeek's ffn_*_shexp is not LLM_FFN_EXPS_REGEX's: --cpu-moe leaves it on the GPU."""
    m = model("DeepSeek-V2-Lite-Chat Q4_K_M")
    devices = [gpu(), cpu(None, PRESETS["none"])]
    e = estimate(m, Settings(n_cpu_moe=ALL_MOE_LAYERS), devices)
    base = estimate(m, Settings(), devices)
    moved = experts(m, range(m.n_layer))
    assert moved and base.devices[0].weights - e.devices[0].weights == moved
    assert any("shexp" in t.name for t in m.tensors)


def test_rpc_servers_are_devices_before_the_gpus(qwen3moe: ModelInfo, memo: ModelMemo) -> None:
    """--rpc: each server's device comes first (llama.cpp's order), -ot can name it, and its
    unknown memory makes the default split a guess (a note), which -ts removes."""
    s = Settings(rpc_servers=("10.0.0.2:50052",), tensor_split=(1.0, 1.0),
                 override_tensor=((r"blk\.(4[0-7])\.ffn_.*_exps", "RPC0[10.0.0.2:50052]"),))
    e = estimate(qwen3moe, s, [gpu(), cpu(None, AVX2)], memo)
    assert [d.name for d in e.devices] == ["RPC 10.0.0.2:50052", "GPU", "CPU"]
    assert not e.refused and not e.has(Code.RPC_MEMORY_UNKNOWN)
    base = estimate(qwen3moe, s.replace(override_tensor=()), [gpu(), cpu(None, AVX2)], memo)
    moved = experts(qwen3moe, range(40, 48))  # layers 24-47 are the local GPU's (-ts 1,1)
    assert e.devices[0].weights - base.devices[0].weights == moved
    assert base.devices[1].weights - e.devices[1].weights == moved
    guess = estimate(qwen3moe, s.replace(tensor_split=()), [gpu(), cpu(None, AVX2)], memo)
    assert guess.has(Code.RPC_MEMORY_UNKNOWN)
    given = [DeviceBudget("box", 8 * GiB, buft="RPC0[10.0.0.2:50052]"), gpu()]
    assert [d.name for d in estimate(qwen3moe, s, [*given, cpu(None, AVX2)], memo).devices] \
        == ["box", "GPU", "CPU"]  # a plan that has the server's device keeps it
