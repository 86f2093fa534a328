"""The compute-buffer model: the ggml-alloc replica, the layer shortcut, which models it covers.

Its figures are checked against llama.cpp itself (to the byte, for the simulated
architectures) in test_against_llama_cpp.py; here: the allocator's rules and the shortcut that
keeps the replay fast, on real model headers from the catalog.
"""

from __future__ import annotations

import dataclasses
import random

import pytest

from kvgui.core.config.settings import Settings
from kvgui.core.memory import compute, ggml_alloc
from kvgui.core.memory.compute import (
    SlotLayers,
    cache_graph,
    compute_buffer,
    simulated_peak,
    simulates,
)
from kvgui.core.memory.estimate import context_shape
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model.catalog import find
from kvgui.core.model.info import ModelInfo


def model(label: str) -> ModelInfo:
    metadata, tensors, file_bytes = find(label).header()
    return ModelInfo.from_header(metadata, tensors, file_bytes=file_bytes)


def test_allocator_best_fit_then_last_block_and_merging() -> None:
    al = ggml_alloc.Allocator()  # (sizes come aligned)
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


def test_which_models_are_replayed() -> None:
    for label in ("Llama-3.1-8B-Instruct Q4_K_M", "Qwen2.5-7B-Instruct Q4_K_M",
                  "Qwen3-8B Q4_K_M", "Mistral-Nemo-Instruct-2407 Q4_K_M",
                  "Qwen3-30B-A3B Q4_K_M", "Gemma-2-9B-it Q4_K_M", "Gemma-3-27B-it Q4_K_M",
                  "gpt-oss-20b MXFP4_MOE", "DeepSeek-V2-Lite-Chat Q4_K_M", "LFM2-1.2B Q8_0"):
        assert simulates(model(label)), label
    assert not simulates(model("Mamba-Codestral-7B-v0.1 Q4_K_M"))  # (the stage model)
    llama = model("Llama-3.1-8B-Instruct Q4_K_M")
    odd = dataclasses.replace(llama, block_tensors=llama.block_tensors | {"attn_output.bias"})
    assert not simulates(odd)  # a block tensor the synthesized graph does not have


def test_cache_types_in_the_graph() -> None:
    llama = model("Llama-3.1-8B-Instruct Q4_K_M")
    assert cache_graph(llama, "f16", "f16") == (False, False, False, False)
    assert cache_graph(llama, "q8_0", "f16") == (True, False, False, False)
    assert cache_graph(llama, "bf16", "q4_0") == (False, True, False, False)
    assert cache_graph(llama, "f32", "q8_0") == (False, True, True, False)
    deepseek = model("DeepSeek-V2-Lite-Chat Q4_K_M")  # MLA: no rotation
    assert cache_graph(deepseek, "q8_0", "q8_0") == (False, False, False, False)


@pytest.mark.parametrize("label", ["Llama-3.2-3B-Instruct Q4_K_M", "Qwen2.5-7B-Instruct Q4_K_M",
                                   "Qwen3-30B-A3B Q4_K_M", "Gemma-2-9B-it Q4_K_M",
                                   "Gemma-3-27B-it Q4_K_M", "gpt-oss-20b MXFP4_MOE",
                                   "DeepSeek-V2-Lite-Chat Q4_K_M", "LFM2-1.2B Q8_0"])
def test_layer_shortcut_equals_the_full_replay(label: str) -> None:
    rng = random.Random(label)
    base = model(label)
    uniform = not any(layer.swa or layer.recurrent for layer in base.layers)
    for _ in range(6):
        m = base
        if uniform:  # other depths and widths of the same layer
            m = dataclasses.replace(base, n_layer=rng.choice([1, 2, 3, 7, 28, 61]),
                                    n_head_kv=rng.choice([1, 2, 4, base.n_head]),
                                    n_ff=rng.choice([base.n_ff, 4864, 3 * base.n_embd]))
        fa = rng.random() < 0.5
        cache = (rng.random() < 0.4, rng.random() < 0.4, rng.random() < 0.2,
                 rng.random() < 0.2)
        program = compute._program(m, fa, cache, ModelMemo(m))
        for _ in range(5):
            t = rng.choice([1, 7, 64, 512, 513, 2048])
            n_kv = rng.choice([256, 4096, 10240, 131072])
            swa = min(n_kv, rng.choice([512, 1280, 4608]))
            streams = rng.choice([1, 1, 2])
            scale = (t, t * n_kv, t * swa, rng.choice([t, 1]), 1, n_kv * streams, swa * streams,
                     streams)
            for align in (compute.CPU_ALIGN, compute.CUDA_ALIGN):
                assert ggml_alloc.replay(program, scale, align) == \
                    ggml_alloc.replay(program, scale, align, shortcut=False)


def test_logits_land_after_what_the_last_layer_leaves() -> None:
    """The peak is the logits plus whatever is still placed below them: never less than the
    logits, the never-freed embedding input and the final norm together."""
    m = model("Llama-3.2-3B-Instruct Q4_K_M")
    for s in (Settings(n_ctx=4096), Settings(n_ctx=10000), Settings(n_ctx=300, n_ubatch=128)):
        shape = context_shape(m, s)
        t = shape.n_ubatch
        floor = 4 * t * (m.n_vocab + 2 * m.n_embd)
        for fa in (True, False):
            for cache in ((False, False, False, False), (True, True, False, False)):
                assert simulated_peak(m, shape, fa, cache) >= floor


def test_one_gpu_with_everything_is_never_below_either_model() -> None:
    m = model("Llama-3.1-8B-Instruct Q4_K_M")
    shape = context_shape(m, Settings(n_ctx=10000))
    everything = SlotLayers(True, True, True, False)
    nothing = SlotLayers(False, False, False, False)
    cache = (True, True, False, False)
    gpu, host = compute_buffer(m, shape, True, [everything, nothing], cache)
    assert gpu >= simulated_peak(m, shape, True, cache, compute.CUDA_ALIGN)
    attn, ffn, out = compute._stage_peaks(m, shape, True, shape.n_ctx_seq, shape.n_ubatch)
    assert gpu >= max(attn, ffn, out)
    assert 0 < host < gpu
    cpu_only = compute_buffer(m, shape, True, [everything], cache)
    assert cpu_only == [simulated_peak(m, shape, True, cache)]


def test_unknown_cache_types_take_the_largest_case() -> None:
    m = model("Llama-3.2-3B-Instruct Q4_K_M")
    shape = context_shape(m, Settings(n_ctx=4096))
    slots = [SlotLayers(True, True, True, False)]
    cases = [compute_buffer(m, shape, True, slots, (k, v, False, False))[0]
             for k in (False, True) for v in (False, True)]
    assert len(set(cases)) > 1  # the rotations' matrix products move the logits up here
    assert compute_buffer(m, shape, True, slots) == [max(cases)]
