"""archspec: tensor tables and metadata as llama.cpp expects them, quant mixes as
llama-quantize makes them, header sizes as GGUFWriter writes them."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from kvgui.core.gguf import ggml_types
from kvgui.core.gguf.reader import read_gguf
from kvgui.core.model.archspec import (
    FILE_TYPES,
    Header,
    ModelSpec,
    TensorDef,
    build_header,
    header_bytes,
    synthetic_vocab,
    value_kind,
)
from kvgui.core.model.catalog import find


def _types(h: Header, pattern: str = "") -> Counter[str]:
    return Counter(ggml_types.by_id(t.type_id).name for t in h.tensors if pattern in t.name)


def _tensor(h: Header, name: str) -> TensorDef:
    return next(t for t in h.tensors if t.name == name)


def _spec(label: str, quant: str | None = None) -> ModelSpec:
    s = find(label).spec
    return ModelSpec(s.name, s.arch, quant or s.quant, s.hp)


# --- figures of real published files -------------------------------------------------------

def test_llama31_8b_q4_k_m_matches_the_published_file() -> None:
    h = build_header(_spec("Llama-3.1-8B-Instruct Q4_K_M"), vocab=False)
    # HF safetensors count 8,030,261,248 + the 64-entry rope_freqs table convert adds
    assert h.n_params == 8_030_261_248 + 64
    # llama.cpp's load log for Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf
    assert _types(h) == {"f32": 66, "q4_k": 193, "q6_k": 33}
    assert len(h.tensors) == 292
    # published file is 4.92 GB; only its real tokenizer (merges, long tokens) is bigger
    full = build_header(_spec("Llama-3.1-8B-Instruct Q4_K_M"))
    assert abs(full.file_bytes - 4.92e9) / 4.92e9 < 0.01


def test_q4_k_m_gives_attn_v_and_ffn_down_more_bits_on_the_use_more_bits_layers() -> None:
    h = build_header(_spec("Llama-3.1-8B-Instruct Q4_K_M"), vocab=False)
    q6 = [i for i in range(32) if _tensor(h, f"blk.{i}.ffn_down.weight").type_id == 14]
    assert q6 == [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]
    assert [i for i in range(32) if _tensor(h, f"blk.{i}.attn_v.weight").type_id == 14] == q6
    assert _tensor(h, "token_embd.weight").type_id == 12  # q4_k: not tied
    assert _tensor(h, "output.weight").type_id == 14  # q6_k


def test_tied_embeddings_take_the_output_type() -> None:
    h = build_header(_spec("Llama-3.2-3B-Instruct Q4_K_M"), vocab=False)
    assert "output.weight" not in {t.name for t in h.tensors}
    assert _tensor(h, "token_embd.weight").type_id == 14  # q6_k, like output would be


def test_rows_that_do_not_hold_whole_blocks_fall_back_like_llama_quant() -> None:
    h = build_header(_spec("DeepSeek-V2-Lite-Chat Q4_K_M"), vocab=False)
    # attn_k_b rows are 128 wide: q4_k (256-blocks) -> q5_0
    assert _tensor(h, "blk.1.attn_k_b.weight").type_id == 6
    # ffn_down_exps rows are 1408 wide: q4_k -> q5_0, and q6_k -> q8_0 on use_more_bits layers
    assert _tensor(h, "blk.4.ffn_down_exps.weight").type_id == 6
    assert _tensor(h, "blk.1.ffn_down_exps.weight").type_id == 8
    assert _tensor(h, "blk.1.ffn_gate_inp.weight").type_id == 0  # routers stay f32


def test_f16_and_q8_0_mixes() -> None:
    h = build_header(_spec("Llama-3.2-3B-Instruct", "F16"), vocab=False)
    assert set(_types(h)) == {"f32", "f16"}
    assert all(t.type_id == 0 for t in h.tensors if len(t.shape) == 1)
    assert h.metadata["general.file_type"] == 1
    assert "general.quantization_version" not in h.metadata
    q8 = build_header(_spec("Llama-3.1-8B-Instruct Q8_0"), vocab=False)
    assert set(_types(q8)) == {"f32", "q8_0"}
    assert q8.metadata["general.file_type"] == 7


def test_mxfp4_moe_quantizes_experts_only() -> None:
    h = build_header(_spec("gpt-oss-20b"), vocab=False)
    assert set(_types(h, "_exps.weight")) == {"mxfp4"}
    assert _tensor(h, "blk.0.attn_q.weight").type_id == 8
    assert _tensor(h, "output.weight").type_id == 8
    assert _types(h, "bias") == {"f32": 24 * 8}
    assert _tensor(h, "blk.3.attn_sinks.weight").shape == (64,)
    assert 20.8e9 < h.n_params < 21.0e9


# --- shapes llama.cpp checks ---------------------------------------------------------------

def test_head_dim_that_is_not_embd_over_heads() -> None:
    nemo = build_header(_spec("Mistral-Nemo-Instruct-2407"), vocab=False)
    assert nemo.metadata["llama.attention.key_length"] == 128  # 5120 / 32 would be 160
    assert nemo.metadata["llama.rope.dimension_count"] == 128
    assert _tensor(nemo, "blk.0.attn_q.weight").shape == (5120, 4096)
    assert _tensor(nemo, "blk.0.attn_output.weight").shape == (4096, 5120)
    gemma = build_header(_spec("Gemma-2-9B-it"), vocab=False)
    assert _tensor(gemma, "blk.0.attn_q.weight").shape == (3584, 16 * 256)
    assert gemma.metadata["gemma2.attn_logit_softcapping"] == 50.0
    assert gemma.metadata["gemma2.attention.sliding_window"] == 4096


def test_qwen2_has_qkv_biases_in_f32() -> None:
    h = build_header(_spec("Qwen2.5-7B-Instruct"), vocab=False)
    assert _tensor(h, "blk.0.attn_q.bias").shape == (3584,)
    assert _tensor(h, "blk.0.attn_k.bias").shape == (512,)
    assert _types(h, ".bias") == {"f32": 28 * 3}


def test_mla_and_moe_layout() -> None:
    h = build_header(_spec("DeepSeek-V2-Lite-Chat"), vocab=False)
    md = h.metadata
    assert (md["deepseek2.attention.key_length"], md["deepseek2.attention.value_length"]) \
        == (576, 512)
    assert md["deepseek2.attention.head_count_kv"] == 1
    assert _tensor(h, "blk.0.ffn_down.weight").shape == (10944, 2048)  # dense first layer
    assert _tensor(h, "blk.1.ffn_down_exps.weight").shape == (1408, 2048, 64)
    assert _tensor(h, "blk.1.ffn_up_shexp.weight").shape == (2048, 2816)
    moe = build_header(_spec("Qwen3-30B-A3B"), vocab=False)
    assert _tensor(moe, "blk.47.ffn_gate_exps.weight").shape == (2048, 768, 128)
    assert moe.metadata["qwen3moe.expert_used_count"] == 8


def test_hybrid_lfm2_marks_conv_layers_with_zero_kv_heads() -> None:
    h = build_header(_spec("LFM2-1.2B"), vocab=False)
    kv = h.metadata["lfm2.attention.head_count_kv"]
    assert [i for i, n in enumerate(kv) if n] == [2, 5, 8, 10, 12, 14]
    assert _tensor(h, "blk.0.shortconv.conv.weight").type_id == 0  # never quantized
    assert "blk.0.attn_q.weight" not in {t.name for t in h.tensors}
    assert _tensor(h, "token_embd_norm.weight").shape == (2048,)


def test_unknown_arch_or_quant_is_a_value_error() -> None:
    hp = find("Qwen3-8B").spec.hp
    with pytest.raises(ValueError, match="architecture"):
        build_header(ModelSpec("x", "nosucharch", "Q8_0", hp))
    with pytest.raises(ValueError, match="quantization"):
        build_header(ModelSpec("x", "qwen3", "Q3_K_XL", hp))
    assert set(FILE_TYPES) >= {"F16", "Q8_0", "Q4_K_M", "Q6_K"}


# --- metadata encoding ---------------------------------------------------------------------

def test_value_kinds_are_the_types_llama_cpp_reads() -> None:
    assert value_kind(True) == "bool"
    assert value_kind(32) == "uint32"
    assert value_kind(1e-5) == "float32"
    assert value_kind([0, 8]) == "array:int32"
    assert value_kind(["a"]) == "array:string"
    with pytest.raises(ValueError):
        value_kind(-1)
    with pytest.raises(ValueError):
        value_kind([])


def test_synthetic_vocab_is_spm_with_unique_tokens_and_byte_tokens() -> None:
    v = synthetic_vocab(1000)
    toks = v["tokenizer.ggml.tokens"]
    assert len(toks) == len(set(toks)) == 1000
    assert toks[3 + 0x0A] == "<0x0A>"  # the newline byte llama.cpp looks up
    assert len(v["tokenizer.ggml.scores"]) == len(v["tokenizer.ggml.token_type"]) == 1000
    with pytest.raises(ValueError):
        synthetic_vocab(100)


def test_bulk_packing_writes_the_same_bytes_as_the_stock_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gguf = pytest.importorskip("gguf")
    from kvgui.testing import sparse_gguf

    entry = find("LFM2-1.2B Q8_0")
    fast = sparse_gguf.write_sparse_gguf(entry, tmp_path / "fast.gguf")
    monkeypatch.setattr(sparse_gguf._Writer, "_pack_val", gguf.GGUFWriter._pack_val)
    stock = sparse_gguf.write_sparse_gguf(entry, tmp_path / "stock.gguf")
    n = entry.build().data_offset
    with fast.open("rb") as a, stock.open("rb") as b:
        assert a.read(n) == b.read(n)


def test_written_header_round_trips_and_has_the_computed_size(
        sparse_model: Callable[[str], Path]) -> None:
    path = sparse_model("Gemma-3-27B-it Q4_K_M")
    h = find("Gemma-3-27B-it Q4_K_M").build()
    g = read_gguf(path)
    assert g.file_bytes == os.path.getsize(path) == h.file_bytes
    assert [(t.name, t.shape, t.type_id, t.nbytes) for t in g.tensors] == \
        [(t.name, t.shape, t.type_id, t.nbytes) for t in h.tensors]
    assert [t.offset for t in g.tensors] == h.offsets()
    for key, value in h.metadata.items():
        got = g.metadata[key]
        if isinstance(value, float):
            assert got == pytest.approx(value, rel=1e-6), key  # stored as float32
        elif isinstance(value, (list, tuple)):  # the synthetic vocab is shared tuples
            assert list(got) == list(value), key
        else:
            assert got == value, key
    assert len(g.metadata["tokenizer.ggml.tokens"]) == 262144
    assert header_bytes(h.metadata, h.tensors) <= h.data_offset < h.file_bytes
