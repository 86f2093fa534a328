"""Whole-suite settings and fixtures: headless Qt, no test touches the user's real config,
and sparse GGUF files of the catalog models (real headers, a hole where the weights would be),
written once per session: ``sparse_model("Llama-3.1-8B-Instruct Q4_K_M")`` is its path.

The real llama.cpp beyond the bundled library: ``llama_source`` (its source tree, fetched once
into the cache), ``llama_tools`` (llama-fit-params, ggml-rpc-server… built from it by
``python -m kvgui.testing.llama_tools build``) and ``real_model`` (a real Gemma-3-270M GGUF
from the ``realmodel`` extra). Each skips with a one-line reason when it is not there.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["KVGUI_CHECK_KERNELS"] = "0"  # also for module-level and session fixtures


from collections.abc import Callable
from pathlib import Path

import pytest

from kvgui.core.model.catalog import CatalogEntry, find, load_catalog


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("KVGUI_CONFIG_DIR", str(home))
    monkeypatch.setenv("KVGUI_LOG_DIR", str(home / "log"))
    # the figures must not depend on whether this machine's build crashes in its AMX kernels
    # (tests/runtime/test_cpu_kernels.py checks that itself)
    monkeypatch.setenv("KVGUI_CHECK_KERNELS", "0")
    yield


def _file_name(entry: CatalogEntry) -> str:
    return entry.label.replace(" ", "-") + ".gguf"


@pytest.fixture(scope="session")
def sparse_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Path of the sparse GGUF for a catalog label ("<name> <quant>") or name."""
    pytest.importorskip("gguf")
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    folder = tmp_path_factory.mktemp("sparse_gguf")
    written: dict[str, Path] = {}

    def get(label: str) -> Path:
        entry = find(label)
        if entry.label not in written:
            written[entry.label] = write_sparse_gguf(entry, folder / _file_name(entry))
        return written[entry.label]

    return get


@pytest.fixture(scope="session")
def sparse_catalog(sparse_model: Callable[[str], Path]) -> dict[str, Path]:
    """Every catalog entry written out: label -> path."""
    return {e.label: sparse_model(e.label) for e in load_catalog()}


@pytest.fixture(scope="session")
def llama_accepts(sparse_catalog: dict[str, Path]):  # -> dict[str, ProbeResult]
    """What llama.cpp made of each catalog file: label -> ProbeResult."""
    pytest.importorskip("llama_cpp")
    from kvgui.testing.llama_probe import probe

    results = probe(list(sparse_catalog.values()))
    return {label: results[str(path)] for label, path in sparse_catalog.items()}


@pytest.fixture(scope="session")
def llama_source() -> Path:
    """vendor/llama.cpp of the installed llama-cpp-python's sdist (downloaded once, cached)."""
    from kvgui.testing.llama_tools import SourceUnavailable, ToolsError, llama_cpp_source

    try:
        return llama_cpp_source()
    except SourceUnavailable as e:
        pytest.skip(f"bundled llama.cpp source unavailable: {e}")
    except ToolsError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def llama_tools():  # -> kvgui.testing.llama_tools.LlamaTools
    """llama.cpp's tools built from the bundled source for this machine."""
    from kvgui.testing.llama_tools import find_tools

    tools = find_tools()
    if tools is None:
        pytest.skip("llama.cpp tools not built; how to build: "
                    "python -m kvgui.testing.llama_tools build")
    return tools


@pytest.fixture(scope="session")
def real_model() -> Path:
    """A real GGUF (Gemma-3-270M Q4_K_M, 253 MB) from the realmodel extra, checksum-verified."""
    from kvgui.testing.real_model import INSTALL_HINT, RealModelUnavailable, real_model_path

    try:
        return real_model_path()
    except RealModelUnavailable:
        pytest.skip(f"real model not installed: {INSTALL_HINT}")


@pytest.fixture
def no_leftover_children():
    """Fails the test if it leaves a child process behind (reaped zombies aside; a child
    that is ending gets 5 s)."""
    psutil = pytest.importorskip("psutil")
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    yield
    deadline = time.monotonic() + 5
    while True:
        left = []
        for p in me.children(recursive=True):
            try:
                if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
            except psutil.NoSuchProcess:
                continue
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"leftover processes: {[(p.pid, p.cmdline()[:3]) for p in left]}"
