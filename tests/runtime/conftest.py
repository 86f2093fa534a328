"""Real models for the runtime tests, written once per session (no downloads).

``tiny_model_path``: a 2-layer llama that llama.cpp loads and generates from in milliseconds.
``tiny_swa_model_path``: a 4-layer gemma2 with a 128-token sliding window (iSWA cache).
``sparse_8b_path``: Llama-3-8B shapes in Q4_0 with a hole for weights (dry runs only).
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf")
    from kvgui.testing.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def tiny_swa_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf")
    from kvgui.testing.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-gemma2.gguf",
                            arch="gemma2", n_layer=4, n_swa=128)


@pytest.fixture(scope="session")
def sparse_8b_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf")
    from kvgui.testing.tiny_model import write_sparse_model

    return write_sparse_model(tmp_path_factory.mktemp("sparse") / "llama-8b-q4_0.gguf")
