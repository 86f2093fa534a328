"""The built-in catalog: it loads, its figures are plausible and current, its headers
describe as models, and llama.cpp itself accepts every one of them."""

from __future__ import annotations

import os
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pytest

from kvgui.core.model.archspec import build_header
from kvgui.core.model.catalog import find, load_catalog
from kvgui.core.model.info import ModelInfo

# bits per parameter a file of each mix lands in (embeddings and norms pull it around)
# (Q4_K_M up to 6: rows that hold no whole 256-blocks fall back to q5_0 / q8_0, e.g.
# Nemotron-Nano-9B-v2's 4480-wide rows)
_BITS = {"F16": (15.9, 16.1), "Q8_0": (8.4, 8.6), "Q6_K": (6.5, 6.7), "Q4_K_M": (4.5, 6.0),
         "MXFP4_MOE": (4.2, 5.0)}  # gpt-oss-120b: 63.4 GB for 116.8 B parameters

_EXPECTED = {
    "Llama-3.1-8B-Instruct Q4_K_M", "Llama-3.1-8B-Instruct Q8_0", "Llama-3.2-3B-Instruct Q4_K_M",
    "Qwen2.5-7B-Instruct Q4_K_M", "Qwen2.5-32B-Instruct Q4_K_M", "Gemma-2-9B-it Q4_K_M",
    "Gemma-3-12B-it Q4_K_M", "Gemma-3-27B-it Q4_K_M", "Mistral-Nemo-Instruct-2407 Q4_K_M",
    "Qwen3-8B Q4_K_M", "Qwen3-30B-A3B Q4_K_M", "DeepSeek-V2-Lite-Chat Q4_K_M",
    "LFM2-1.2B Q8_0", "Mamba-Codestral-7B-v0.1 Q4_K_M", "gpt-oss-20b MXFP4_MOE",
}


def test_catalog_loads_with_unique_labels_from_a_small_resource() -> None:
    entries = load_catalog()
    labels = [e.label for e in entries]
    assert len(labels) == len(set(labels))
    assert set(labels) >= _EXPECTED
    raw = resources.files("kvgui.resources").joinpath("models.json").read_bytes()
    assert len(raw) < 300_000


def test_stored_figures_match_what_archspec_builds() -> None:
    # models.json is generated (packaging/make_catalog.py); a stale file fails here
    for e in load_catalog():
        h = build_header(e.spec)
        assert (e.n_tensors, e.n_params, e.file_bytes) == \
            (len(h.tensors), h.n_params, h.file_bytes), e.label


def test_every_entry_has_a_plausible_size() -> None:
    for e in load_catalog():
        h = e.build(vocab=False)
        lo, hi = _BITS[e.quant]
        bits = 8 * h.data_bytes / h.n_params
        assert lo < bits < hi, (e.label, bits)
        assert e.file_bytes > h.data_bytes


def test_headers_describe_as_the_models_they_are() -> None:
    info = {e.label: ModelInfo.from_header(*e.header()[:2], file_bytes=e.file_bytes)
            for e in load_catalog()}
    llama = info["Llama-3.1-8B-Instruct Q4_K_M"]
    assert (llama.arch, llama.file_type, llama.n_layer, llama.n_head_kv) == \
        ("llama", "Q4_K_M", 32, 8)
    assert llama.n_params == pytest.approx(8.03e9, rel=1e-3)
    assert llama.file_bytes == pytest.approx(4.92e9, rel=0.01)
    assert info["Gemma-3-27B-it Q4_K_M"].n_vocab == 262144
    assert info["Gemma-3-12B-it Q4_K_M"].n_swa == 1024
    assert info["Gemma-3-12B-it Q4_K_M"].n_swa_layers == 40  # 5 of every 6 of 48
    assert info["Gemma-2-9B-it Q4_K_M"].n_swa_layers == 21  # every other one
    assert info["Gemma-2-9B-it Q4_K_M"].n_embd_head_k == 256
    assert info["Mistral-Nemo-Instruct-2407 Q4_K_M"].n_embd_head_k == 128
    assert info["Qwen3-30B-A3B Q4_K_M"].n_expert == 128
    assert info["DeepSeek-V2-Lite-Chat Q4_K_M"].is_mla
    assert info["LFM2-1.2B Q8_0"].is_hybrid
    mamba = info["Mamba-Codestral-7B-v0.1 Q4_K_M"]
    assert mamba.is_recurrent and not mamba.has_kv_cache
    assert (mamba.n_embd_r, mamba.n_embd_s) == (3 * (8192 + 2 * 8 * 128), 128 * 8192)
    for label, mi in info.items():
        assert mi.n_params == find(label).n_params, label


def test_sparse_file_has_full_apparent_size_but_almost_no_blocks(
        sparse_model: Callable[[str], Path]) -> None:
    entry = find("Qwen2.5-32B-Instruct Q4_K_M")
    path = sparse_model(entry.label)
    st = os.stat(path)
    assert st.st_size == entry.file_bytes > 19e9
    assert st.st_blocks * 512 < 16 * 2**20


@pytest.mark.llama
@pytest.mark.slow
def test_llama_cpp_loads_every_catalog_model_and_creates_a_context(llama_accepts) -> None:
    assert set(llama_accepts) == {e.label for e in load_catalog()}
    for label, r in llama_accepts.items():
        entry = find(label)
        h = entry.build(vocab=False)
        assert r.loaded and r.context, f"{label}: {r.error}"
        assert r.n_params == entry.n_params, label
        assert r.model_size == sum(t.nbytes for t in h.tensors), label
        assert r.n_layer == entry.spec.hp["num_hidden_layers"], label


@pytest.mark.llama
def test_probe_reports_a_file_llama_cpp_rejects(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    from kvgui.testing.llama_probe import probe
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    h = find("LFM2-1.2B Q8_0").build()
    h.metadata.pop("lfm2.shortconv.l_cache")
    bad = write_sparse_gguf(h, tmp_path / "bad.gguf")
    r = probe([bad])[str(bad)]
    assert not r.loaded
    assert "shortconv.l_cache" in r.error
