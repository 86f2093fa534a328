"""The repos the tests' fake Hub serves: header-faithful sparse GGUFs of catalog models.

Shared by tests/sources and benchmarks/bench_remote_header.py, so both measure the same files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from kvgui.core.model.catalog import find
from kvgui.testing.fake_hub import FakeHub

LLAMA = "kvgui-test/Llama-3.1-8B-Instruct-GGUF"
GEMMA = "kvgui-test/gemma-3-12b-it-GGUF"
QWEN_SPLIT = "kvgui-test/Qwen3-8B-GGUF"
TINY = "kvgui-test/tiny-GGUF"
PRIVATE = "kvgui-test/private-GGUF"
GATED = "kvgui-test/gated-GGUF"
TOKEN = "hf_" + "k" * 34


def stand_in_sha(label: str) -> str:
    """A sha256 for a multi-GB sparse file whose header alone is read (never downloaded)."""
    return hashlib.sha256(label.encode()).hexdigest()


def write_files(folder: Path, sparse_model: Callable[[str], Path]) -> dict[str, Path]:
    """The files behind the repos; ``sparse_model(label)`` gives a catalog model's sparse file."""
    from kvgui.testing.sparse_gguf import write_sparse_split
    from kvgui.testing.tiny_model import write_tiny_model

    split = write_sparse_split(find("Qwen3-8B Q6_K"), folder, "Qwen3-8B-Q6_K", 3)
    tiny = write_tiny_model(folder / "tiny-F16.gguf", n_layer=4, n_embd=512, n_ff=1024,
                            n_vocab=2048, dtype="f16")
    projector = write_tiny_model(folder / "mmproj-tiny-F16.gguf")
    readme = folder / "README.md"
    readme.write_text("# a model card\n")
    return {
        "llama_q4": sparse_model("Llama-3.1-8B-Instruct Q4_K_M"),
        "llama_q8": sparse_model("Llama-3.1-8B-Instruct Q8_0"),
        "gemma_q4": sparse_model("Gemma-3-12B-it Q4_K_M"),
        "qwen_q4": sparse_model("Qwen3-8B Q4_K_M"),
        **{f"qwen_q6_{i + 1}": p for i, p in enumerate(split)},
        "tiny": tiny, "mmproj": projector, "readme": readme,
    }


def populate(hub: FakeHub, f: dict[str, Path]) -> None:
    hub.add_repo(LLAMA, downloads=300)
    hub.add_file(LLAMA, "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf", f["llama_q4"],
                 sha256=stand_in_sha("llama_q4"))
    hub.add_file(LLAMA, "Meta-Llama-3.1-8B-Instruct-Q8_0.gguf", f["llama_q8"],
                 sha256=stand_in_sha("llama_q8"))
    hub.add_file(LLAMA, "README.md", f["readme"])
    hub.add_repo(GEMMA, downloads=200)
    hub.add_file(GEMMA, "gemma-3-12b-it-Q4_K_M.gguf", f["gemma_q4"],
                 sha256=stand_in_sha("gemma_q4"))
    hub.add_file(GEMMA, "mmproj-model-f16.gguf", f["mmproj"])
    hub.add_repo(QWEN_SPLIT, downloads=100)
    hub.add_file(QWEN_SPLIT, "Qwen3-8B-Q4_K_M.gguf", f["qwen_q4"],
                 sha256=stand_in_sha("qwen_q4"))
    for i in (1, 2, 3):
        hub.add_file(QWEN_SPLIT, f"Q6_K/Qwen3-8B-Q6_K-0000{i}-of-00003.gguf",
                     f[f"qwen_q6_{i}"], sha256=stand_in_sha(f"qwen_q6_{i}"))
    hub.add_file(TINY, "tiny-F16.gguf", f["tiny"])
    hub.add_repo(PRIVATE, private=True, token=TOKEN)
    hub.add_file(PRIVATE, "tiny-F16.gguf", f["tiny"])
    hub.add_repo(GATED, gated=True, token=TOKEN)
    hub.add_file(GATED, "tiny-F16.gguf", f["tiny"])
