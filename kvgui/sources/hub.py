"""The Hugging Face Hub through huggingface_hub: where it is, who we are, what a repo holds.

huggingface_hub reads its environment (HF_ENDPOINT, HF_HUB_OFFLINE, HF_HUB_CACHE…) once, when
it is imported; ``HubConfig.from_env`` reads the same variables, by the same rules, when it is
called, and passes them explicitly, so a token typed into the window or an endpoint set by a
test takes effect without restarting anything.

A listing (``model_info`` with file sizes and LFS hashes: one request) is pinned to the commit
it names; every later read of the repo's files uses that commit, so a header, its cache entry
and a download always agree. Listings are cached next to the headers, so the quant table and
``repo:quant`` work offline once seen.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kvgui.sources import header_cache
from kvgui.sources.hub_errors import NOT_FOUND, OFFLINE, HubError, hub_error
from kvgui.sources.modelref import DEFAULT_REVISION, HubRef
from kvgui.sources.quants import QuantGroup, RepoFile, group_for, group_quants

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_TIMEOUT = 10.0  # huggingface_hub's HF_HUB_DOWNLOAD_TIMEOUT / HF_HUB_ETAG_TIMEOUT


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache_dir() -> Path:
    """The Hub cache, by huggingface_hub's rules: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE,
    HF_HOME/hub, XDG_CACHE_HOME/huggingface/hub, ~/.cache/huggingface/hub."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(os.path.expandvars(env[var])).expanduser()
    if env.get("HF_HOME"):
        return Path(os.path.expandvars(env["HF_HOME"])).expanduser() / "hub"
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "huggingface" / "hub"


@dataclass(frozen=True)
class HubConfig:
    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = None  # None: huggingface_hub's own (HF_TOKEN, then the stored login)
    offline: bool = False
    hub_cache: Path = field(default_factory=hub_cache_dir)
    header_cache: Path = field(default_factory=header_cache.default_dir)
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_env(cls, token: str | None = None) -> HubConfig:
        env = os.environ
        timeout = env.get("HF_HUB_DOWNLOAD_TIMEOUT") or env.get("HF_HUB_ETAG_TIMEOUT")
        try:
            seconds = float(timeout) if timeout else DEFAULT_TIMEOUT
        except ValueError:
            seconds = DEFAULT_TIMEOUT
        return cls(
            endpoint=(env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            token=token or None,
            offline=_truthy(env.get("HF_HUB_OFFLINE")) or _truthy(env.get("TRANSFORMERS_OFFLINE")),
            timeout=seconds,
        )

    def with_token(self, token: str | None) -> HubConfig:
        return replace(self, token=token or None)

    @property
    def hub_hosts(self) -> tuple[str, ...]:
        """Hosts whose URLs name Hub files (the endpoint's, besides huggingface.co)."""
        from urllib.parse import urlparse

        host = urlparse(self.endpoint).hostname
        return (host,) if host else ()

    def auth_headers(self) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers

        return dict(build_hf_headers(token=self.token, library_name="kvgui"))

    def api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token, library_name="kvgui")


@dataclass(frozen=True)
class RepoListing:
    """A repo's files at one commit."""

    repo: str
    revision: str
    commit: str
    files: tuple[RepoFile, ...]
    gated: bool = False
    private: bool = False
    from_cache: bool = False  # read from the listing cache (offline, or the Hub unreachable)

    @property
    def quants(self) -> list[QuantGroup]:
        return group_quants(self.files)

    def group(self, ref: HubRef) -> QuantGroup:
        """The quant ``ref`` names, or a HubError listing what the repo has."""
        g = group_for(self.files, ref.quant, ref.filename)
        if g is None:
            have = ", ".join(q.label for q in self.quants if not q.projector) or "no GGUF files"
            wanted = ref.filename or (f"quant {ref.quant}" if ref.quant else "a GGUF model")
            raise HubError(NOT_FOUND, f"{ref.repo}: no {wanted} (it has: {have})")
        if not g.complete:
            raise HubError(NOT_FOUND, f"{ref.repo}: {g.first.path} is a split model whose parts "
                           "are not all listed")
        return g

    def to_json(self) -> dict[str, Any]:
        return {"repo": self.repo, "revision": self.revision, "commit": self.commit,
                "gated": self.gated, "private": self.private,
                "files": [[f.path, f.size, f.sha256] for f in self.files]}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RepoListing:
        return cls(str(d["repo"]), str(d["revision"]), str(d["commit"]),
                   tuple(RepoFile(str(p), s, h) for p, s, h in d["files"]),
                   bool(d.get("gated")), bool(d.get("private")), from_cache=True)


def list_repo(repo: str, revision: str = DEFAULT_REVISION, *,
              config: HubConfig | None = None) -> RepoListing:
    """The repo's files with sizes and sha256 at ``revision`` (one request), or the cached
    listing when offline or when the Hub cannot be reached."""
    cfg = config or HubConfig.from_env()
    cache = header_cache.HeaderCache(cfg.header_cache)
    if cfg.offline:
        cached = _cached_listing(cache, repo, revision)
        if cached is None:
            raise HubError(OFFLINE, f"{repo}: offline (HF_HUB_OFFLINE) and never listed here")
        return cached
    try:
        info = cfg.api().model_info(repo, revision=revision, files_metadata=True,
                                    timeout=cfg.timeout)
    except Exception as exc:
        err = hub_error(exc, repo)
        cached = _cached_listing(cache, repo, revision) if err.kind in ("network", "timeout") \
            else None
        if cached is not None:
            log.warning("%s; using the listing cached at commit %s", err, cached.commit[:12])
            return cached
        raise err from None
    files = tuple(
        RepoFile(s.rfilename, s.size if s.size is not None else (s.lfs.size if s.lfs else None),
                 s.lfs.sha256 if s.lfs else None)
        for s in (info.siblings or []))
    listing = RepoListing(repo, revision, str(info.sha), files, bool(info.gated),
                          bool(info.private))
    cache.put_listing(repo, revision, listing.commit, json.dumps(listing.to_json()))
    return listing


def _cached_listing(cache: header_cache.HeaderCache, repo: str,
                    revision: str) -> RepoListing | None:
    text = cache.get_listing(repo, revision)
    if text is None:
        return None
    try:
        return RepoListing.from_json(json.loads(text))
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring a broken cached listing of %s: %s", repo, exc)
        return None


@dataclass(frozen=True)
class SearchHit:
    repo: str
    downloads: int
    likes: int
    gated: bool


def search_repos(query: str, *, limit: int = 30,
                 config: HubConfig | None = None) -> list[SearchHit]:
    """GGUF repos matching ``query``, most downloaded first."""
    cfg = config or HubConfig.from_env()
    if cfg.offline:
        raise HubError(OFFLINE, "offline (HF_HUB_OFFLINE): searching needs the Hub")
    try:
        models = cfg.api().list_models(search=query or None, filter="gguf", sort="downloads",
                                       limit=limit)
        return [SearchHit(m.id, int(m.downloads or 0), int(m.likes or 0), bool(m.gated))
                for m in models]
    except Exception as exc:
        raise hub_error(exc, f"search {query!r}") from None
