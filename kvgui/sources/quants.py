"""A repo's GGUF files grouped by quant, exactly as llama.cpp's ``-hf repo:quant`` sees them.

The rules are those of common/download.cpp at the bundled commit: the quant tag is the last
``-``/``.``-separated word of the name before the split suffix (``…-Q4_K_M-00001-of-00003``
gives Q4_K_M), a split model is every file with the same prefix and part count, files naming
mmproj/imatrix/mtp-/eagle3-/dflash-/dspark- are not models, and ``repo:TAG`` picks the first
model file (in listing order) whose path contains TAG followed by ``.`` or ``-``; with no tag,
Q4_K_M, then Q8_0, then the first model. Matching llama.cpp means ``kvgui fit repo:q4_k_m``
plans the very file ``llama-server -hf repo:q4_k_m`` will load.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_SPLIT = re.compile(r"^(.+)-([0-9]{5})-of-([0-9]{5})$", re.IGNORECASE)
_TAG = re.compile(r"[-.]([A-Z0-9_]+)$", re.IGNORECASE)
_NOT_MODELS = ("mmproj", "imatrix", "mtp-", "eagle3-", "dflash-", "dspark-")
DEFAULT_TAGS = ("Q4_K_M", "Q8_0")


@dataclass(frozen=True)
class RepoFile:
    """One file of a repo at a commit, as the Hub lists it."""

    path: str
    size: int | None = None
    sha256: str | None = None  # the LFS object id (what the Hub publishes for LFS files)


@dataclass(frozen=True)
class SplitInfo:
    prefix: str  # the path without ".gguf" and without the split suffix; the tag is included
    tag: str  # upper case; "" when the name has none
    index: int
    count: int


def split_info(path: str) -> SplitInfo | None:
    """llama.cpp's get_gguf_split_info; None for a name that does not end in .gguf."""
    if not path.endswith(".gguf"):
        return None
    prefix = path[: -len(".gguf")]
    index = count = 1
    m = _SPLIT.match(prefix)
    if m:
        prefix, index, count = m.group(1), int(m.group(2)), int(m.group(3))
    t = _TAG.search(prefix)
    return SplitInfo(prefix, t.group(1).upper() if t else "", index, count)


def is_model_file(path: str) -> bool:
    """llama.cpp's gguf_filename_is_model: a .gguf that is not a projector or side file."""
    name = path.rsplit("/", 1)[-1]
    return path.endswith(".gguf") and not any(k in name for k in _NOT_MODELS)


def is_projector(path: str) -> bool:
    return path.endswith(".gguf") and "mmproj" in path.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class QuantGroup:
    """One quant of a repo: the file, or every part of a split file, in part order."""

    tag: str  # "" for a file whose name carries no tag
    files: tuple[RepoFile, ...]
    projector: bool = False  # a vision projector (mmproj), not a model

    @property
    def first(self) -> RepoFile:
        return self.files[0]

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)

    @property
    def complete(self) -> bool:
        """Every part of a split model is listed."""
        info = split_info(self.first.path)
        return info is None or len(self.files) == info.count

    @property
    def label(self) -> str:
        return self.tag or self.first.path.rsplit("/", 1)[-1]


def split_parts(files: Sequence[RepoFile], first: RepoFile) -> tuple[RepoFile, ...]:
    """llama.cpp's get_split_files: the parts that belong with ``first``, in part order."""
    info = split_info(first.path)
    if info is None or info.count <= 1:
        return (first,)
    same = []
    for f in files:
        other = split_info(f.path)
        if other is not None and other.count == info.count and other.prefix == info.prefix:
            same.append((other.index, f))
    return tuple(f for _, f in sorted(same, key=lambda p: p[0]))


def group_quants(files: Sequence[RepoFile]) -> list[QuantGroup]:
    """Every model file (joined with its parts) and every projector, in listing order."""
    groups: list[QuantGroup] = []
    for f in files:
        info = split_info(f.path)
        if info is None or (info.count > 1 and info.index != 1):
            continue
        if is_model_file(f.path):
            groups.append(QuantGroup(info.tag, split_parts(files, f)))
        elif is_projector(f.path):
            groups.append(QuantGroup(info.tag, split_parts(files, f), projector=True))
    return groups


def find_best_model(files: Sequence[RepoFile], tag: str | None) -> RepoFile | None:
    """The file ``-hf repo[:tag]`` loads (llama.cpp's find_best_model), or None."""
    for t in ([tag] if tag else list(DEFAULT_TAGS)):
        pattern = re.compile(re.escape(t) + r"[.-]", re.IGNORECASE)
        for f in files:
            info = split_info(f.path)
            if is_model_file(f.path) and pattern.search(f.path) and info is not None \
                    and not (info.count > 1 and info.index != 1):
                return f
    if not tag:
        for f in files:
            info = split_info(f.path)
            if is_model_file(f.path) and info is not None \
                    and not (info.count > 1 and info.index != 1):
                return f
    return None


def group_for(files: Sequence[RepoFile], tag: str | None,
              filename: str | None = None) -> QuantGroup | None:
    """The quant a reference names: an exact file (with its parts), or llama.cpp's pick."""
    if filename is not None:
        f = next((f for f in files if f.path == filename), None)
        if f is None:
            return None
        info = split_info(f.path)
        if info is not None and info.count > 1 and info.index != 1:  # any part opens the model
            first = next((g for g in split_parts(files, f)
                          if (split_info(g.path) or info).index == 1), f)
            f = first
        return QuantGroup(info.tag if info else "", split_parts(files, f),
                          projector=is_projector(f.path))
    best = find_best_model(files, tag)
    if best is None:
        return None
    info = split_info(best.path)
    return QuantGroup(info.tag if info else "", split_parts(files, best))
