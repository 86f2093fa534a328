"""What the CUDA check carries to the device machine, prepared here (``prepare``).

The device machine reaches no network, and one call carries at most 64 MiB. So the run takes:

- ``llama-src.tar.xz``: the bundled llama.cpp (llama-cpp-python's ``vendor/llama.cpp``) less
  what a build of ggml (CPU + CUDA), libllama and llama-fit-params never reads: the model
  vocabularies, docs, tests, examples, gguf-py, the web UI and server, and every other GPU
  backend. ~4 MB.
- ``site/``: llama-cpp-python's Python part (its ctypes bindings; the CPU libraries it ships are
  left out: the run puts the CUDA build's libraries in their place), diskcache (which its
  package imports), gguf (kvgui's sparse GGUF writer) and platformdirs: the device's Python
  has none of them (its numpy, psutil, pyyaml, jinja2 and nvidia-ml-py serve).
- ``models/<name>.header``: the header bytes of a real GGUF (Gemma-3-270M Q4_K_M from the
  ``realmodel`` extra): the model itself (253 MB) cannot travel, so the run writes its real
  header and leaves the data region a hole. llama.cpp's allocations depend on the header only;
  the weights it reads are zeros.

Everything goes into ``.gpucheck/`` at the repository root (ignored by git, named in ``carry``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

CARRY_DIR = ".gpucheck"
SOURCE_TAR = "llama-src.tar.xz"
SITE_DIR = "site"
MODELS_DIR = "models"
MANIFEST = "manifest.json"
#: pure-Python packages the run imports that the device's python3 lacks
SITE_PACKAGES = ("llama_cpp", "diskcache", "gguf", "platformdirs")
CARRY_LIMIT = 64 << 20  # the device tool's limit on everything that travels in one call

#: top-level paths of vendor/llama.cpp (or prefixes) the subset leaves out. Each is read by no
#: step of the build (LLAMA_BUILD_TESTS/EXAMPLES/SERVER/APP off, GGML_CUDA on, no other GPU
#: backend); ggml/src/CMakeLists.txt adds a backend's folder only when it is enabled.
EXCLUDED = (
    "models", "docs", "media", "benches", "tests", "examples", "pocs", "app", "scripts", "ci",
    ".github", ".devops", "conversion", "skills", "requirements", "grammars", "licenses",
    "gguf-py",
    "tools/ui", "tools/server", "tools/cli",
    "ggml/src/ggml-vulkan", "ggml/src/ggml-sycl", "ggml/src/ggml-metal", "ggml/src/ggml-opencl",
    "ggml/src/ggml-cann", "ggml/src/ggml-hexagon", "ggml/src/ggml-webgpu", "ggml/src/ggml-zdnn",
    "ggml/src/ggml-zendnn", "ggml/src/ggml-openvino", "ggml/src/ggml-virtgpu", "ggml/src/ggml-et",
    "ggml/src/ggml-hip", "ggml/src/ggml-musa", "ggml/src/ggml-blas", "ggml/src/ggml-rpc",
)
_EXCLUDED_SUFFIXES = (".pyc",)
#: files that must be in the subset (a check that the exclusions did not go too far)
REQUIRED = (
    "CMakeLists.txt", "ggml/src/ggml-cuda/CMakeLists.txt", "ggml/src/ggml-cuda/fattn.cu",
    "ggml/src/ggml-cpu/CMakeLists.txt", "src/llama.cpp", "tools/fit-params/fit-params.cpp",
    "common/fit.cpp",
)


def excluded(rel: str) -> bool:
    """Whether ``rel`` (a path inside vendor/llama.cpp, '/'-separated) stays behind."""
    if rel.endswith(_EXCLUDED_SUFFIXES) or "/__pycache__/" in f"/{rel}/":
        return True
    if "/" not in rel and rel.startswith("convert_") and rel.endswith(".py"):
        return True
    return any(rel == p or rel.startswith(p + "/") for p in EXCLUDED)


def subset_files(src: Path) -> list[str]:
    """The subset's files, relative to ``src``, sorted (so the archive is reproducible)."""
    out = []
    for p in sorted(src.rglob("*")):
        if p.is_file() and not p.is_symlink():
            rel = p.relative_to(src).as_posix()
            if not excluded(rel):
                out.append(rel)
    return out


@dataclass(frozen=True)
class Packed:
    path: Path
    files: int
    raw_bytes: int
    bytes: int
    sha256: str


def pack_source(src: Path, out: Path, *, preset: Literal[1, 6, 9] = 9) -> Packed:
    """Write the subset of ``src`` (vendor/llama.cpp) as ``out`` (tar.xz, entries under
    ``llama.cpp/``, fixed mtimes and owners: the same source gives the same archive)."""
    files = subset_files(src)
    missing = [r for r in REQUIRED if r not in set(files)]
    if missing:
        raise FileNotFoundError(f"the llama.cpp subset lacks {missing} "
                                f"(is {src} vendor/llama.cpp?)")
    raw = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w:xz", preset=preset) as tar:
        for rel in files:
            p = src / rel
            info = tar.gettarinfo(str(p), arcname=f"llama.cpp/{rel}")
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            raw += info.size
            with open(p, "rb") as f:
                tar.addfile(info, f)
    tmp.replace(out)
    return Packed(out, len(files), raw, out.stat().st_size, _sha256(out))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


# --- a real model's header -------------------------------------------------------------------

def write_header(model: Path, out: Path) -> dict[str, object]:
    """``out``: the bytes of ``model`` before its tensor data; returns what expands it again."""
    from kvgui.core.gguf.reader import read_gguf

    g = read_gguf(model)
    start = g.header_bytes[0]
    with open(model, "rb") as f:
        head = f.read(start)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(head)
    return {"name": model.name, "header": out.name, "header_bytes": start,
            "file_bytes": model.stat().st_size, "header_sha256": hashlib.sha256(head).hexdigest()}


def expand_header(header: Path, file_bytes: int, out: Path) -> Path:
    """A file with ``header``'s bytes and a hole up to ``file_bytes`` (the weights read as 0)."""
    with open(header, "rb") as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst)
        dst.truncate(file_bytes)
    return out


# --- Python packages the device lacks --------------------------------------------------------

def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ModuleNotFoundError(f"{name} is not installed here", name=name)
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    assert spec.origin is not None
    return Path(spec.origin)


def copy_packages(names: Iterable[str], dest: Path) -> list[str]:
    """Copy installed pure-Python packages into ``dest``, less compiled libraries and caches
    (llama_cpp/lib is the CPU build: the run fills it with the CUDA build's)."""
    copied = []
    for name in names:
        src = _package_dir(name)
        target = dest / src.name
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns(
                "__pycache__", "*.so", "*.so.*", "*.dylib", "*.dll", "lib", "server"))
        else:
            shutil.copy2(src, target)
        copied.append(name)
    return copied


# --- the whole carry folder ------------------------------------------------------------------

def tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def prepare(root: Path, llama_src: Path, real_model: Path | None) -> dict[str, object]:
    """Fill ``root/.gpucheck`` and write its manifest (sizes, hashes); returns the manifest."""
    carry = root / CARRY_DIR
    carry.mkdir(exist_ok=True)
    packed = pack_source(llama_src, carry / SOURCE_TAR)
    site = carry / SITE_DIR
    site.mkdir(exist_ok=True)
    packages = copy_packages(SITE_PACKAGES, site)
    models: list[dict[str, object]] = []
    if real_model is not None:
        models.append(write_header(real_model, carry / MODELS_DIR /
                                   (real_model.stem + ".header")))
    manifest: dict[str, object] = {
        "source": {"archive": SOURCE_TAR, "files": packed.files, "raw_bytes": packed.raw_bytes,
                   "bytes": packed.bytes, "sha256": packed.sha256, "from": str(llama_src)},
        "site_packages": packages,
        "models": models,
    }
    (carry / MANIFEST).write_text(json.dumps(manifest, indent=1))
    manifest["carry_bytes"] = tree_bytes(carry)
    (carry / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def working_tree_bytes(root: Path) -> int:
    """What one device call sends besides the carry folder: git's tracked files and the
    untracked ones it does not ignore."""
    import subprocess

    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True).stdout
    total = 0
    for rel in out.decode().split("\0"):
        p = root / rel
        if rel and p.is_file():
            total += p.stat().st_size
    return total


def unpack_source(archive: Path, dest: Path) -> Path:
    """Unpack the subset under ``dest``; returns the llama.cpp folder."""
    with tarfile.open(archive) as tar:
        kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, **kw)  # type: ignore[arg-type]
    return dest / "llama.cpp"


__all__ = ["CARRY_DIR", "CARRY_LIMIT", "EXCLUDED", "Packed", "copy_packages", "excluded",
           "expand_header", "pack_source", "prepare", "subset_files", "tree_bytes",
           "unpack_source", "working_tree_bytes", "write_header"]
