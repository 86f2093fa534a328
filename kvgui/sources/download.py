"""Download one quant into the Hub cache: resumable, cancellable, verified, llama.cpp-findable.

The files land where ``hf_hub_download`` puts them and where llama.cpp's ``-hf`` looks
(common/hf-cache.cpp): ``models--org--name/blobs/<sha256>``, a relative symlink
``snapshots/<commit>/<path>`` to it, and ``refs/<revision>`` holding the commit, so that
``llama-server -hf repo:quant`` finds the model offline afterwards.

Why not ``hf_hub_download`` itself: it deletes its partial file on any failure (so a cancelled
20 GB download would start over) and cannot be cancelled. The transfer is still
huggingface_hub's: ``get_hf_file_metadata`` (the HEAD that resolves the CDN location),
``get_paths_info`` (the sha256 the Hub publishes) and ``http_get`` (streaming, with its own
resume on a dropped connection). What is added: the partial file ``blobs/<sha256>.incomplete``
outlives a cancel or a crash and is resumed with a Range request; the sha256 is computed while
the bytes arrive (over the partial part first, when resuming) and a mismatch deletes the file;
free disk space is checked before the first byte.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kvgui.core.sizes import format_bytes
from kvgui.sources.header_cache import repo_folder
from kvgui.sources.hub import HubConfig, RepoListing
from kvgui.sources.hub_errors import CHECKSUM, DISK, OFFLINE, HubError, hub_error
from kvgui.sources.quants import QuantGroup, RepoFile
from kvgui.sources.resolve import downloaded_parts, snapshot_path

log = logging.getLogger(__name__)

DISK_MARGIN = 256 << 20  # keep this much free beyond the download itself
_SLICE = 1 << 20  # progress and cancel granularity


class Cancelled(Exception):
    """The download was cancelled; its partial file is kept for a resume."""


@dataclass(frozen=True)
class Progress:
    done: int  # bytes on disk, all parts (a resumed part counts what it had)
    total: int
    speed: float  # bytes/s over the last few seconds of this session
    eta: float | None  # seconds
    part: int  # 1-based
    parts: int
    path: str

    @property
    def fraction(self) -> float:
        return self.done / self.total if self.total else 0.0


ProgressCallback = Callable[[Progress], None]


class _HashingWriter:
    """The file object http_get writes into: hashes, counts, reports, and honours cancel."""

    def __init__(self, f: Any, hasher: Any, on_bytes: Callable[[int], None],
                 cancel: threading.Event | None) -> None:
        self._f, self._hash, self._on_bytes, self._cancel = f, hasher, on_bytes, cancel

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        for i in range(0, len(view), _SLICE):  # http_get hands over 10 MB chunks
            if self._cancel is not None and self._cancel.is_set():
                raise Cancelled()
            piece = view[i:i + _SLICE]
            self._f.write(piece)
            self._hash.update(piece)
            self._on_bytes(len(piece))
        return len(view)

    def tell(self) -> int:
        return int(self._f.tell())

    def seek(self, pos: int, whence: int = 0) -> int:
        if (pos, whence) != (0, 0):  # http_get rewinds to 0 when a server ignores Range
            raise OSError(f"unexpected seek to {pos}")
        self._hash = hashlib.sha256()
        return int(self._f.seek(0))

    def truncate(self, size: int | None = None) -> int:
        return int(self._f.truncate(size))

    @property
    def sha256(self) -> str:
        return str(self._hash.hexdigest())


def _silent_tqdm() -> Any:
    from huggingface_hub.utils import tqdm

    class Silent(tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


def free_disk(path: Path) -> int:
    """Free bytes on the volume that holds ``path`` (or its nearest existing parent)."""
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return 0


def _link(blob: Path, dest: Path) -> None:
    """``dest`` -> ``blob`` as a relative symlink, as huggingface_hub and llama.cpp make them;
    a copy where symlinks are not allowed (Windows without developer mode)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink() or dest.exists():
        dest.unlink()
    try:
        os.symlink(os.path.relpath(blob, dest.parent), dest)
    except OSError as exc:
        log.warning("cannot make a symlink in %s (%s); copying instead", dest.parent, exc)
        shutil.copyfile(blob, dest)


class Downloader:
    """Download ``group`` of ``listing``; ``run()`` returns the snapshot paths (part order)."""

    def __init__(self, listing: RepoListing, group: QuantGroup, *,
                 config: HubConfig | None = None, on_progress: ProgressCallback | None = None,
                 cancel: threading.Event | None = None) -> None:
        self.listing, self.group = listing, group
        self.cfg = config or HubConfig.from_env()
        self.on_progress = on_progress
        self.cancel = cancel or threading.Event()
        self.repo_dir = self.cfg.hub_cache / repo_folder(listing.repo)
        self._done = 0
        self._total = 0
        self._window: list[tuple[float, int]] = []
        self._last_report = 0.0
        self._part = 1
        self._path = ""

    # --- plan ---------------------------------------------------------------------------
    def published(self) -> list[RepoFile]:
        """Size and sha256 of each part as the Hub publishes them now, at the commit."""
        paths = [f.path for f in self.group.files]
        try:
            infos = self.cfg.api().get_paths_info(self.listing.repo, paths,
                                                  revision=self.listing.commit)
        except Exception as exc:
            raise hub_error(exc, self.listing.repo) from None
        by_path = {i.path: i for i in infos}
        out = []
        for f in self.group.files:
            info = by_path.get(f.path)
            if info is None:
                raise HubError("not_found", f"{self.listing.repo}/{f.path}: not in the repo at "
                               f"commit {self.listing.commit[:12]}")
            lfs = getattr(info, "lfs", None)
            out.append(RepoFile(f.path, int(info.size), lfs.sha256 if lfs else None))
        return out

    def _partial(self, f: RepoFile) -> Path:
        return self.repo_dir / "blobs" / f"{f.sha256 or f.path.replace('/', '_')}.incomplete"

    def _have(self, f: RepoFile) -> int:
        blob = self.repo_dir / "blobs" / (f.sha256 or "")
        if f.sha256 and blob.is_file() and blob.stat().st_size == f.size:
            return f.size or 0
        try:
            return self._partial(f).stat().st_size
        except OSError:
            return 0

    def check_disk(self, files: list[RepoFile]) -> None:
        need = sum((f.size or 0) - self._have(f) for f in files)
        free = free_disk(self.cfg.hub_cache)
        if free < need + DISK_MARGIN:
            raise HubError(DISK, f"{self.listing.repo}: the download needs "
                           f"{format_bytes(need)} but {self.cfg.hub_cache} has "
                           f"{format_bytes(free)} free")
        try:
            (self.repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
            probe = self.repo_dir / "blobs" / f".kvgui-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise HubError(DISK, f"cannot write to the Hub cache at {self.cfg.hub_cache} "
                           f"({exc.strerror or exc}): set HF_HUB_CACHE to a writable folder") \
                from None

    # --- run ----------------------------------------------------------------------------
    def run(self) -> list[Path]:
        if self.cfg.offline:
            raise HubError(OFFLINE, f"{self.listing.repo}: offline (HF_HUB_OFFLINE): "
                           "downloading needs the Hub")
        done = downloaded_parts(self.cfg.hub_cache, self.listing.repo, self.listing.commit,
                                self.group)
        if done is not None:
            return done
        files = self.published()
        self.check_disk(files)
        self._total = sum(f.size or 0 for f in files)
        self._done = sum(self._have(f) for f in files)
        out = []
        for i, f in enumerate(files, start=1):
            self._part, self._path = i, f.path
            out.append(self._one(f))
        self._write_ref()
        self._report(force=True)
        return out

    def _one(self, f: RepoFile) -> Path:
        from huggingface_hub import get_hf_file_metadata, hf_hub_url
        from huggingface_hub.file_download import http_get

        dest = snapshot_path(self.cfg.hub_cache, self.listing.repo, self.listing.commit, f.path)
        name = f"{self.listing.repo}/{f.path}"
        headers = self.cfg.auth_headers()
        url = hf_hub_url(self.listing.repo, f.path, revision=self.listing.commit,
                         endpoint=self.cfg.endpoint)
        try:
            meta = get_hf_file_metadata(url, headers=headers, timeout=self.cfg.timeout,
                                        endpoint=self.cfg.endpoint)
        except Exception as exc:
            raise hub_error(exc, name) from None
        sha = f.sha256 or (meta.etag if meta.etag and len(meta.etag) == 64 else None)
        blob = self.repo_dir / "blobs" / (sha or meta.etag or f.path.replace("/", "_"))
        if blob.is_file() and blob.stat().st_size == f.size:
            _link(blob, dest)
            return dest
        partial = self._partial(RepoFile(f.path, f.size, sha))
        hasher = hashlib.sha256()
        resume = partial.stat().st_size if partial.is_file() else 0
        if f.size is not None and resume > f.size:
            partial.unlink()
            resume = 0
        if resume:
            log.info("resuming %s at %s", name, format_bytes(resume))
            with open(partial, "rb") as old:
                while chunk := old.read(8 << 20):
                    hasher.update(chunk)
        location = meta.location or url
        if _origin(location) != _origin(url):  # the CDN gets no token
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        with open(partial, "ab") as out:
            writer = _HashingWriter(out, hasher, self._count, self.cancel)
            try:
                http_get(location, writer, resume_size=resume, headers=headers,  # type: ignore[arg-type]
                         expected_size=f.size, displayed_filename=f.path,
                         tqdm_class=_silent_tqdm())
            except Cancelled:
                raise
            except Exception as exc:
                raise hub_error(exc, name) from None
        got = writer.sha256
        if sha is not None and got != sha:
            partial.unlink()
            raise HubError(CHECKSUM, f"{name}: the download's sha256 is {got[:16]}…, the Hub "
                           f"publishes {sha[:16]}…; the file was deleted: download it again")
        os.replace(partial, blob)
        _link(blob, dest)
        return dest

    def _write_ref(self) -> None:
        rev, commit = self.listing.revision, self.listing.commit
        if rev == commit:
            return
        ref = self.repo_dir / "refs" / rev
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text().strip() != commit:
            ref.write_text(commit)

    # --- progress -----------------------------------------------------------------------
    def _count(self, n: int) -> None:
        self._done += n
        now = time.monotonic()
        self._window.append((now, n))
        while self._window and now - self._window[0][0] > 3.0:
            self._window.pop(0)
        self._report()

    def _report(self, *, force: bool = False) -> None:
        if self.on_progress is None:
            return
        now = time.monotonic()
        if not force and now - self._last_report < 0.1:
            return
        self._last_report = now
        span = now - self._window[0][0] if len(self._window) > 1 else 0.0
        speed = sum(n for _, n in self._window) / span if span > 0 else 0.0
        left = self._total - self._done
        eta = left / speed if speed > 0 else None
        self.on_progress(Progress(self._done, self._total, speed, eta, self._part,
                                  len(self.group.files), self._path))


def _origin(url: str) -> tuple[str, str, int | None]:
    from urllib.parse import urlparse

    u = urlparse(url)
    return u.scheme, (u.hostname or "").lower(), u.port


def download(listing: RepoListing, group: QuantGroup, *, config: HubConfig | None = None,
             on_progress: ProgressCallback | None = None,
             cancel: threading.Event | None = None) -> list[Path]:
    return Downloader(listing, group, config=config, on_progress=on_progress,
                      cancel=cancel).run()
