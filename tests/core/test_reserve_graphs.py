"""The rebuilt reserve graphs against llama.cpp's: node for node (llama.cpp logs its graph's
node count) and byte for byte (the CPU compute buffer of the no_alloc dry run), for settings
beyond test_against_llama_cpp's matrix: -np 4 without flash attention, a unified cache with
it, ubatches of 1, 7 and 1024 tokens.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.model.archspec import ModelSpec
from kvgui.testing.reserve_check import compare

pytestmark = [pytest.mark.llama, pytest.mark.slow]

ON, OFF = FlashAttn.ON, FlashAttn.OFF
MATRIX = [
    Settings(n_ctx=4096, flash_attn=ON),
    Settings(n_ctx=12345, n_parallel=4, flash_attn=OFF),
    Settings(n_ctx=16384, n_parallel=4, kv_unified=True, type_k="q8_0", type_v="q8_0",
             flash_attn=ON),
    Settings(n_ctx=8192, n_ubatch=1024, flash_attn=OFF),
    Settings(n_ctx=8192, n_ubatch=1, n_batch=1, flash_attn=ON),
    Settings(n_ctx=8192, n_ubatch=7, n_batch=7, type_k="q4_0", flash_attn=OFF),
    Settings(n_ctx=32768, swa_full=True, type_k="q8_0", type_v="q8_0", flash_attn=ON),
]


@pytest.mark.parametrize("label", ["Llama-3.1-8B-Instruct Q4_K_M", "Gemma-3-12B-it Q4_K_M",
                                   "Qwen3-30B-A3B Q4_K_M", "LFM2-1.2B Q8_0"])
def test_graph_and_compute_equal_llama_cpp(sparse_model: Callable[[str], Path],
                                           label: str) -> None:
    rows = compare(sparse_model(label), MATRIX)
    assert sum(r.llama_compute is not None for r in rows) >= len(MATRIX) - 1
    for r in rows:
        assert r.equal, (f"{label} {r.settings}: llama.cpp {r.llama_compute} B "
                         f"{r.llama_nodes} nodes, kvgui {r.ours} B {r.our_nodes} nodes "
                         f"{r.error}")


# --- fam-dense ---
# The dense families' builders (builders/<arch>.py), node for node and byte for byte: phi3
# (fused qkv, one SWIGLU over a fused ffn_up, LongRoPE factors) by default, every one with
# KVGUI_TEST_ALL_FAMILIES=1 (each a header-faithful file from kvgui.testing.arch_fixtures).
DENSE_KEYS = ["phi3"] if os.environ.get("KVGUI_TEST_ALL_FAMILIES") != "1" else [
    "phi3", "phi3:phi-4", "mistral3", "exaone4", "olmo2", "olmo2:Olmo-3-7B-Instruct",
    "smollm3", "cohere2", "command-r", "granite", "glm4", "starcoder2", "internlm2", "minicpm",
    "ernie4_5", "hunyuan-dense", "seed_oss", "apertus",
]


@pytest.mark.parametrize("key", DENSE_KEYS)
def test_dense_family_graph_equals_llama_cpp(tmp_path: Path, key: str) -> None:
    pytest.importorskip("gguf")
    from kvgui.testing.arch_fixtures import fixtures
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    spec = next(f.spec for f in fixtures() if f.key == key)
    rows = compare(write_sparse_gguf(spec, tmp_path / "model.gguf"), MATRIX)
    assert sum(r.llama_compute is not None for r in rows) >= len(MATRIX) - 1
    for r in rows:
        assert r.equal, (f"{key} {r.settings}: llama.cpp {r.llama_compute} B "
                         f"{r.llama_nodes} nodes, kvgui {r.ours} B {r.our_nodes} nodes "
                         f"{r.error}")


def _dense_variant(key: str, metadata: dict[str, object] | None = None,
                   **hp: object) -> object:
    """A fixture's header with config numbers (``hp``) or header keys changed: the paths of a
    builder its family's fixture does not take."""
    from kvgui.core.model.archspec import Header, ModelSpec, build_header
    from kvgui.testing.arch_fixtures import fixtures

    s = next(f.spec for f in fixtures() if f.key == key)
    h = build_header(ModelSpec(s.name, s.arch, s.quant, {**s.hp, **hp}))
    return Header({**h.metadata, **(metadata or {})}, h.tensors)


DENSE_VARIANTS = {
    "mistral3 attention temperature": ("mistral3", {
        "mistral3.attention.temperature_scale": 0.1,
        "mistral3.rope.scaling.original_context_length": 8192}, {}),
    "granite without rope": ("granite", {"granite.rope.scaling.finetuned": False}, {}),
    "command-r 64 layers, q/k norms": ("command-r", {}, {"num_hidden_layers": 64}),
    "cohere2 64 layers (Command A)": ("cohere2", {}, {"num_hidden_layers": 64}),
    "glm4 M-RoPE": ("glm4", {"glm4.rope.dimension_sections": [8, 12, 12, 0]}, {}),
    "exaone4 30 layers, one cache": ("exaone4", {}, {"num_hidden_layers": 30}),
}


@pytest.mark.skipif(os.environ.get("KVGUI_TEST_ALL_FAMILIES") != "1",
                    reason="KVGUI_TEST_ALL_FAMILIES=1 runs the dense builders' variants")
@pytest.mark.parametrize("name", list(DENSE_VARIANTS))
def test_dense_variant_graph_equals_llama_cpp(tmp_path: Path, name: str) -> None:
    pytest.importorskip("gguf")
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    key, metadata, hp = DENSE_VARIANTS[name]
    path = write_sparse_gguf(_dense_variant(key, metadata, **hp), tmp_path / "model.gguf")
    rows = compare(path, MATRIX)
    assert sum(r.llama_compute is not None for r in rows) >= len(MATRIX) - 1
    for r in rows:
        assert r.equal, (f"{name} {r.settings}: llama.cpp {r.llama_compute} B "
                         f"{r.llama_nodes} nodes, kvgui {r.ours} B {r.our_nodes} nodes "
                         f"{r.error}")


# --- fam-hybrid: the hybrid, recurrent and special families over the full matrix -----------
# (test_architectures.py holds each at the byte over its own matrix; this adds -ub 1 / 7 /
# 1024 and -np 4 without flash attention.) One by default, every one with
# KVGUI_TEST_ALL_FAMILIES=1; "gemma4:e2b-like" is Gemma 4 with per-layer token inputs and 20
# layers reading an earlier layer's cache (the shape of E2B / E4B), which no fixture has;
# "nemotron_h_moe:latent" is Nemotron 3 Nano with LatentMoE experts (ffn_latent_down / up
# around experts over a narrower width: the LatentMoE of Nemotron 3 Super; width illustrative).
HYBRID_FAMILIES = ["qwen3next"]
if os.environ.get("KVGUI_TEST_ALL_FAMILIES") == "1":
    HYBRID_FAMILIES = ["qwen3next", "qwen35", "qwen35moe", "falcon-h1", "granitehybrid",
                       "nemotron_h", "nemotron_h_moe", "nemotron_h_moe:latent", "jamba",
                       "mamba", "mamba2", "gemma3n", "gemma4", "gemma4:e2b-like", "rwkv6",
                       "rwkv7"]


def _family_spec(key: str) -> ModelSpec:
    """The BF16 fixture of ``key``; "gemma4:e2b-like" reshapes gemma4's,
    "nemotron_h_moe:latent" gives nemotron_h_moe's a moe_latent_size."""
    from kvgui.testing.arch_fixtures import fixtures

    base, _, variant = key.partition(":")
    fx = next(f for f in fixtures() if f.key == base)
    hp = dict(fx.spec.hp)
    if variant == "e2b-like":
        hp.update({"hidden_size": 1536, "intermediate_size": 6144, "num_hidden_layers": 35,
                   "num_attention_heads": 8, "num_key_value_heads": 1,
                   "num_global_key_value_heads": 1, "attention_k_eq_v": False,
                   "enable_moe_block": False, "num_kv_shared_layers": 20,
                   "hidden_size_per_layer_input": 256, "sliding_window": 512,
                   "layer_types": (["sliding_attention"] * 4 + ["full_attention"]) * 7})
    elif variant == "latent":
        hp["moe_latent_size"] = 1024
    name = f"{fx.spec.name}-{variant}" if variant else fx.spec.name
    return ModelSpec(name, fx.spec.arch, "BF16", hp)


@pytest.mark.parametrize("key", HYBRID_FAMILIES)
def test_hybrid_family_graph_equals_llama_cpp(tmp_path: Path, key: str) -> None:
    pytest.importorskip("gguf")
    from kvgui.core.memory.compute import simulates
    from kvgui.core.model.info import load_model
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    path = write_sparse_gguf(_family_spec(key), tmp_path / "model.gguf")
    assert simulates(load_model(path)), f"{key}: the builder leaves a tensor of the file unread"
    rows = compare(path, MATRIX)
    assert sum(r.llama_compute is not None for r in rows) >= len(MATRIX) - 1
    for r in rows:
        assert r.equal, (f"{key} {r.settings}: llama.cpp {r.llama_compute} B "
                         f"{r.llama_nodes} nodes, kvgui {r.ours} B {r.our_nodes} nodes "
                         f"{r.error}")
