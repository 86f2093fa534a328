"""The real model extra: Gemma-3-270M Q4_K_M assembled from its PyPI part packages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvgui.testing import real_model as rm


def test_the_assembled_file_is_the_published_one(real_model: Path) -> None:
    from kvgui.core.gguf.reader import read_gguf

    assert real_model.stat().st_size == sum(p.stat().st_size for p in rm.chunk_paths())
    assert rm._sha256(real_model) == rm.SHA256
    g = read_gguf(real_model)
    assert g.metadata["general.architecture"] == "gemma3"
    assert g.metadata["gemma3.block_count"] == 18
    assert rm.real_model_path() == real_model  # the stamp: no second assembly


_GENERATE = """
import json, sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=256, seed=1, verbose=True)
out = llm.create_completion("The capital of France is", max_tokens=8, temperature=0.0)
print(json.dumps({"text": out["choices"][0]["text"], "usage": out["usage"]}))
"""


@pytest.mark.llama
@pytest.mark.slow
def test_llama_cpp_python_generates_from_the_real_model(real_model: Path) -> None:
    pytest.importorskip("llama_cpp")
    # a child process: a crash in llama.cpp's compute must fail this test, not end the session
    r = subprocess.run([sys.executable, "-c", _GENERATE, str(real_model)], capture_output=True,
                       text=True, timeout=300)
    buffers = "\n".join(ln for ln in r.stderr.splitlines() if "buffer size" in ln)
    assert r.returncode == 0, f"llama.cpp exited with {r.returncode}; its buffers:\n{buffers}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["usage"]["prompt_tokens"] > 3 and out["usage"]["completion_tokens"] >= 1
    # real weights continue the sentence on topic (random ones would not)
    assert any(w in out["text"] for w in ("Paris", "France", "capital")), out["text"]


def test_without_the_extra_it_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rm, "PARTS", (("kvgui_no_such_part_package", "x.part00"),))
    with pytest.raises(rm.RealModelUnavailable, match=r"pip install -e '\.\[test,realmodel\]'"):
        rm.real_model_path()
