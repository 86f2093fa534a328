"""A GGUF header reader: metadata and the tensor table, never tensor data.

Why not ``gguf.GGUFReader``: it memory-maps the whole file and decodes every array element
into numpy objects, which takes seconds for a 262K-token vocabulary. Here a string array is
only walked (to find where the next key starts) and decoded when someone asks for it, and every
length is checked against the bytes that remain before anything is allocated, so a hostile or
truncated file fails fast with one ``GGUFError``.

The bytes come from a ``ByteSource``: a local file here, or anything else that can read a range
(kvgui.sources.remote_header reads a file on the Hugging Face Hub with HTTP range requests).
One parser for both is what makes the estimate of a remote file equal that of the same file on
disk.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol, overload

from kvgui.core.gguf import ggml_types

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4
_MAX_NESTING = 4
_MAX_KEY_BYTES = 65535  # llama.cpp refuses longer keys too
_MAX_STRING_BYTES = 64 << 20  # no real metadata string (a chat template, a token) comes close
_LAZY_ARRAY = 4096  # numeric arrays longer than this are unpacked on first access

# GGUF metadata value types (gguf.h enum gguf_type)
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY = range(10)
_UINT64, _INT64, _FLOAT64 = 10, 11, 12
_SCALARS: dict[int, struct.Struct] = {
    _UINT8: struct.Struct("<B"),
    _INT8: struct.Struct("<b"),
    _UINT16: struct.Struct("<H"),
    _INT16: struct.Struct("<h"),
    _UINT32: struct.Struct("<I"),
    _INT32: struct.Struct("<i"),
    _FLOAT32: struct.Struct("<f"),
    _BOOL: struct.Struct("<?"),
    _UINT64: struct.Struct("<Q"),
    _INT64: struct.Struct("<q"),
    _FLOAT64: struct.Struct("<d"),
}
_ARRAY_FORMAT = {
    _UINT8: "B", _INT8: "b", _UINT16: "H", _INT16: "h", _UINT32: "I", _INT32: "i",
    _FLOAT32: "f", _BOOL: "?", _UINT64: "Q", _INT64: "q", _FLOAT64: "d",
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_SPLIT_NAME = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


class GGUFError(Exception):
    """A file that is not a readable GGUF model; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: ne0 (row length) first
    type_id: int
    offset: int  # relative to the data section of its file
    nbytes: int

    @property
    def type_name(self) -> str:
        return ggml_types.by_id(self.type_id).name

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class StringArray(Sequence[str]):
    """A GGUF string array kept as raw bytes; elements are decoded on first access."""

    def __init__(self, raw: bytes, count: int) -> None:
        self._raw = raw
        self._count = count
        self._items: list[str] | None = None

    def __len__(self) -> int:
        return self._count

    def _decode(self) -> list[str]:
        if self._items is None:
            raw, off, items = self._raw, 0, []
            unpack = _U64.unpack_from
            for _ in range(self._count):
                (n,) = unpack(raw, off)
                off += 8
                items.append(raw[off : off + n].decode("utf-8", errors="replace"))
                off += n
            self._items = items
        return self._items

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        return self._decode()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decode())

    def __repr__(self) -> str:
        return f"StringArray(<{self._count} strings>)"


class NumericArray(Sequence[Any]):
    """A long GGUF number array (token scores, types) unpacked on first access."""

    def __init__(self, raw: bytes, fmt: str, count: int) -> None:
        self._raw, self._fmt, self._count = raw, fmt, count
        self._items: list[Any] | None = None

    def __len__(self) -> int:
        return self._count

    def _values(self) -> list[Any]:
        if self._items is None:
            self._items = list(struct.unpack(f"<{self._count}{self._fmt}", self._raw))
        return self._items

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        return self._values()[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values())

    def __repr__(self) -> str:
        return f"NumericArray(<{self._count} x {self._fmt}>)"


@dataclass
class GGUFFile:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    file_bytes: int  # all split parts together
    parts: list[Path] = field(default_factory=list)
    alignment: int = DEFAULT_ALIGNMENT
    header_bytes: list[int] = field(default_factory=list)  # per part: where its data starts

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


class ByteSource(Protocol):
    """Random access to the bytes of one GGUF file, wherever they are.

    ``first_read`` is how much the reader asks for at first; every later miss asks for at least
    ``growth`` times more than the one before (a remote source starts small and grows, so a
    small header costs one small request and a 262K-token vocabulary a few large ones).
    ``read_at`` returns ``n`` bytes, fewer only at the end of the file.
    """

    @property
    def name(self) -> str: ...  # for messages: a path, or repo/file

    @property
    def size(self) -> int: ...

    @property
    def first_read(self) -> int: ...

    @property
    def growth(self) -> int: ...

    def read_at(self, offset: int, n: int) -> bytes: ...


class LocalFile:
    """A ByteSource over an open local file (1 MiB reads: the page cache makes them cheap)."""

    first_read = 1 << 20
    growth = 1

    def __init__(self, f: BinaryIO, name: str, size: int) -> None:
        self._f, self.name, self.size = f, name, size

    def read_at(self, offset: int, n: int) -> bytes:
        self._f.seek(offset)
        return self._f.read(n)


class _Cursor:
    """Sequential reads from a ByteSource with every length checked against what remains."""

    def __init__(self, source: ByteSource) -> None:
        self._src = source
        self._path = source.name
        self.size = source.size
        self._buf = b""
        self._base = 0  # file offset of _buf[0]
        self.pos = 0  # absolute file offset
        self._chunk = source.first_read

    def fail(self, reason: str) -> GGUFError:
        return GGUFError(self._path, reason)

    def _ensure(self, n: int, what: str) -> int:
        """Make [pos, pos+n) available in the buffer; return its start index in the buffer."""
        if n < 0 or self.pos + n > self.size:
            raise self.fail(
                f"truncated or corrupt header: {what} needs {n} bytes at offset {self.pos}, "
                f"but the file has {self.size} bytes"
            )
        start = self.pos - self._base
        if start < 0 or start + n > len(self._buf):
            want = max(n, self._chunk)
            self._chunk *= self._src.growth
            data = self._src.read_at(self.pos, min(want, self.size - self.pos))
            if len(data) < n:
                raise self.fail(f"file ended early while reading {what} at offset {self.pos}")
            self._buf, self._base, start = data, self.pos, 0
        return start

    def read(self, st: struct.Struct, what: str) -> Any:
        i = self._ensure(st.size, what)
        self.pos += st.size
        return st.unpack_from(self._buf, i)[0]

    def raw(self, n: int, what: str) -> bytes:
        i = self._ensure(n, what)
        self.pos += n
        return self._buf[i : i + n]

    def string(self, what: str) -> str:
        n = self.read(_U64, what + " length")
        if n > self.size - self.pos or n > _MAX_STRING_BYTES:
            raise self.fail(f"{what}: string length {n} is larger than the rest of the file")
        return self.raw(n, what).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> bytes:
        """Walk ``count`` length-prefixed strings; return their raw bytes for lazy decoding.

        The hot loop has no bounds checks: running off the buffer raises, and then the
        window grows (or the string is found to be longer than the file).
        """
        start = self.pos
        remaining = self.size - start
        if count * 8 > remaining:
            raise self.fail(f"{what}: {count} strings cannot fit in the {remaining} bytes left")
        window = min(remaining, max(count * 24, 4096))
        unpack = _U64.unpack_from
        while True:
            i0 = self._ensure(window, what)
            buf = self._buf
            end = i0 + window
            i = i0
            try:
                for _ in range(count):
                    i += 8 + unpack(buf, i)[0]
                if i <= end:
                    break
            except (struct.error, OverflowError):  # ran off the buffer, or a wild length
                pass
            if i + 8 <= end:  # a string's length sent us past the window: is it plausible?
                n = unpack(buf, i)[0]
                if n > _MAX_STRING_BYTES or start + (i - i0) + 8 + n > self.size:
                    raise self.fail(f"{what}: string length {n} at offset {start + i - i0} "
                                    "is larger than the rest of the file") from None
            if window >= remaining:
                raise self.fail(f"{what}: the string array runs past the end of the file")
            window = min(remaining, window * 2)
        length = i - i0
        self.pos = start + length
        return buf[i0:i]

def _read_value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> Any:
    st = _SCALARS.get(vtype)
    if st is not None:
        return cur.read(st, key)
    if vtype == _STRING:
        return cur.string(key)
    if vtype == _ARRAY:
        if depth >= _MAX_NESTING:
            raise cur.fail(f"{key}: arrays nested more than {_MAX_NESTING} deep")
        etype = cur.read(_U32, key + " array type")
        count = cur.read(_U64, key + " array length")
        remaining = cur.size - cur.pos
        if etype in _ARRAY_FORMAT:
            item = _SCALARS[etype].size
            if count * item > remaining:
                raise cur.fail(
                    f"{key}: array of {count} items needs {count * item} bytes, "
                    f"only {remaining} left"
                )
            data = cur.raw(count * item, key)
            if count > _LAZY_ARRAY:
                return NumericArray(data, _ARRAY_FORMAT[etype], count)
            return list(struct.unpack(f"<{count}{_ARRAY_FORMAT[etype]}", data))
        if etype == _STRING:
            return StringArray(cur.skip_strings(count, key), count)
        if etype == _ARRAY:
            if count * 12 > remaining:
                raise cur.fail(f"{key}: {count} nested arrays cannot fit in {remaining} bytes")
            return [_read_value(cur, _ARRAY, key, depth + 1) for _ in range(count)]
        raise cur.fail(f"{key}: unknown array element type {etype}")
    raise cur.fail(f"{key}: unknown metadata value type {vtype}")


@dataclass(frozen=True)
class HeaderPart:
    """One file's header as read; ``data_start`` is where its tensor data begins."""

    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    size: int
    alignment: int
    data_start: int


def _open_local(path: Path) -> tuple[BinaryIO, int]:
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise GGUFError(path, "is a directory, not a GGUF file")
        f = open(path, "rb")  # noqa: SIM115 - the caller closes it
    except FileNotFoundError:
        raise GGUFError(path, "no such file") from None
    except IsADirectoryError:
        raise GGUFError(path, "is a directory, not a GGUF file") from None
    except PermissionError:
        raise GGUFError(path, "permission denied") from None
    except OSError as exc:
        raise GGUFError(path, f"cannot open: {exc.strerror or exc}") from None
    return f, size


def _read_one(path: Path) -> HeaderPart:
    f, size = _open_local(path)
    with f:
        return read_header(LocalFile(f, os.fspath(path), size))


def read_header(source: ByteSource) -> HeaderPart:
    """Parse one file's header (metadata, tensor table) from ``source``; checks every bound."""
    path, size = source.name, source.size
    cur = _Cursor(source)
    if size < 24:
        raise GGUFError(path, f"too small to be a GGUF file ({size} bytes)")
    magic = cur.raw(4, "magic")
    if magic != GGUF_MAGIC:
        raise GGUFError(path, f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    version = cur.read(_U32, "version")
    if version not in (2, 3):
        hint = " (GGUF v1 is no longer supported by llama.cpp)" if version == 1 else ""
        raise GGUFError(path, f"unsupported GGUF version {version}{hint}")
    n_tensors = cur.read(_U64, "tensor count")
    n_kv = cur.read(_U64, "metadata count")
    if n_kv * 13 > size or n_tensors * 28 > size:  # smallest possible entries
        raise GGUFError(
            path, f"corrupt header: {n_kv} metadata entries / {n_tensors} tensors "
            f"cannot fit in a {size}-byte file"
        )
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        klen = cur.read(_U64, "key length")
        if klen > _MAX_KEY_BYTES:
            raise GGUFError(path, f"corrupt header: metadata key of {klen} bytes")
        key = cur.raw(klen, "key").decode("utf-8", errors="replace")
        vtype = cur.read(_U32, f"{key} type")
        metadata[key] = _read_value(cur, vtype, key)
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFError(path, f"general.alignment must be a power of two, not {alignment!r}")
    raw_tensors = []
    for _ in range(n_tensors):
        name = cur.string("tensor name")
        n_dims = cur.read(_U32, f"{name} dimension count")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise GGUFError(path, f"tensor {name!r} has {n_dims} dimensions")
        shape = tuple(cur.read(_U64, f"{name} shape") for _ in range(n_dims))
        type_id = cur.read(_U32, f"{name} type")
        offset = cur.read(_U64, f"{name} offset")
        raw_tensors.append((name, shape, type_id, offset))
    data_start = -(-cur.pos // alignment) * alignment
    tensors = []
    data_bytes = size - data_start
    for name, shape, type_id, offset in raw_tensors:
        if type_id not in ggml_types.BY_ID:
            raise GGUFError(path, f"tensor {name!r} has unknown ggml type {type_id}")
        t = ggml_types.BY_ID[type_id]
        if shape[0] % t.block_size:
            raise GGUFError(
                path, f"tensor {name!r}: row of {shape[0]} is not a multiple of "
                f"{t.name}'s block size {t.block_size}"
            )
        nbytes = ggml_types.tensor_bytes(type_id, shape)
        if offset + nbytes > data_bytes:
            raise GGUFError(
                path, f"file is truncated: tensor {name!r} ends at byte "
                f"{data_start + offset + nbytes}, the file has {size}"
            )
        tensors.append(TensorInfo(name, shape, type_id, offset, nbytes))
    return HeaderPart(version, metadata, tensors, size, alignment, min(data_start, size))


def split_parts(path: Path) -> list[Path]:
    """All parts of a split model (``name-00001-of-00003.gguf``), from any one part."""
    m = _SPLIT_NAME.match(path.name)
    if not m:
        return [path]
    count = int(m.group("count"))
    return [path.with_name(f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf")
            for i in range(1, count + 1)]


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Read the header of a GGUF model (all parts of a split model; metadata from part 1)."""
    p = Path(path)
    parts = split_parts(p)
    if len(parts) > 1:
        missing = [q.name for q in parts if not q.exists()]
        if missing:
            raise GGUFError(p, f"split model is missing part(s): {', '.join(missing)}")
    first = _read_one(parts[0])
    split_count = first.metadata.get("split.count", 1)
    if len(parts) == 1 and isinstance(split_count, int) and split_count > 1:
        raise GGUFError(p, f"part of a {split_count}-part split model, but its name does not "
                        "follow the name-00001-of-0000N.gguf pattern")
    return _combine(parts[0], parts, [first, *(_read_one(q) for q in parts[1:])])


def read_gguf_sources(sources: Sequence[ByteSource]) -> GGUFFile:
    """Read a model whose parts (in order) are ``sources``: the same checks as read_gguf.

    ``path`` and ``parts`` of the result hold the sources' names."""
    if not sources:
        raise ValueError("no source to read")
    first = read_header(sources[0])
    split_count = first.metadata.get("split.count", 1)
    if isinstance(split_count, int) and split_count != len(sources) and \
            (split_count > 1 or len(sources) > 1):
        raise GGUFError(sources[0].name, f"part of a {split_count}-part split model, but "
                        f"{len(sources)} part(s) were given")
    names = [Path(s.name) for s in sources]
    return _combine(names[0], names, [first, *(read_header(s) for s in sources[1:])])


def _combine(path: Path, names: list[Path], parts: list[HeaderPart]) -> GGUFFile:
    first = parts[0]
    tensors = [t for part in parts for t in part.tensors]
    return GGUFFile(path, first.version, first.metadata, tensors,
                    sum(part.size for part in parts), names, first.alignment,
                    [part.data_start for part in parts])
