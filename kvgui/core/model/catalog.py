"""The built-in model catalog: well-known models described by their GGUF header alone.

People plan before they download, so the GUI opens on these. resources/models.json stores
each model as a compact spec (see packaging/make_catalog.py); the full header -- metadata
and tensor table, exactly as a real file of that model and quant mix would have them -- is
expanded by kvgui.core.model.archspec on demand.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

from kvgui.core.gguf.reader import TensorInfo
from kvgui.core.model.archspec import Header, ModelSpec, build_header, spec_from_dict
from kvgui.core.model.info import ModelInfo

_RESOURCE = "models.json"


@dataclass(frozen=True)
class CatalogEntry:
    """One model in one quant mix; figures are what a real file of it holds."""

    name: str
    arch: str
    quant: str
    hf_repo: str
    n_params: int
    n_tensors: int
    file_bytes: int
    spec: ModelSpec = field(repr=False, compare=False)

    @property
    def label(self) -> str:
        return f"{self.name} {self.quant}"

    def build(self, *, vocab: bool = True) -> Header:
        """The archspec header (TensorDef rows, with or without the generated token list)."""
        return _expand(self, vocab)

    def header(self) -> tuple[dict[str, Any], list[TensorInfo], int]:
        """(metadata, tensors, file_bytes) in the shape ModelInfo.from_header takes."""
        h = self.build()
        tensors = [TensorInfo(t.name, t.shape, t.type_id, off, t.nbytes)
                   for t, off in zip(h.tensors, h.offsets(), strict=True)]
        return dict(h.metadata), tensors, h.file_bytes


@lru_cache(maxsize=2)
def _expand(entry: CatalogEntry, vocab: bool) -> Header:
    # keyed on the entry's figures (spec is left out of its hash: it holds a dict)
    return build_header(entry.spec, vocab=vocab)


def _read_json() -> dict[str, Any]:
    text = resources.files("kvgui.resources").joinpath(_RESOURCE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def entries_from_json(data: dict[str, Any]) -> list[CatalogEntry]:
    out = []
    for m in data["models"]:
        for quant in m["quants"]:
            d = m["derived"][quant]
            out.append(CatalogEntry(
                name=str(m["name"]), arch=str(m["arch"]), quant=str(quant),
                hf_repo=str(m.get("hf", "")), n_params=int(d["n_params"]),
                n_tensors=int(d["n_tensors"]), file_bytes=int(d["file_bytes"]),
                spec=spec_from_dict(m, quant),
            ))
    return out


@lru_cache(maxsize=1)
def _load() -> tuple[CatalogEntry, ...]:
    return tuple(entries_from_json(_read_json()))


def load_catalog() -> list[CatalogEntry]:
    """Every catalog entry, one per model and quant mix, in catalog order."""
    return list(_load())


def find(label_or_name: str, quant: str | None = None) -> CatalogEntry:
    """The entry called ``"<name> <quant>"`` or ``name`` (first quant unless ``quant``)."""
    for e in _load():
        if e.label == label_or_name or (e.name == label_or_name and quant in (None, e.quant)):
            return e
    raise KeyError(f"no catalog model {label_or_name!r}" + (f" in {quant}" if quant else ""))


def catalog_model(label_or_name: str, quant: str | None = None) -> ModelInfo:
    """The ModelInfo of a catalog entry (its header, built from the published config)."""
    metadata, tensors, file_bytes = find(label_or_name, quant).header()
    return ModelInfo.from_header(metadata, tensors, file_bytes=file_bytes)
