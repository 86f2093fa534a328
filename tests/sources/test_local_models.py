"""Models on this machine: fake homes holding real (sparse) GGUFs in each tool's layout."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from kvgui.core.model.catalog import find
from kvgui.sources import local_models as lm
from kvgui.sources.resolve import open_reference
from kvgui.testing.tiny_model import write_tiny_model

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_repo(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """A repo as hf_hub_download / llama.cpp's -hf leave it: blobs, snapshot links, refs/main."""
    base = cache / ("models--" + repo.replace("/", "--"))
    (base / "blobs").mkdir(parents=True)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(COMMIT)
    for rel, src in files.items():
        sha = hashlib.sha256(rel.encode()).hexdigest()
        blob = base / "blobs" / sha
        os.link(src, blob)
        link = base / "snapshots" / COMMIT / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)


def _ollama_manifest(root: Path, name: str, blob: Path) -> str:
    with open(blob, "rb") as f:
        data = f.read(4096)
    digest = "sha256:" + hashlib.sha256(data + name.encode()).hexdigest()
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    os.link(blob, blobs / digest.replace(":", "-"))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": "sha256:" + "c" * 64, "size": 485},
        "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": digest,
             "size": (blobs / digest.replace(":", "-")).stat().st_size},
            {"mediaType": "application/vnd.ollama.image.template",
             "digest": "sha256:" + "d" * 64, "size": 1429},
        ],
    }
    path = root / "manifests" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return digest


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def _copy(src: Path, dest: Path) -> Path:
    os.link(src, dest)
    return dest


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            sparse_model: Callable[[str], Path], tiny: Path) -> dict[str, Path]:
    """A home with each tool's folders; the sparse files are hard links (no copy, no cost)."""
    home = tmp_path / "home"
    home.mkdir()
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME",
                "LLAMA_CACHE", "OLLAMA_MODELS", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KVGUI_CACHE_DIR", str(tmp_path / "kvgui-cache"))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    hub = home / ".cache" / "huggingface" / "hub"
    _hub_repo(hub, "LiquidAI/LFM2-1.2B-GGUF", {
        "LFM2-1.2B-Q8_0.gguf": sparse_model("LFM2-1.2B Q8_0"),
        "mmproj-LFM2-F16.gguf": tiny,
    })
    llama = home / ".cache" / "llama.cpp"
    llama.mkdir(parents=True)
    os.link(sparse_model("Llama-3.2-3B-Instruct Q4_K_M"),
            llama / "bartowski_Llama-3.2-3B-Instruct-GGUF_Llama-3.2-3B-Instruct-Q4_K_M.gguf")
    (llama / "notes.gguf").write_text("not a model\n")
    studio = home / ".lmstudio" / "models" / "lmstudio-community" / "Qwen3-8B-GGUF"
    studio.mkdir(parents=True)
    os.link(sparse_model("Qwen3-8B Q6_K"), studio / "Qwen3-8B-Q6_K.gguf")
    ollama = home / ".ollama" / "models"
    _ollama_manifest(ollama, "registry.ollama.ai/library/mamba-codestral/7b",
                     sparse_model("Mamba-Codestral-7B-v0.1 Q4_K_M"))
    _ollama_manifest(ollama, "hf.co/unsloth/tiny-GGUF/Q8_0",
                     tiny)
    gone = ollama / "manifests" / "registry.ollama.ai" / "library" / "gone" / "latest"
    gone.parent.mkdir(parents=True)
    gone.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.model",
                                            "digest": "sha256:" + "e" * 64, "size": 1}]}))
    (tmp_path / "elsewhere").mkdir()
    recent = _copy(tiny, tmp_path / "elsewhere" / "mine.gguf")
    return {"home": home, "hub": hub, "recent": recent}


def test_finds_every_tools_models_with_name_quant_and_size(machine: dict[str, Path]) -> None:
    found = lm.find_local_models([str(machine["recent"]), "/nonexistent/x.gguf"])
    rows = {(m.origin, m.name): m for m in found}
    assert set(rows) == {
        (lm.HUB_CACHE, "LiquidAI/LFM2-1.2B-GGUF"),
        (lm.LLAMA_CPP, "bartowski_Llama-3.2-3B-Instruct-GGUF_Llama-3.2-3B-Instruct-Q4_K_M"),
        (lm.LM_STUDIO, "lmstudio-community/Qwen3-8B-GGUF"),
        (lm.OLLAMA, "mamba-codestral:7b"),
        (lm.OLLAMA, "hf.co/unsloth/tiny-GGUF:Q8_0"),
        (lm.RECENT, "mine.gguf"),
    }
    hub = rows[(lm.HUB_CACHE, "LiquidAI/LFM2-1.2B-GGUF")]
    assert hub.quant == "Q8_0" and hub.ref == "hf:LiquidAI/LFM2-1.2B-GGUF:Q8_0"
    assert hub.size == find("LFM2-1.2B Q8_0").file_bytes
    assert rows[(lm.LM_STUDIO, "lmstudio-community/Qwen3-8B-GGUF")].quant == "Q6_K"
    mamba = rows[(lm.OLLAMA, "mamba-codestral:7b")]
    assert mamba.quant == "Q4_K_M" and mamba.arch == "mamba2"
    assert mamba.path.name.startswith("sha256-") and mamba.ref == str(mamba.path)


def test_llama_cache_env_and_hub_layout_inside_it(machine: dict[str, Path], tmp_path: Path,
                                                  tiny: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "llama-cache"
    monkeypatch.setenv("LLAMA_CACHE", str(cache))  # llama.cpp then keeps -hf repos here too
    _hub_repo(cache, "org/tiny-GGUF", {"tiny-F32.gguf": tiny})
    names = {(m.origin, m.name) for m in lm.find_local_models()}
    assert (lm.LLAMA_CPP, "org/tiny-GGUF") in names
    assert not any(n.startswith("bartowski_") for _, n in names)  # the default dir is not used


def test_a_hub_cache_model_opens_offline_as_its_hf_reference(
        machine: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (hub,) = [m for m in lm.find_local_models() if m.origin == lm.HUB_CACHE]
    opened = open_reference(hub.ref)
    assert opened.local_path is not None and Path(opened.local_path).samefile(hub.path)
    assert opened.hf_args == ["-hf", "LiquidAI/LFM2-1.2B-GGUF:Q8_0"]
    assert opened.info.arch == "lfm2"
