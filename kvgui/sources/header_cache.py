"""Headers (and listings) read from the Hub, kept on disk by repo, file and commit.

A commit never changes, so a header cached under one is valid forever: reopening a remote
model costs no request, and works offline. A revision (``main``) is mapped to the commit it
last resolved to under ``refs/``, as the Hub cache does. The cached bytes are the file's first
``header_bytes`` bytes, and the file's full size is kept beside them, so the very reader that
parsed the remote file parses the cached copy (the estimate cannot differ).

Layout, under $KVGUI_CACHE_DIR/hub-headers or the user cache dir::

    models--org--name/refs/main                      -> commit
    models--org--name/<commit>/listing.json
    models--org--name/<commit>/headers/<path>.header  (the bytes)
    models--org--name/<commit>/headers/<path>.json    ({"size", "header_bytes", "sha256"})

Every write is atomic (a temporary file, then a rename) and a cache that cannot be written
(read-only, full) is logged and skipped: caching must never stop a model from opening.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def default_dir() -> Path:
    base = os.environ.get("KVGUI_CACHE_DIR")
    if base:
        return Path(base) / "hub-headers"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("kvgui", appauthor=False)) / "hub-headers"


def repo_folder(repo: str) -> str:
    """The Hub cache's folder name for a model repo: models--org--name."""
    return "models--" + repo.replace("/", "--")


@dataclass(frozen=True)
class CachedHeader:
    data: bytes
    size: int  # the whole file's size
    sha256: str | None


class HeaderCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _repo(self, repo: str) -> Path:
        return self.root / repo_folder(repo)

    def _header_paths(self, repo: str, commit: str, path: str) -> tuple[Path, Path]:
        base = self._repo(repo) / commit / "headers"
        safe = [p for p in path.split("/") if p not in ("", ".", "..")]
        target = base.joinpath(*safe)
        return target.with_name(target.name + ".header"), target.with_name(target.name + ".json")

    def commit_for(self, repo: str, revision: str) -> str | None:
        if _COMMIT.match(revision):
            return revision
        try:
            commit = (self._repo(repo) / "refs" / revision).read_text().strip()
        except OSError:
            return None
        return commit if _COMMIT.match(commit) else None

    # --- listings -----------------------------------------------------------------------
    def get_listing(self, repo: str, revision: str) -> str | None:
        commit = self.commit_for(repo, revision)
        if commit is None:
            return None
        try:
            return (self._repo(repo) / commit / "listing.json").read_text(encoding="utf-8")
        except OSError:
            return None

    def put_listing(self, repo: str, revision: str, commit: str, text: str) -> None:
        if not _COMMIT.match(commit):
            log.warning("not caching %s: %r is not a commit hash", repo, commit)
            return
        self._write(self._repo(repo) / commit / "listing.json", text.encode("utf-8"))
        if revision != commit:
            self._write(self._repo(repo) / "refs" / revision, commit.encode("ascii"))

    # --- headers ------------------------------------------------------------------------
    def get(self, repo: str, commit: str, path: str) -> CachedHeader | None:
        data_path, meta_path = self._header_paths(repo, commit, path)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            data = data_path.read_bytes()
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or meta.get("header_bytes") != len(data):
            log.warning("ignoring a damaged cached header of %s/%s", repo, path)
            return None
        return CachedHeader(data, int(meta["size"]), meta.get("sha256"))

    def put(self, repo: str, commit: str, path: str, data: bytes, size: int,
            sha256: str | None) -> None:
        if not _COMMIT.match(commit):
            return
        data_path, meta_path = self._header_paths(repo, commit, path)
        if self._write(data_path, data):
            meta = {"size": size, "header_bytes": len(data), "sha256": sha256}
            self._write(meta_path, json.dumps(meta).encode("utf-8"))

    def _write(self, path: Path, data: bytes) -> bool:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("cannot write the header cache at %s (%s); continuing without it",
                        path.parent, exc.strerror or exc)
            return False
        return True

