"""The spellings of a model reference, parsed in one place.

People paste what they have: a path, llama.cpp's ``-hf repo[:quant]`` (with or without the
flag), ``hf.co/repo:quant`` as ollama spells it, or a link copied from the Hub's web page
(``…/resolve/<rev>/<file>``, ``…/blob/<rev>/<file>``, or the repo page itself). Everything here
is pure text handling: no file system, no network.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

DEFAULT_REVISION = "main"
_HUB_HOSTS = ("huggingface.co", "hf.co", "www.huggingface.co")
_HF_FLAGS = ("-hf", "-hfr", "--hf-repo")


@dataclass(frozen=True)
class HubRef:
    """A model on the Hub: a repo and either a quant tag, an exact file, or neither.

    With neither, llama.cpp picks Q4_K_M, then Q8_0, then the first model file
    (common/download.cpp find_best_model); kvgui picks the same way.
    """

    repo: str
    quant: str | None = None
    filename: str | None = None
    revision: str = DEFAULT_REVISION

    @property
    def spec(self) -> str:
        """``repo[:quant]`` as llama.cpp's ``-hf`` takes it."""
        return f"{self.repo}:{self.quant}" if self.quant else self.repo

    def __str__(self) -> str:
        if self.filename:
            return f"{self.repo}/{self.filename}"
        return self.spec


def is_valid_repo_id(repo: str) -> bool:
    """llama.cpp's rule (common/hf-cache.cpp is_valid_repo_id): ``[A-Za-z0-9_]`` runs joined by
    single ``/``, ``.`` or ``-``, exactly one ``/``, at most 256 characters."""
    if not repo or len(repo) > 256:
        return False
    return re.fullmatch(r"[A-Za-z0-9_]+(?:[/.\-][A-Za-z0-9_]+)*", repo) is not None \
        and repo.count("/") == 1


def parse_hub_ref(text: str, *, hub_hosts: tuple[str, ...] = ()) -> HubRef | None:
    """A HubRef if ``text`` names a model on the Hub, else None (then it is a path).

    ``hub_hosts`` adds hosts whose URLs count as Hub URLs (the host of HF_ENDPOINT).
    A name ending in ``.gguf`` is always a path, as is anything with a backslash.
    """
    t = text.strip()
    for flag in _HF_FLAGS:
        if t.startswith(flag + " ") or t.startswith(flag + "="):
            t = t[len(flag) + 1:].strip()
            break
    if not t or "\\" in t:
        return None
    if "://" in t:
        return _from_url(t, hub_hosts)
    for prefix in ("hf.co/", "huggingface.co/"):
        if t.startswith(prefix):
            t = t[len(prefix):]
            break
    if t.lower().endswith(".gguf"):
        return None
    repo, _, quant = t.partition(":")
    if not is_valid_repo_id(repo):
        return None
    if quant and not re.fullmatch(r"[A-Za-z0-9_.\-]+", quant):
        return None
    return HubRef(repo, quant or None)


def _from_url(url: str, hub_hosts: tuple[str, ...]) -> HubRef | None:
    u = urlparse(url)
    host = (u.hostname or "").lower()
    extra = tuple(h.lower() for h in hub_hosts)
    if u.scheme not in ("http", "https") or host not in (*_HUB_HOSTS, *extra):
        return None
    parts = [unquote(p) for p in u.path.split("/") if p]
    if len(parts) < 2:
        return None
    repo = f"{parts[0]}/{parts[1]}"
    if not is_valid_repo_id(repo):
        return None
    if len(parts) == 2:
        return HubRef(repo)
    if parts[2] in ("resolve", "blob") and len(parts) >= 5:
        filename = "/".join(parts[4:])
        if not filename.lower().endswith(".gguf"):
            return None
        return HubRef(repo, None, filename, parts[3])
    if parts[2] == "tree" and len(parts) >= 4:
        return HubRef(repo, revision=parts[3])
    return None
