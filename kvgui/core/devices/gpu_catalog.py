"""A catalog of common GPUs (resources/gpus.json), to plan for hardware the user does not own.

Lookup is by words, not spelling: "rtx 4060", "NVIDIA GeForce RTX 4060", "4060" all find the
GeForce RTX 4060 and not the 4060 Ti, because the entry with the fewest words beyond the
query's wins. Names as drivers report them ("NVIDIA GeForce RTX 4060 Laptop GPU") match too.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# Words that say nothing about which card it is (vendor and brand names, filler).
_NOISE = frozenset(
    {
        "nvidia",
        "geforce",
        "amd",
        "radeon",
        "apple",
        "intel",
        "arc",
        "gpu",
        "graphics",
        "tesla",
        "instinct",
        "with",
        "edition",
        "generation",
        "mobile",
    }
)
# "16 GB" is one token; a model code with a 1-2 letter prefix stays whole ("a6000", "h100",
# "m2", "l40s", "mi300x") so "RTX 6000" is not "RTX A6000"; "rtx4060" and "4060ti" split.
_TOKEN = re.compile(r"(\d+)\s*gb\b|(?<![a-z])[a-z]{1,2}\d+(?:[a-z](?![a-z]))?|\d+|[a-z]+")


GB = 10**9  # spec sheets give memory bandwidth in decimal GB/s


@dataclass(frozen=True)
class CatalogGpu:
    """A GPU model: ``memory`` in bytes (spec-sheet size); ``unified`` = shares system RAM;
    ``bandwidth``: its memory bandwidth in bytes per second (the spec sheet's GB/s): decoding a
    token reads every offloaded weight once, so this bounds the predicted tokens/s (speed.py)."""

    name: str
    vendor: str
    kind: str
    memory: int
    unified: bool = False
    bandwidth: int = 0


def tokens(name: str) -> frozenset[str]:
    """Lower-case words and numbers: what a name says, however it is spelled."""
    out = set()
    for m in _TOKEN.finditer(name.lower()):
        out.add(f"{m.group(1)}gb" if m.group(1) is not None else m.group(0))
    if "laptop" in out or "mobile" in name.lower():
        out.add("laptop")
    return frozenset(out - _NOISE)


def _catalog_text() -> str:
    try:
        return (resources.files("kvgui.resources") / "gpus.json").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):  # a source checkout, not installed
        path = Path(__file__).resolve().parents[2] / "resources" / "gpus.json"
        return path.read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def catalog() -> tuple[CatalogGpu, ...]:
    data = json.loads(_catalog_text())
    return tuple(
        CatalogGpu(
            name=e["name"],
            vendor=e["vendor"],
            kind=e["kind"],
            memory=int(e["memory"]),
            unified=bool(e.get("unified", False)),
            bandwidth=int(float(e["bandwidth"]) * GB),
        )
        for e in data["gpus"]
    )


def _ranked(query: str) -> list[tuple[int, CatalogGpu]]:
    """Entries whose words include all the query's words, fewest extra words first."""
    want = tokens(query)
    if not want:
        return []
    hits = []
    for gpu in catalog():
        have = tokens(gpu.name)
        if want <= have:
            hits.append((len(have - want), gpu))
    hits.sort(key=lambda h: h[0])
    return hits


def find_gpu(query: str) -> CatalogGpu | None:
    """The catalog entry ``query`` names, or None when it names none or several that differ
    in memory (e.g. "M2 Max" comes with 32, 64 or 96 GB: say which)."""
    hits = _ranked(query)
    if not hits:
        return None
    best = hits[0][0]
    top = [gpu for extra, gpu in hits if extra == best]
    if len({(g.memory, g.vendor) for g in top}) == 1:
        return top[0]
    return None


def search_gpus(query: str, limit: int = 8) -> list[CatalogGpu]:
    """Candidates for ``query``, best first: word matches, else close spellings (typos)."""
    hits = [gpu for _, gpu in _ranked(query)]
    if hits:
        return hits[:limit]
    names = {" ".join(sorted(tokens(g.name))): g for g in catalog()}
    close = difflib.get_close_matches(" ".join(sorted(tokens(query))), list(names), n=limit)
    return [names[c] for c in close]
