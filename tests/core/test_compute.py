"""The compute buffer: the rebuilt graphs, the replay's layer shortcut, which models are replayed.

Figures are checked against llama.cpp itself (to the byte) in test_against_llama_cpp.py and
test_reserve_graphs.py; here: the allocator's rules and the shortcut that keeps the replay fast,
on real model headers from the catalog.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from kvgui.core.config.settings import Settings
from kvgui.core.memory import compute, reserve
from kvgui.core.memory.compute import (
    CacheKinds,
    SlotLayers,
    cache_graph,
    compute_buffer,
    simulated_peak,
    simulates,
)
from kvgui.core.memory.estimate import context_shape
from kvgui.core.memory.graph import alloc
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model.catalog import find
from kvgui.core.model.info import ModelInfo

REPLAYED = ["Llama-3.1-8B-Instruct Q4_K_M", "Qwen2.5-7B-Instruct Q4_K_M", "Qwen3-8B Q4_K_M",
            "Mistral-Nemo-Instruct-2407 Q4_K_M", "Qwen3-30B-A3B Q4_K_M", "Gemma-2-9B-it Q4_K_M",
            "Gemma-3-27B-it Q4_K_M", "gpt-oss-20b MXFP4_MOE", "DeepSeek-V2-Lite-Chat Q4_K_M",
            "LFM2-1.2B Q8_0"]
# fam-hybrid: the layer shortcut over a gated-delta-net hybrid (attention every 4th layer)
HYBRIDS = ["Qwen3-Next-80B-A3B-Instruct Q4_K_M"]


def model(label: str) -> ModelInfo:
    metadata, tensors, file_bytes = find(label).header()
    return ModelInfo.from_header(metadata, tensors, file_bytes=file_bytes)


def truncated(m: ModelInfo, n_layer: int) -> ModelInfo:
    """The same architecture with only its first ``n_layer`` layers."""
    keep = tuple(t for t in m.tensor_table
                 if not t[0].startswith("blk.") or int(t[0].split(".")[1]) < n_layer)
    return dataclasses.replace(m, n_layer=n_layer, layers=m.layers[:n_layer],
                               layer_weights=m.layer_weights[:n_layer], tensor_table=keep)


def test_allocator_best_fit_then_last_block_and_merging() -> None:
    al = alloc.Allocator()  # (sizes come aligned)
    a = al.alloc(128)
    b = al.alloc(64)
    c = al.alloc(256)
    assert (a, b, c, al.max_size) == (0, 128, 192, 448)
    al.free(a, 128)
    al.free(c, 256)  # merges into the open end
    assert al.blocks[0] == [0, 128]
    assert al.alloc(32) == 0  # best fit among the blocks before the last
    assert al.alloc(224) == 192  # too big for the hole: the last block grows the buffer
    al.free(0, 32)  # merges with the free block after it
    al.free(128, 64)  # and now that block with the one after it
    assert al.blocks[0] == [0, 192]
    assert al.max_size == 448


def test_which_models_are_replayed(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvgui.core.memory import builders

    for label in REPLAYED:
        assert simulates(model(label)), label
    mamba = model("Mamba-Codestral-7B-v0.1 Q4_K_M")
    assert simulates(mamba)  # (builders/mamba.py)
    monkeypatch.delitem(builders.BUILDERS, "mamba2")
    assert not simulates(mamba)  # (no builder: stage model)
    monkeypatch.undo()
    llama = model("Llama-3.1-8B-Instruct Q4_K_M")
    odd = dataclasses.replace(llama, tensor_table=(
        *llama.tensor_table, ("blk.0.attn_gate.weight", 0, (4096, 4096))))
    assert not simulates(odd)  # a tensor the rebuilt graph never reads: a variant
    assert simulates(llama)


def test_cache_types_in_the_graph() -> None:
    llama = model("Llama-3.1-8B-Instruct Q4_K_M")
    assert cache_graph(llama, "f16", "f16") == CacheKinds("f16", "f16")
    # one recording serves every quantized type, keyed by the kinds; the exact types come
    # along for a graph that copies the cache (reserve.peaks)
    q = cache_graph(llama, "q8_0", "q4_0")
    assert q.graph == CacheKinds("quantized", "quantized") and q.exact == ("q8_0", "q4_0")
    assert cache_graph(llama, "f32", "iq4_nl") == CacheKinds("f32", "quantized",
                                                              ("f32", "iq4_nl"))
    assert cache_graph(llama, "bf16", "q5_1").graph == CacheKinds("bf16", "quantized")


@pytest.mark.parametrize("label", REPLAYED[:1] + REPLAYED[4:] + HYBRIDS)
def test_layer_shortcut_equals_the_full_replay(label: str) -> None:
    rng = random.Random(label)
    base = model(label)
    uniform = not any(layer.swa or layer.recurrent for layer in base.layers)
    for _ in range(4):
        m = truncated(base, rng.choice([1, 2, 3, 7])) if uniform and rng.random() < 0.5 \
            else base
        k, v = (rng.choice(["f16", "f32", "q8_0"]) for _ in range(2))
        kinds = reserve.cache_kinds(m, k, k if m.is_mla else v)  # (MLA: one type)
        # (llama.cpp refuses a quantized V cache without flash attention; MLA: V is K)
        fa = rng.random() < 0.5 or kinds.v == "quantized"
        n_seqs = rng.choice([1, 1, 3])
        key = reserve.GraphKey(fa, kinds, n_seqs,
                               n_seqs > 1 and rng.random() < 0.5, frozenset())
        program = reserve.program(m, key)
        for _ in range(4):
            u = rng.choice([7, 64, 171, 512, 2048])
            n_kv = rng.choice([256, 4096, 10240, 131072])
            env = {"U": u, "O": rng.choice([u * n_seqs, u]), "K": n_kv,
                   "W": min(n_kv, rng.choice([512, 1280, 4608]))}
            scale = program.scale(env)
            for align in (compute.CPU_ALIGN, compute.CUDA_ALIGN):
                assert alloc.replay(program, scale, align) == \
                    alloc.replay(program, scale, align, shortcut=False)


def test_logits_land_after_what_the_last_layer_leaves() -> None:
    """The peak is the logits plus whatever is still placed below them: never less than the
    logits, the never-freed embedding input and the final norm together."""
    m = model("Llama-3.2-3B-Instruct Q4_K_M")
    for s in (Settings(n_ctx=4096), Settings(n_ctx=10000), Settings(n_ctx=300, n_ubatch=128)):
        shape = context_shape(m, s)
        t = shape.n_ubatch
        floor = 4 * t * (m.n_vocab + 2 * m.n_embd)
        for fa in (True, False):
            for kinds in (CacheKinds("f16", "f16"),
                          CacheKinds("quantized", "quantized" if fa else "f16")):
                assert simulated_peak(m, shape, fa, kinds) >= floor


def test_one_gpu_with_everything_splits_off_the_token_embedding() -> None:
    """The token embeddings stay in host memory: the CPU runs the lookup and the GPU the rest
    (two splits); the GPU's buffer is its own ggml-alloc over its share, with CUDA's rules."""
    m = model("Llama-3.1-8B-Instruct Q4_K_M")
    shape = context_shape(m, Settings(n_ctx=10000))
    everything = SlotLayers(True, True, True, False)
    nothing = SlotLayers(False, False, False, False)
    kinds = CacheKinds("quantized", "quantized")
    offload = compute.Offload(tuple([0] * len(m.layers)), 0, 1)
    memo = ModelMemo(m)
    gpu, host = compute_buffer(m, shape, True, [everything, nothing], kinds, offload, memo)
    assert [gpu, host] == reserve.peaks(m, shape, True, kinds, offload.layout)
    split = next(iter(reserve.recordings(memo).splits.values()))[0]
    assert split.n_splits == 2
    t, n_kv = shape.n_ubatch, shape.n_ctx_seq
    # the host makes every graph input (to be copied to the GPU) and looks the rows up:
    # tokens, the unused embedding input, positions, K and V store indices, the f16 mask,
    # the Hadamard matrices of the quantized caches (128 for K, 64 for V), the output ids
    inputs = 4 * t + 4 * m.n_embd * t + 4 * t + 8 * t + 8 * t + 2 * n_kv * t \
        + 4 * 128 * 128 + 4 * 64 * 64 + 4 * t
    assert host == inputs + 4 * m.n_embd * t
    # the GPU peaks at the logits over the final norm (an output: never freed)
    assert gpu == 4 * t * (m.n_vocab + m.n_embd)
    assert compute_buffer(m, shape, True, [everything], kinds) == \
        [simulated_peak(m, shape, True, kinds)]


def test_unknown_cache_types_take_the_largest_case() -> None:
    m = model("Llama-3.2-3B-Instruct Q4_K_M")
    shape = context_shape(m, Settings(n_ctx=4096))
    slots = [SlotLayers(True, True, True, False)]
    cases = [compute_buffer(m, shape, True, slots, CacheKinds(k, v))[0]
             for k in ("f16", "quantized") for v in ("f16", "quantized")]
    assert len(set(cases)) > 1  # the rotations' matrix products move the logits up here
    assert compute_buffer(m, shape, True, slots) == [max(cases)]


def test_a_cache_in_ram_read_by_a_gpu_is_sized_by_its_exact_type() -> None:
    """-nkvo: the scheduler copies the cache's views into the GPUs' compute buffers, so q4_0
    and q5_0 differ there (checked against llama-fit-params over RPC devices in
    tests/testing/test_device_matrix.py); with the cache on the GPUs they share one graph."""
    from kvgui.core.config.settings import FlashAttn
    from kvgui.core.devices.device_budget import DeviceBudget
    from kvgui.core.memory.estimate import estimate

    llama = model("Llama-3.1-8B-Instruct Q4_K_M")
    gpus = [DeviceBudget("A", 24 * 2**30), DeviceBudget("B", 24 * 2**30)]
    memo = ModelMemo(llama)

    def gpu_compute(cache: str, kv_offload: bool) -> list[int]:
        s = Settings(n_ctx=16384, flash_attn=FlashAttn.ON, type_k=cache, type_v=cache,
                     kv_offload=kv_offload, tensor_split=(3.0, 1.0))
        return [d.compute for d in estimate(llama, s, gpus, memo).devices if d.is_gpu]

    assert gpu_compute("q4_0", True) == gpu_compute("q5_0", True)
    in_ram = {c: gpu_compute(c, False) for c in ("q4_0", "q5_0", "q8_0")}
    assert in_ram["q4_0"][0] != in_ram["q8_0"][0], in_ram


def test_a_partial_offload_on_cuda_copies_the_cpu_layers_cache_by_its_exact_type() -> None:
    """CUDA's offload_op draws a CPU layer's prompt matmuls to the GPU, and the attention
    after them follows, reading that layer's cache from RAM: the copies are the exact type's
    (kvgui stood q8_0 in for every quantized type here until the RPC matrix found the
    -nkvo case). From ggml's source; awaits a GPU check (benchmarks/gpu_check.sh)."""
    from kvgui.core.config.settings import FlashAttn
    from kvgui.core.devices.device_budget import DeviceBudget
    from kvgui.core.memory.estimate import estimate

    llama = model("Llama-3.1-8B-Instruct Q4_K_M")
    memo = ModelMemo(llama)

    def gpu_compute(cache: str, ngl: int) -> int:
        s = Settings(n_ctx=32768, flash_attn=FlashAttn.ON, type_k=cache, type_v=cache,
                     n_gpu_layers=ngl)
        est = estimate(llama, s, [DeviceBudget("A", 24 * 2**30)], memo)
        return next(d.compute for d in est.devices if d.is_gpu)

    assert gpu_compute("q4_0", 99) == gpu_compute("q5_0", 99)  # (nothing copies the cache)
    # the copies of 16 CPU layers' caches, at 32K: q4_0 258.50 MiB, q8_0 302.06 MiB
    assert gpu_compute("q4_0", 16) < gpu_compute("q8_0", 16)
