"""The tiny test models: real GGUF files llama.cpp loads and generates from in milliseconds."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvgui.testing.tiny_model import CHATML_TEMPLATE, write_sparse_model, write_tiny_model


@pytest.mark.llama
@pytest.mark.parametrize("which", ["llama", "gemma2"])
def test_llama_cpp_loads_and_generates(which: str, tiny_model_path: Path,
                                       tiny_swa_model_path: Path) -> None:
    llama_cpp = pytest.importorskip("llama_cpp")
    path = tiny_model_path if which == "llama" else tiny_swa_model_path
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, verbose=False, seed=1)
    out = llm.create_completion("hello world", max_tokens=8, temperature=0.0)
    assert time.perf_counter() - t0 < 2.0
    assert out["usage"]["prompt_tokens"] > 1 and out["usage"]["completion_tokens"] >= 1
    assert llm.metadata["tokenizer.chat_template"] == CHATML_TEMPLATE
    chat = llm.create_chat_completion(messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    # "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n": more than the 2 words
    assert chat["usage"]["prompt_tokens"] > 8
    text = "héllo, world 🦙 the model"
    tokens = llm.tokenize(text.encode(), add_bos=False)
    assert llm.detokenize(tokens).decode() == " " + text  # SPM's space prefix, bytes for the rest
    assert any(t < 261 for t in tokens) and any(t > 261 for t in tokens)  # byte and word tokens
    assert llm.n_vocab() == 640
    llm.close()


def test_swa_model_metadata(tiny_swa_model_path: Path) -> None:
    gguf = pytest.importorskip("gguf")
    r = gguf.GGUFReader(tiny_swa_model_path)
    fields = {f.name: f.contents() for f in r.fields.values()}
    assert fields["general.architecture"] == "gemma2"
    assert fields["gemma2.attention.sliding_window"] == 128
    assert fields["gemma2.attention.key_length"] % 32 == 0  # quantized caches allowed


def test_bad_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        write_tiny_model(tmp_path / "a.gguf", n_embd=48, n_head=2)
    with pytest.raises(ValueError, match="sliding-window"):
        write_tiny_model(tmp_path / "b.gguf", n_swa=64)
    with pytest.raises(ValueError, match="n_swa"):
        write_tiny_model(tmp_path / "c.gguf", arch="gemma2")
    with pytest.raises(ValueError, match="n_vocab"):
        write_tiny_model(tmp_path / "d.gguf", n_vocab=100)


def test_sparse_model_claims_its_size_without_using_it(sparse_8b_path: Path) -> None:
    from kvgui.core.gguf.reader import read_gguf

    st = sparse_8b_path.stat()
    assert st.st_size > 4 * 1024**3
    if hasattr(st, "st_blocks"):
        assert st.st_blocks * 512 < 64 * 1024**2  # a hole, not 4 GiB of zeros
    g = read_gguf(sparse_8b_path)
    names = {t.name: t for t in g.tensors}
    assert len(names) == 3 + 32 * 9
    k = names["blk.0.attn_k.weight"]
    assert (k.type_id, k.shape) == (2, (4096, 1024))  # Q4_0, ggml order {n_in, n_out}
    assert len(g.metadata["tokenizer.ggml.tokens"]) == 128256
    assert sum(t.nbytes for t in g.tensors) < st.st_size


def test_sparse_model_dtypes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        write_sparse_model(tmp_path / "x.gguf", dtype="q3_k")
