"""A remote GGUF's header by HTTP range requests, parsed by kvgui's own reader.

``RemoteFile`` is a ``ByteSource`` (kvgui.core.gguf.reader): the reader asks it for byte
ranges exactly as it asks a local file, so a remote header is parsed by the same code, with
the same bounds checks, as the file on disk. The reader starts with 64 KiB (a small model's
whole header) and every later miss asks for at least 4x more, or for what a string array
needs in one go: a 262,144-token vocabulary (about 6 MB of header) takes two requests, and no
request reaches more than a few MB into the weights.

The URLs are ``resolve/<commit>/<file>`` (the commit of the listing), fetched with
huggingface_hub's shared HTTP client and headers (token, user agent); the Hub redirects them to
its CDN, which answers the Range. The header bytes read are then kept in the HeaderCache.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field

from kvgui.core.gguf.reader import GGUFError, GGUFFile, read_gguf_sources
from kvgui.core.model.info import ModelInfo
from kvgui.sources.header_cache import CachedHeader, HeaderCache
from kvgui.sources.hub import HubConfig, RepoListing
from kvgui.sources.hub_errors import NETWORK, OFFLINE, HubError, hub_error
from kvgui.sources.quants import QuantGroup, RepoFile

log = logging.getLogger(__name__)

FIRST_READ = 64 << 10
GROWTH = 4
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass
class FetchStats:
    """What reading cost: HTTP range requests, bytes received, seconds spent waiting."""

    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0
    cached_parts: int = 0
    ranges: list[tuple[int, int]] = field(default_factory=list)


class RemoteFile:
    """One file on the Hub as a ByteSource; keeps what it fetched for the header cache."""

    first_read = FIRST_READ
    growth = GROWTH

    def __init__(self, url: str, name: str, size: int, headers: dict[str, str],
                 timeout: float, stats: FetchStats) -> None:
        self.url, self.name, self.size = url, name, size
        self._headers = {**headers, "Accept-Encoding": "identity"}
        self._timeout = timeout
        self._stats = stats
        self._chunks: list[tuple[int, bytes]] = []
        self._direct: str | None = None  # where the Hub redirected us (its CDN), reused

    def read_at(self, offset: int, n: int) -> bytes:
        if n <= 0 or offset >= self.size:
            return b""
        n = min(n, self.size - offset)
        for attempt in (1, 2):  # a dropped or short response is retried once
            try:
                data = self._get(offset, n)
                break
            except HubError as err:
                if attempt == 2 or err.kind != NETWORK:
                    raise
                log.warning("%s; retrying once", err)
        self._chunks.append((offset, data))
        return data

    def _get(self, offset: int, n: int) -> bytes:
        from huggingface_hub.utils import get_session, hf_raise_for_status

        t0 = time.perf_counter()
        self._stats.requests += 1
        self._stats.ranges.append((offset, n))
        headers = {**self._headers, "Range": f"bytes={offset}-{offset + n - 1}"}
        url = self._direct or self.url
        if url is self._direct and _origin(url) != _origin(self.url):
            # the token is for the Hub, never for its CDN (httpx drops it on the redirect too)
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        try:
            with get_session().stream("GET", url, headers=headers, timeout=self._timeout,
                                      follow_redirects=True) as r:
                if r.status_code in (401, 403) and self._direct is not None:
                    self._direct = None  # a signed CDN link expired: resolve again
                    raise HubError(NETWORK, f"{self.name}: the download link expired")
                if r.status_code >= 400:
                    r.read()
                    hf_raise_for_status(r)
                if r.status_code == 206:
                    self._check_range(r.headers.get("Content-Range", ""), offset, n)
                    skip = 0
                elif r.status_code == 200 and offset < (1 << 20):  # Range ignored: take the start
                    skip = offset
                else:
                    raise HubError(NETWORK, f"{self.name}: the server answered {r.status_code} "
                                   "to a range request")
                data = self._read_body(r, skip + n)[skip:]
                if r.status_code == 206 and str(r.url) != url:
                    self._direct = str(r.url)
        except HubError:
            raise
        except Exception as exc:
            raise hub_error(exc, self.name) from None
        finally:
            self._stats.seconds += time.perf_counter() - t0
        self._stats.bytes += len(data)
        if len(data) < n:
            raise HubError(NETWORK, f"{self.name}: the response ended after {len(data)} of "
                           f"{n} bytes")
        return data

    def _read_body(self, r: object, limit: int) -> bytes:
        out = bytearray()
        for chunk in r.iter_bytes():  # type: ignore[attr-defined]
            out += chunk
            if len(out) >= limit:
                break
        return bytes(out[:limit])

    def _check_range(self, header: str, offset: int, n: int) -> None:
        m = _CONTENT_RANGE.match(header)
        if not m or int(m.group(1)) != offset:
            raise HubError(NETWORK, f"{self.name}: the server sent the wrong range "
                           f"({header or 'no Content-Range'})")
        total = m.group(3)
        if total != "*" and int(total) != self.size:
            raise HubError(NETWORK, f"{self.name}: the file is {total} bytes on the server, "
                           f"the listing said {self.size}: list the repo again")

    def prefix(self, n: int) -> bytes | None:
        """The first ``n`` bytes, if every one of them was fetched (for the cache)."""
        out = bytearray()
        for offset, data in sorted(self._chunks):
            if offset > len(out):
                return None
            out[offset:offset + len(data)] = data
            if len(out) >= n:
                return bytes(out[:n])
        return bytes(out) if len(out) >= n else None


def _origin(url: str) -> tuple[str, str, int | None]:
    from urllib.parse import urlparse

    u = urlparse(url)
    return u.scheme, (u.hostname or "").lower(), u.port


class CachedFile:
    """A cached header as a ByteSource: the first bytes of a file, and its full size.

    Past the header it reads as zeros: the reader may ask for more than the header in one go
    (a string array's window), but never parses a byte beyond the tensor table, so the parse
    is the one of the real file.
    """

    growth = 1

    def __init__(self, name: str, cached: CachedHeader) -> None:
        self.name, self.size, self._data = name, cached.size, cached.data
        self.first_read = max(len(cached.data), 1)  # all of it in one read

    def read_at(self, offset: int, n: int) -> bytes:
        data = self._data[offset:offset + n]
        want = max(0, min(n, self.size - offset))
        return data + bytes(want - len(data)) if len(data) < want else data


@dataclass
class RemoteModel:
    """A model read from the Hub (or its cached header): the header and what it cost."""

    listing: RepoListing
    group: QuantGroup
    gguf: GGUFFile
    stats: FetchStats

    @property
    def spec(self) -> str:
        """``repo:TAG`` for llama.cpp's -hf (the repo alone for a file with no tag)."""
        return f"{self.listing.repo}:{self.group.tag}" if self.group.tag else self.listing.repo

    def describe(self, *, path: str | None = None) -> ModelInfo:
        g = self.gguf
        return ModelInfo.from_header(g.metadata, g.tensors, path=path, file_bytes=g.file_bytes)


def resolve_url(config: HubConfig, repo: str, commit: str, path: str) -> str:
    from huggingface_hub import hf_hub_url

    return str(hf_hub_url(repo, path, revision=commit, endpoint=config.endpoint))


def read_remote_header(listing: RepoListing, group: QuantGroup, *,
                       config: HubConfig | None = None) -> RemoteModel:
    """Every part's header of ``group``: from the header cache, else by range requests.

    Raises HubError (network, auth…) or GGUFError (a file that is not a usable GGUF)."""
    cfg = config or HubConfig.from_env()
    cache = HeaderCache(cfg.header_cache)
    stats = FetchStats()
    sources: list[RemoteFile | CachedFile] = []
    headers: dict[str, str] | None = None
    for f in group.files:
        name = f"{listing.repo}/{f.path}"
        cached = cache.get(listing.repo, listing.commit, f.path)
        if cached is not None:
            stats.cached_parts += 1
            sources.append(CachedFile(name, cached))
            continue
        if cfg.offline:
            raise HubError(OFFLINE, f"{name}: offline (HF_HUB_OFFLINE) and its header is not "
                           "cached here")
        if headers is None:
            headers = cfg.auth_headers()
        size = f.size if f.size is not None else _remote_size(cfg, listing, f, headers)
        url = resolve_url(cfg, listing.repo, listing.commit, f.path)
        sources.append(RemoteFile(url, name, size, headers, cfg.timeout, stats))
    gguf = read_gguf_sources(sources)
    for src, f, header_len in zip(sources, group.files, gguf.header_bytes, strict=True):
        if isinstance(src, RemoteFile):
            data = src.prefix(header_len)
            if data is not None:
                cache.put(listing.repo, listing.commit, f.path, data, src.size, f.sha256)
    return RemoteModel(listing, group, gguf, stats)


def _remote_size(cfg: HubConfig, listing: RepoListing, f: RepoFile,
                 headers: dict[str, str]) -> int:
    from huggingface_hub import get_hf_file_metadata

    url = resolve_url(cfg, listing.repo, listing.commit, f.path)
    try:
        meta = get_hf_file_metadata(url, headers=headers, timeout=cfg.timeout,
                                    endpoint=cfg.endpoint)
    except Exception as exc:
        raise hub_error(exc, f"{listing.repo}/{f.path}") from None
    if meta.size is None:
        raise GGUFError(f"{listing.repo}/{f.path}", "the Hub does not say how large it is")
    return int(meta.size)
