"""GGUF headers as plain, editable data, written byte for byte: for tests of bad input.

gguf-py's writer refuses what a hostile file contains (duplicate keys, a key of the wrong type,
misplaced tensor offsets), and kvgui's own reader keeps no types. Here a header is a list of
typed entries and tensors in file order: read one from a real file, change anything, write it
back -- every length, count and offset can also be set to a lie.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from kvgui.core.gguf import ggml_types
from kvgui.core.gguf.reader import (  # gguf.h enum gguf_type, and gguf_type_name
    ARRAY,
    BOOL,
    FLOAT32,
    FLOAT64,
    INT8,
    INT16,
    INT32,
    INT64,
    STRING,
    TYPE_NAMES,
    UINT8,
    UINT16,
    UINT32,
    UINT64,
)

__all__ = ["ARRAY", "BOOL", "FLOAT32", "FLOAT64", "INT8", "INT16", "INT32", "INT64", "STRING",
           "TYPE_NAMES", "UINT8", "UINT16", "UINT32", "UINT64", "Entry", "Header", "Tensor",
           "data_bytes", "encode", "from_metadata", "read", "write"]

FORMATS = {UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i",
           FLOAT32: "f", BOOL: "?", UINT64: "Q", INT64: "q", FLOAT64: "d"}


@dataclass
class Entry:
    """One metadata key: its GGUF type, and for an array the element type."""

    key: str
    vtype: int
    value: Any
    etype: int | None = None
    count: int | None = None  # an array (or string) length to write instead of the true one

    def clone(self, **changes: Any) -> Entry:
        return dataclasses.replace(self, **changes)


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]  # GGUF order: ne0 first
    type_id: int
    offset: int | None = None  # None: the next aligned offset, as writers place them

    @property
    def nbytes(self) -> int:
        t = ggml_types.BY_ID.get(self.type_id)
        n = 1
        for d in self.shape:
            n *= d
        return n * 4 if t is None else n // t.block_size * t.type_size


@dataclass
class Header:
    entries: list[Entry]
    tensors: list[Tensor]
    version: int = 3
    alignment: int = 32
    n_kv: int | None = None  # counts to write instead of the true ones (lies)
    n_tensors: int | None = None
    extra: bytes = field(default=b"")  # bytes after the tensor table, before the padding

    def get(self, key: str) -> Entry | None:
        return next((e for e in self.entries if e.key == key), None)

    def set(self, key: str, vtype: int, value: Any, etype: int | None = None) -> Header:
        """Replace (or add) ``key``; returns the header for chaining."""
        entry = Entry(key, vtype, value, etype)
        for i, e in enumerate(self.entries):
            if e.key == key:
                self.entries[i] = entry
                return self
        self.entries.append(entry)
        return self

    def drop(self, key: str) -> Header:
        self.entries = [e for e in self.entries if e.key != key]
        return self

    def copy(self) -> Header:
        return Header([e.clone() for e in self.entries],
                      [dataclasses.replace(t) for t in self.tensors], self.version,
                      self.alignment, self.n_kv, self.n_tensors, self.extra)


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


def _string(s: str | bytes) -> bytes:
    b = s.encode("utf-8", "surrogateescape") if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def _scalar(vtype: int, value: Any, count: int | None = None) -> bytes:
    if vtype == STRING:
        raw = _string(value)
        return raw if count is None else struct.pack("<Q", count) + raw[8:]
    return struct.pack("<" + FORMATS[vtype], value)


def _array_body(etype: int, items: list[Any], count: int | None) -> bytes:
    """Element type, length and elements; an array of arrays holds Entry items (their
    ``etype``, ``value`` and ``count``)."""
    out = [struct.pack("<IQ", etype, len(items) if count is None else count)]
    if etype == ARRAY:
        out += [_array_body(v.etype if v.etype is not None else UINT32, list(v.value), v.count)
                for v in items]
    elif etype == STRING:
        out += [_string(v) for v in items]
    elif etype in FORMATS:
        out.append(struct.pack(f"<{len(items)}{FORMATS[etype]}", *items))
    return b"".join(out)


def encode_entry(e: Entry) -> bytes:
    out = [_string(e.key), struct.pack("<I", e.vtype)]
    if e.vtype == ARRAY:
        etype = e.etype if e.etype is not None else UINT32
        out.append(_array_body(etype, list(e.value), e.count))
    elif e.vtype in FORMATS or e.vtype == STRING:
        out.append(_scalar(e.vtype, e.value, e.count))
    return b"".join(out)


def encode(h: Header) -> bytes:
    """The header bytes (magic .. tensor table), without the padding before the data."""
    out = [b"GGUF", struct.pack("<I", h.version),
           struct.pack("<QQ", len(h.tensors) if h.n_tensors is None else h.n_tensors,
                       len(h.entries) if h.n_kv is None else h.n_kv)]
    out += [encode_entry(e) for e in h.entries]
    offset = 0
    for t in h.tensors:
        off = offset if t.offset is None else t.offset
        out.append(_string(t.name) + struct.pack("<I", len(t.shape)) +
                   struct.pack(f"<{len(t.shape)}Q", *t.shape) + struct.pack("<IQ", t.type_id, off))
        offset = _pad(off + t.nbytes, h.alignment)
    out.append(h.extra)
    return b"".join(out)


def data_bytes(h: Header) -> int:
    """Bytes of the data section when the tensors lie where their offsets say."""
    end, offset = 0, 0
    for t in h.tensors:
        off = offset if t.offset is None else t.offset
        end = max(end, off + t.nbytes)
        offset = _pad(off + t.nbytes, h.alignment)
    return _pad(end, h.alignment) if end else 0


def write(h: Header, path: str | os.PathLike[str], *, data: int | None = None) -> Path:
    """Write the header and extend the file, sparse, over the data section (``data`` bytes:
    by default what the tensors need)."""
    p = Path(path)
    raw = encode(h)
    p.write_bytes(raw)
    size = _pad(len(raw), h.alignment) + (data_bytes(h) if data is None else data)
    os.truncate(p, max(size, len(raw)))
    return p


# ---------------------------------------------------------------------------------------------
# Reading a real header back into entries (straightforward: for test fixtures, not hostile files)
# ---------------------------------------------------------------------------------------------


def _read(f: BinaryIO, fmt: str) -> Any:
    st = struct.Struct("<" + fmt)
    return st.unpack(f.read(st.size))[0]


def _read_str(f: BinaryIO) -> str:
    n = _read(f, "Q")
    return f.read(n).decode("utf-8", "surrogateescape")


def _read_value(f: BinaryIO, vtype: int) -> tuple[Any, int | None]:
    if vtype == STRING:
        return _read_str(f), None
    if vtype in FORMATS:
        return _read(f, FORMATS[vtype]), None
    if vtype == ARRAY:
        etype, count = _read(f, "I"), _read(f, "Q")
        if etype == STRING:
            return [_read_str(f) for _ in range(count)], etype
        if etype in FORMATS:
            st = struct.Struct(f"<{count}{FORMATS[etype]}")
            return list(st.unpack(f.read(st.size))), etype
        raise ValueError(f"array of type {etype}: not a header this reader takes")
    raise ValueError(f"value type {vtype}")


def read(path: str | os.PathLike[str]) -> Header:
    """A well-formed GGUF file's header as entries and tensors, in file order."""
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path}: not a GGUF file")
        version = _read(f, "I")
        n_tensors, n_kv = _read(f, "Q"), _read(f, "Q")
        entries = []
        for _ in range(n_kv):
            key = _read_str(f)
            vtype = _read(f, "I")
            value, etype = _read_value(f, vtype)
            entries.append(Entry(key, vtype, value, etype))
        tensors = []
        for _ in range(n_tensors):
            name = _read_str(f)
            n_dims = _read(f, "I")
            shape = tuple(_read(f, "Q") for _ in range(n_dims))
            tensors.append(Tensor(name, shape, _read(f, "I"), _read(f, "Q")))
    align = next((e.value for e in entries if e.key == "general.alignment"), 32)
    return Header(entries, tensors, version, int(align))


_KINDS = {"bool": BOOL, "uint32": UINT32, "int32": INT32, "float32": FLOAT32, "string": STRING}


def from_metadata(metadata: dict[str, Any], tensors: Any) -> Header:
    """A header from kvgui's own form (a catalog model's metadata and TensorDef/TensorInfo
    rows), typed as kvgui.testing.sparse_gguf writes it (archspec.value_kind)."""
    from kvgui.core.model.archspec import value_kind

    entries = []
    for key, value in metadata.items():
        kind = value_kind(value)
        if kind.startswith("array:"):
            entries.append(Entry(key, ARRAY, list(value), _KINDS[kind[6:]]))
        else:
            entries.append(Entry(key, _KINDS[kind], value))
    return Header(entries, [Tensor(t.name, tuple(t.shape), t.type_id) for t in tensors])
