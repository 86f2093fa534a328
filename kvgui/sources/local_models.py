"""The GGUF models already on this machine, wherever the usual tools put them.

- the Hub cache (huggingface_hub, and llama.cpp's ``-hf`` at the bundled commit, which uses the
  same layout: common/hf-cache.cpp) -- opened as ``hf:repo:TAG`` so an export says ``-hf``
- llama.cpp's own cache (``LLAMA_CACHE``, else ``~/.cache/llama.cpp``, ``~/Library/Caches/
  llama.cpp`` on macOS, ``%LOCALAPPDATA%\\llama.cpp`` on Windows: common.cpp
  fs_get_cache_directory): URL downloads, docker models and older ``-hf`` downloads as plain
  files; with ``LLAMA_CACHE`` set, also its Hub-layout repos
- LM Studio's models folder (``~/.lmstudio/models``, older ``~/.cache/lm-studio/models``):
  ``publisher/repo/file.gguf``
- ollama (``OLLAMA_MODELS``, else ``~/.ollama/models``, or the Linux service's
  ``/usr/share/ollama/.ollama/models``): blobs named by digest; the manifests name them
- the window's recent files

Every entry's header is read (never the weights), for its name, quant and size; a file that is
not a readable GGUF is left out with a log line.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kvgui.core.gguf.reader import GGUFError
from kvgui.core.model.info import load_model
from kvgui.sources.hub import hub_cache_dir
from kvgui.sources.quants import is_model_file, split_info

log = logging.getLogger(__name__)

HUB_CACHE, LLAMA_CPP, LM_STUDIO, OLLAMA, RECENT = (
    "Hub cache", "llama.cpp cache", "LM Studio", "ollama", "recent")
_OLLAMA_MODEL = "application/vnd.ollama.image.model"


@dataclass(frozen=True)
class LocalModel:
    name: str  # what the tool calls it: repo, ollama name:tag, publisher/repo/file
    quant: str
    size: int  # all parts
    path: Path  # the first part
    origin: str  # one of the constants above
    ref: str  # what to open: "hf:repo:TAG" for the Hub cache, else the path
    arch: str = ""


def llama_cpp_cache_dir() -> Path:
    env = os.environ
    if env.get("LLAMA_CACHE"):
        return Path(env["LLAMA_CACHE"])
    if sys.platform == "win32":
        return Path(env.get("LOCALAPPDATA", Path.home() / "AppData" / "Local")) / "llama.cpp"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "llama.cpp"
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llama.cpp"


def lm_studio_dirs() -> list[Path]:
    home = Path.home()
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def ollama_dirs() -> list[Path]:
    if os.environ.get("OLLAMA_MODELS"):
        return [Path(os.environ["OLLAMA_MODELS"])]
    return [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


# --- finding files ------------------------------------------------------------------------
@dataclass(frozen=True)
class _Found:
    path: Path
    origin: str
    name: str
    ref: str


def _hub_repos(root: Path, origin: str) -> Iterator[_Found]:
    """Model files of every repo in a Hub-layout cache (each repo's newest snapshot per ref)."""
    if not root.is_dir():
        return
    for repo_dir in sorted(root.glob("models--*")):
        repo = repo_dir.name[len("models--"):].replace("--", "/", 1)
        snaps = repo_dir / "snapshots"
        if not snaps.is_dir():
            continue
        seen: set[Path] = set()
        for snap in sorted(snaps.iterdir()):
            for f in sorted(snap.rglob("*.gguf")):
                rel = f.relative_to(snap).as_posix()
                info = split_info(rel)
                if not is_model_file(rel) or info is None or (info.count > 1 and info.index != 1):
                    continue
                try:
                    real = f.resolve(strict=True)
                except OSError:
                    continue  # a dangling link: the blob is gone
                if real in seen:
                    continue
                seen.add(real)
                ref = f"hf:{repo}:{info.tag}" if info.tag else str(f)
                yield _Found(f, origin, repo, ref)


def _plain_files(root: Path, origin: str, depth: int) -> Iterator[_Found]:
    if not root.is_dir():
        return
    pattern = "/".join(["*"] * depth) + ".gguf" if depth > 1 else "*.gguf"
    for f in sorted(root.glob(pattern)):
        rel = f.relative_to(root).as_posix()
        info = split_info(rel)
        if f.is_file() and is_model_file(rel) and info is not None and \
                not (info.count > 1 and info.index != 1):
            name = rel[: -len(".gguf")] if depth == 1 else rel.rsplit("/", 1)[0]
            yield _Found(f, origin, name, str(f))


def _ollama(root: Path) -> Iterator[_Found]:
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for m in sorted(manifests.rglob("*")):
        if not m.is_file():
            continue
        try:
            data = json.loads(m.read_text(encoding="utf-8"))
            layer = next(la for la in data.get("layers", [])
                         if la.get("mediaType") == _OLLAMA_MODEL)
            digest = str(layer["digest"])
        except (OSError, ValueError, StopIteration, KeyError, TypeError, AttributeError) as exc:
            log.info("skipping ollama manifest %s: %s", m, exc)
            continue
        blob = root / "blobs" / digest.replace(":", "-")
        if blob.is_file():
            yield _Found(blob, OLLAMA, _ollama_name(m.relative_to(manifests)), str(blob))


def _ollama_name(rel: Path) -> str:
    """registry.ollama.ai/library/llama3.2/3b -> llama3.2:3b; hf.co/org/repo/Q4_K_M ->
    hf.co/org/repo:Q4_K_M (as ``ollama list`` shows them)."""
    parts = list(rel.parts)
    host, *path, tag = parts
    if host == "registry.ollama.ai":
        if path and path[0] == "library":
            path = path[1:]
        return f"{'/'.join(path)}:{tag}"
    return f"{host}/{'/'.join(path)}:{tag}"


def _found_everywhere(recent: Iterable[str]) -> Iterator[_Found]:
    hub = hub_cache_dir()
    yield from _hub_repos(hub, HUB_CACHE)
    llama = llama_cpp_cache_dir()
    if llama.resolve() != hub.resolve():
        yield from _hub_repos(llama, LLAMA_CPP)
    yield from _plain_files(llama, LLAMA_CPP, 1)
    for d in lm_studio_dirs():
        yield from _plain_files(d, LM_STUDIO, 3)
    for d in ollama_dirs():
        yield from _ollama(d)
    for p in recent:
        path = Path(p)
        if path.is_file():
            yield _Found(path, RECENT, path.name, str(path))


def find_local_models(recent: Iterable[str] = ()) -> list[LocalModel]:
    """Every readable GGUF model in the places above, each file once (first place wins)."""
    out: list[LocalModel] = []
    seen: set[Path] = set()
    for f in _found_everywhere(recent):
        try:
            real = f.path.resolve()
        except OSError:
            continue
        if real in seen:
            continue
        seen.add(real)
        try:
            info = load_model(f.path)
        except (GGUFError, OSError, MemoryError) as exc:
            log.info("skipping %s: %s", f.path, exc)
            continue
        out.append(LocalModel(f.name, info.file_type, info.file_bytes, f.path, f.origin, f.ref,
                              info.arch))
    return out
