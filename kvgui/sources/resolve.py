"""The one place a model reference becomes an opened model.

Every CLI command and the window's model field come here with what the user typed. A local
path is read from disk; a Hub reference (``repo[:quant]``, ``-hf …``, a Hub URL) is listed
(pinned to a commit), matched to a quant by llama.cpp's rules, and then read from the Hub cache
when that quant is downloaded there (so llama.cpp can load it), else from the header cache,
else by range requests.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from kvgui.core.model.info import ModelInfo, load_model
from kvgui.sources.header_cache import repo_folder
from kvgui.sources.hub import HubConfig, RepoListing, list_repo
from kvgui.sources.hub_errors import OFFLINE, HubError
from kvgui.sources.modelref import HubRef, parse_hub_ref
from kvgui.sources.quants import QuantGroup, RepoFile, group_for
from kvgui.sources.remote_header import FetchStats, read_remote_header

log = logging.getLogger(__name__)

HF_PREFIX = "hf:"  # a window source / recent entry that came from the Hub: "hf:repo:TAG"


@dataclass
class OpenedModel:
    info: ModelInfo
    source: str  # a path, or "hf:" + the -hf spec (what the window and recent list keep)
    hub: HubRef | None = None  # repo + quant (or exact file), at a commit
    commit: str | None = None
    group: QuantGroup | None = None
    local_path: str | None = None  # a file llama.cpp can load; None: only the header is known
    stats: FetchStats = field(default_factory=FetchStats)
    notes: list[str] = field(default_factory=list)

    @property
    def hf_args(self) -> list[str]:
        """How llama.cpp names this model: ``-hf repo:TAG``, or ``-hf repo -hff FILE`` when
        the tag alone would pick another file."""
        if self.hub is None:
            return []
        if self.hub.quant:
            return ["-hf", self.hub.spec]
        return ["-hf", self.hub.repo, "-hff", self.hub.filename or ""]


def hf_model_args(source: str, config: HubConfig | None = None) -> list[str] | None:
    """``-hf repo:TAG`` (or ``-hf repo -hff FILE``) for a window source that came from the
    Hub (``hf:…``); None for a file or a catalog model."""
    if not source.startswith(HF_PREFIX):
        return None
    hosts = (config or HubConfig.from_env()).hub_hosts
    ref = parse_hub_ref(source[len(HF_PREFIX):], hub_hosts=hosts)
    if ref is None:
        return None
    if ref.filename:
        return ["-hf", ref.repo, "-hff", ref.filename]
    return ["-hf", ref.spec]


def looks_like_hub_reference(text: str, config: HubConfig | None = None) -> bool:
    """True when ``text`` is not an existing path and parses as a Hub reference."""
    if not text or os.path.exists(text):
        return False
    hosts = (config or HubConfig.from_env()).hub_hosts
    return parse_hub_ref(text, hub_hosts=hosts) is not None


def snapshot_path(hub_cache: Path, repo: str, commit: str, path: str) -> Path:
    return hub_cache / repo_folder(repo) / "snapshots" / commit / Path(*path.split("/"))


def downloaded_parts(hub_cache: Path, repo: str, commit: str,
                     group: QuantGroup) -> list[Path] | None:
    """The quant's files in the Hub cache at ``commit``, if every part is there in full."""
    paths = [snapshot_path(hub_cache, repo, commit, f.path) for f in group.files]
    for p, f in zip(paths, group.files, strict=True):
        try:
            size = p.stat().st_size
        except OSError:
            return None
        if f.size is not None and size != f.size:
            return None
    return paths


def local_listing(hub_cache: Path, repo: str, revision: str) -> RepoListing | None:
    """What the Hub cache holds of ``repo`` (a listing for offline use, as llama.cpp's
    get_cached_files makes one): refs/<revision> (else main, else any ref) -> snapshot."""
    base = hub_cache / repo_folder(repo)
    refs = base / "refs"
    commit = None
    for name in (revision, "main"):
        try:
            commit = (refs / name).read_text().strip()
            break
        except OSError:
            continue
    if commit is None and refs.is_dir():
        for ref in sorted(refs.rglob("*")):
            if ref.is_file():
                commit = ref.read_text().strip()
                break
    if not commit:
        return None
    snap = base / "snapshots" / commit
    if not snap.is_dir():
        return None
    files = []
    for p in sorted(snap.rglob("*")):
        if p.is_file():
            files.append(RepoFile(p.relative_to(snap).as_posix(), p.stat().st_size))
    return RepoListing(repo, revision, commit, tuple(files), from_cache=True)


def open_hub(ref: HubRef, *, config: HubConfig | None = None) -> OpenedModel:
    """List the repo, pick the quant, read its header (cache, Hub cache or range requests)."""
    cfg = config or HubConfig.from_env()
    notes: list[str] = []
    try:
        listing = list_repo(ref.repo, ref.revision, config=cfg)
    except HubError as err:
        if err.kind not in (OFFLINE, "network", "timeout"):
            raise
        fallback = local_listing(cfg.hub_cache, ref.repo, ref.revision)
        if fallback is None:
            raise
        listing = fallback
        notes.append(f"{err}; using the Hub cache")
    if listing.from_cache:
        notes.append(f"listing of {ref.repo} from the cache (commit {listing.commit[:12]})")
    return open_listed(listing, listing.group(ref), config=cfg, notes=notes)


def open_listed(listing: RepoListing, group: QuantGroup, *, config: HubConfig | None = None,
                notes: list[str] | None = None) -> OpenedModel:
    """Open one quant of a listed repo (the quant table's rows open this way)."""
    cfg = config or HubConfig.from_env()
    notes = list(notes or [])
    exact = group_for(listing.files, group.tag or None) == group if group.tag else False
    hub = HubRef(listing.repo, group.tag if exact else None,
                 None if exact else group.first.path, listing.revision)
    source = HF_PREFIX + (hub.spec if exact else
                          f"{cfg.endpoint}/{listing.repo}/resolve/{listing.revision}/"
                          f"{group.first.path}")
    parts = downloaded_parts(cfg.hub_cache, listing.repo, listing.commit, group)
    if parts is not None:
        info = load_model(parts[0])
        return OpenedModel(info, source, hub, listing.commit, group, str(parts[0]),
                           notes=[*notes, "downloaded: read from the Hub cache"])
    remote = read_remote_header(listing, group, config=cfg)
    if remote.stats.cached_parts == len(group.files):
        notes.append("header from kvgui's header cache")
    return OpenedModel(remote.describe(), source, hub, listing.commit, group, None,
                       remote.stats, notes)


def open_reference(text: str, *, config: HubConfig | None = None) -> OpenedModel:
    """A local file, or a Hub reference; raises GGUFError, HubError or FileNotFoundError."""
    cfg = config or HubConfig.from_env()
    if text.startswith(HF_PREFIX):
        text = text[len(HF_PREFIX):]
    if os.path.exists(text):
        info = load_model(text)
        return OpenedModel(info, info.path or text, local_path=info.path or text)
    ref = parse_hub_ref(text, hub_hosts=cfg.hub_hosts)
    if ref is None:
        raise FileNotFoundError(f"{text}: no such file (nor a Hub reference like org/repo:Q4_K_M)")
    return open_hub(ref, config=cfg)
