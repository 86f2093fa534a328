"""A GGUF header reader: metadata and the tensor table, never tensor data.

Why not ``gguf.GGUFReader``: it memory-maps the whole file and decodes every array element
into numpy objects, which takes seconds for a 262K-token vocabulary. Here a string array is
only walked (to find where the next key starts) and a long number array skipped; both are read
from the file again when someone asks for their elements.

The file is checked the way ggml's gguf.cpp checks it before llama.cpp loads it, so kvgui
never estimates a model llama.cpp would refuse: no empty or duplicate keys, no nested arrays,
``general.alignment`` a u32 power of two, tensor names unique and under 64 bytes, every
dimension and element count representable, each tensor's offset exactly where the previous
one ends (aligned), and all data inside the file. It is also read within a budget whatever the
header claims: at most ``MAX_HEADER_BYTES`` of header, ``MAX_KEYS`` keys, ``MAX_TENSORS``
tensors and ``MAX_STRINGS`` array strings, with every length checked against the bytes that
remain before anything is allocated -- so a hostile, truncated or sparse file fails within a
second or two with one ``GGUFError``, and never hangs (a FIFO is refused before it is opened
for reading).
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, overload

from kvgui.core import untrusted
from kvgui.core.gguf import ggml_types

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_NAME_BYTES = 63  # GGML_MAX_NAME - 1: gguf.cpp refuses longer tensor names
_MAX_KEY_BYTES = 65535
_MAX_STRING_BYTES = 64 << 20  # no real metadata string (a chat template, a token) comes close
# Budgets: 10-100 times what the largest real models need (a 262K vocabulary with its merges
# is under 1M strings and 20 MB of header; no llama.cpp architecture has 2000 tensors a layer).
MAX_HEADER_BYTES = 256 << 20
MAX_KEYS = 1 << 16
MAX_TENSORS = 1 << 17
MAX_STRINGS = 1 << 23  # all string arrays together: walking them is the slow part
_MAX_HELD_BYTES = 64 << 20  # keys, strings and names kept in memory
_EAGER_ARRAY = 4096  # number arrays up to this long are unpacked while reading ...
_EAGER_BUDGET = 1 << 18  # ... until they hold this many elements together; longer ones lazily
MAX_SPLIT_COUNT = 65535  # split.count is a uint16 in llama.cpp

# GGUF metadata value types (gguf.h enum gguf_type)
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = range(10)
UINT64, INT64, FLOAT64 = 10, 11, 12
TYPE_NAMES = {UINT8: "u8", INT8: "i8", UINT16: "u16", INT16: "i16", UINT32: "u32",
              INT32: "i32", FLOAT32: "f32", BOOL: "bool", STRING: "str", ARRAY: "arr",
              UINT64: "u64", INT64: "i64", FLOAT64: "f64"}  # gguf_type_name
_SCALARS: dict[int, struct.Struct] = {
    UINT8: struct.Struct("<B"),
    INT8: struct.Struct("<b"),
    UINT16: struct.Struct("<H"),
    INT16: struct.Struct("<h"),
    UINT32: struct.Struct("<I"),
    INT32: struct.Struct("<i"),
    FLOAT32: struct.Struct("<f"),
    BOOL: struct.Struct("<?"),
    UINT64: struct.Struct("<Q"),
    INT64: struct.Struct("<q"),
    FLOAT64: struct.Struct("<d"),
}
_ARRAY_FORMAT = {
    UINT8: "B", INT8: "b", UINT16: "H", INT16: "h", UINT32: "I", INT32: "i",
    FLOAT32: "f", BOOL: "?", UINT64: "Q", INT64: "q", FLOAT64: "d",
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_INT64_MAX = 2**63 - 1
_SPLIT_NAME = re.compile(r"^(?P<prefix>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")


class GGUFError(Exception):
    """A file that is not a readable GGUF model; the message is one line that names the file
    and the problem (text from the file in it is escaped and cut)."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        shown = untrusted.one_line(os.fspath(path), 300)
        super().__init__(f"{shown}: {untrusted.one_line(reason, 400)}")
        self.path = os.fspath(path)
        self.reason = reason


def quoted(text: str, limit: int = 60) -> str:
    """Text from the file for a message: quoted, escaped, cut."""
    return "'" + untrusted.one_line(text, limit) + "'"


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


class _LazyArray:
    """An array's place in the file; its elements are read from there on first access."""

    def __init__(self, path: Path, offset: int, nbytes: int, count: int) -> None:
        self._path, self._offset, self._nbytes, self._count = path, offset, nbytes, count

    def __len__(self) -> int:
        return self._count

    def _raw(self) -> bytes:
        try:
            with open(self._path, "rb") as f:
                f.seek(self._offset)
                data = f.read(self._nbytes)
        except OSError as exc:
            raise GGUFError(self._path, f"cannot read an array again: {exc.strerror or exc}"
                            ) from None
        if len(data) != self._nbytes:
            raise GGUFError(self._path, f"changed since it was read (array at offset "
                            f"{self._offset})")
        return data


class StringArray(_LazyArray, Sequence[str]):
    """A GGUF string array: its length, and its strings decoded on first access."""

    _items: list[str] | None = None

    def _decode(self) -> list[str]:
        if self._items is None:
            raw, off, items = self._raw(), 0, []
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


class NumericArray(_LazyArray, Sequence[Any]):
    """A long GGUF number array (token scores, types) read and unpacked on first access."""

    _items: list[Any] | None = None

    def __init__(self, path: Path, offset: int, fmt: str, count: int) -> None:
        super().__init__(path, offset, count * struct.calcsize("<" + fmt), count)
        self._fmt = fmt

    def _values(self) -> list[Any]:
        if self._items is None:
            self._items = list(struct.unpack(f"<{self._count}{self._fmt}", self._raw()))
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
    # key -> (gguf type, element type for an array else None), of the first part
    types: dict[str, tuple[int, int | None]] = field(default_factory=dict)

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))


@dataclass
class _Part:
    version: int
    metadata: dict[str, Any]
    types: dict[str, tuple[int, int | None]]
    tensors: list[TensorInfo]
    size: int
    alignment: int


class _Cursor:
    """Sequential reads from a file with every length checked against what remains, and the
    reader's budgets kept."""

    def __init__(self, f: BinaryIO, path: Path, size: int) -> None:
        self._f = f
        self._path = path
        self.size = size
        self._buf = b""
        self._base = 0  # file offset of _buf[0]
        self.pos = 0  # absolute file offset
        self.held = 0  # bytes of keys and strings kept
        self.eager = 0  # elements of number arrays unpacked
        self.strings = 0  # array strings walked

    def fail(self, reason: str) -> GGUFError:
        return GGUFError(self._path, reason)

    @staticmethod
    def _what(what: str) -> str:
        return untrusted.one_line(what, 80)

    def _check_room(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise self.fail(f"truncated or corrupt header: {self._what(what)} needs {n} bytes "
                            f"at offset {self.pos}, but the file has {self.size} bytes")
        if self.pos + n > MAX_HEADER_BYTES:
            raise self.fail(f"{self._what(what)} at offset {self.pos}: the header would be "
                            f"larger than {MAX_HEADER_BYTES >> 20} MiB, which no model's is")

    def _ensure(self, n: int, what: str) -> int:
        """Make [pos, pos+n) available in the buffer; return its start index in the buffer."""
        self._check_room(n, what)
        start = self.pos - self._base
        if start < 0 or start + n > len(self._buf):
            want = max(n, 1 << 20)
            self._f.seek(self.pos)
            data = self._f.read(min(want, self.size - self.pos))
            if len(data) < n:
                raise self.fail(f"file ended early while reading {self._what(what)} at offset "
                                f"{self.pos}")
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

    def skip(self, n: int, what: str) -> int:
        """Step over ``n`` bytes without reading them; returns where they start."""
        self._check_room(n, what)
        start = self.pos
        self.pos += n
        return start

    def hold(self, n: int, what: str) -> None:
        self.held += n
        if self.held > _MAX_HELD_BYTES:
            raise self.fail(f"{self._what(what)} at offset {self.pos}: the header's keys and "
                            f"strings exceed {_MAX_HELD_BYTES >> 20} MiB")

    def string(self, what: str, limit: int = _MAX_STRING_BYTES) -> bytes:
        at = self.pos
        n = self.read(_U64, what + " length")
        if n > limit:
            raise self.fail(f"{self._what(what)} at offset {at}: a string of {n} bytes "
                            f"(at most {limit} are read)")
        if n > self.size - self.pos:
            raise self.fail(f"{self._what(what)} at offset {at}: string length {n} is larger "
                            "than the rest of the file")
        self.hold(n, what)
        return self.raw(n, what)

    def walk_strings(self, count: int, what: str) -> tuple[int, int]:
        """Step over ``count`` length-prefixed strings; returns (offset, bytes) of them all.

        Memory stays one buffer whatever the array holds; time is bounded by MAX_STRINGS."""
        start = self.pos
        self.strings += count
        if self.strings > MAX_STRINGS:
            raise self.fail(f"{self._what(what)} at offset {start}: more than {MAX_STRINGS} "
                            "strings in the header's arrays, which no model has")
        if count * 8 > self.size - start:
            raise self.fail(f"{self._what(what)} at offset {start}: {count} strings cannot fit "
                            f"in the {self.size - start} bytes left")
        unpack = _U64.unpack_from
        left = count
        while left:
            i = self._ensure(8, what)
            buf, end, done = self._buf, len(self._buf), 0
            while done < left:
                # fast: a run of strings without bounds checks; running off the buffer (or a
                # wild length) is noticed after the run, and the run is redone with checks
                k = min(4096, left - done)
                j = i
                try:
                    for _ in range(k):
                        j += 8 + unpack(buf, j)[0]
                except (struct.error, OverflowError):  # off the buffer, or a wild length
                    j = end + 1
                if j <= end:
                    i, done = j, done + k
                    continue
                while done < left and i + 8 <= end:
                    j = i + 8 + unpack(buf, i)[0]
                    if j > end:
                        break
                    i, done = j, done + 1
                break
            self.pos = self._base + i
            left -= done
            if left and not done:  # one string longer than the buffer: is it plausible?
                n = self.read(_U64, what)
                if n > _MAX_STRING_BYTES or n > self.size - self.pos:
                    raise self.fail(f"{self._what(what)}: string length {n} at offset "
                                    f"{self.pos - 8} is larger than the rest of the file")
                self.skip(n, what)
                left -= 1
        return start, self.pos - start


def _read_value(cur: _Cursor, vtype: int, key: str) -> tuple[Any, int | None]:
    """A metadata value and, for an array, its element type."""
    st = _SCALARS.get(vtype)
    if st is not None:
        return cur.read(st, f"key '{key}'"), None
    if vtype == STRING:
        return cur.string(f"key '{key}'").decode("utf-8", errors="replace"), None
    if vtype != ARRAY:
        raise cur.fail(f"key {quoted(key)} at offset {cur.pos - 4} has invalid GGUF type "
                       f"{vtype}")
    etype = cur.read(_U32, f"key '{key}'")
    count = cur.read(_U64, f"key '{key}'")
    remaining = cur.size - cur.pos
    if etype in _ARRAY_FORMAT:
        item = _SCALARS[etype].size
        if count * item > remaining:
            raise cur.fail(f"key {quoted(key)}: array of {count} items needs {count * item} "
                           f"bytes at offset {cur.pos}, only {remaining} left")
        if count <= _EAGER_ARRAY and cur.eager + count <= _EAGER_BUDGET:
            cur.eager += count
            data = cur.raw(count * item, f"key '{key}'")
            return list(struct.unpack(f"<{count}{_ARRAY_FORMAT[etype]}", data)), etype
        offset = cur.skip(count * item, f"key '{key}'")
        return NumericArray(cur._path, offset, _ARRAY_FORMAT[etype], count), etype
    if etype == STRING:
        offset, nbytes = cur.walk_strings(count, f"key '{key}'")
        return StringArray(cur._path, offset, nbytes, count), etype
    if etype == ARRAY:  # gguf.cpp: "key has invalid GGUF type" for an array's arrays
        raise cur.fail(f"key {quoted(key)} is an array of arrays, which llama.cpp cannot read")
    raise cur.fail(f"key {quoted(key)} has unknown array element type {etype}")


def _open_regular(path: Path) -> tuple[BinaryIO, int]:
    """Open ``path`` for reading without blocking on a FIFO; refuse anything but a file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise GGUFError(path, "no such file") from None
    except IsADirectoryError:
        raise GGUFError(path, "is a directory, not a GGUF file") from None
    except PermissionError:
        raise GGUFError(path, "permission denied") from None
    except OSError as exc:
        raise GGUFError(path, f"cannot open: {exc.strerror or exc}") from None
    except ValueError as exc:  # a NUL in the path
        raise GGUFError(path, f"cannot open: {exc}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        kind = ("a directory" if stat.S_ISDIR(st.st_mode) else
                "a FIFO (named pipe)" if stat.S_ISFIFO(st.st_mode) else
                "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else
                "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise GGUFError(path, f"is {kind}, not a GGUF file")
    if hasattr(os, "set_blocking"):
        os.set_blocking(fd, True)
    return os.fdopen(fd, "rb"), st.st_size


def _read_one(path: Path) -> _Part:
    """Read one file: its header, checked as gguf.cpp checks it."""
    f, size = _open_regular(path)
    with f:
        cur = _Cursor(f, path, size)
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
        if n_kv > MAX_KEYS or n_tensors > MAX_TENSORS:
            raise GGUFError(path, f"corrupt header: {n_kv} metadata entries / {n_tensors} "
                            f"tensors (kvgui reads up to {MAX_KEYS} / {MAX_TENSORS}; no "
                            "model has more)")
        metadata: dict[str, Any] = {}
        types: dict[str, tuple[int, int | None]] = {}
        seen: set[bytes] = set()
        for i in range(n_kv):
            at = cur.pos
            raw_key = cur.string(f"metadata key {i}", _MAX_KEY_BYTES)
            key = raw_key.decode("utf-8", errors="replace")
            if not raw_key:
                raise GGUFError(path, f"metadata key {i} at offset {at} is empty")
            if raw_key in seen:
                raise GGUFError(path, f"duplicate key {quoted(key)} at offset {at} "
                                f"(metadata entry {i})")
            seen.add(raw_key)
            vtype = cur.read(_U32, f"key '{key}'")
            value, etype = _read_value(cur, vtype, key)
            metadata.setdefault(key, value)
            types.setdefault(key, (vtype, etype))
        if "general.alignment" in types and types["general.alignment"][0] != UINT32:
            raise GGUFError(path, "key 'general.alignment' must be of type u32, not "
                            f"{TYPE_NAMES.get(types['general.alignment'][0], '?')}")
        alignment = int(metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGUFError(path, f"general.alignment must be a power of two, not {alignment}")
        raw_tensors = []
        names: set[bytes] = set()
        for i in range(n_tensors):
            at = cur.pos
            raw_name = cur.string(f"tensor {i} name", _MAX_KEY_BYTES)
            name = raw_name.decode("utf-8", errors="replace")
            if len(raw_name) > _MAX_NAME_BYTES:
                raise GGUFError(path, f"tensor {i} at offset {at}: name {quoted(name)} is "
                                f"{len(raw_name)} bytes, llama.cpp takes at most "
                                f"{_MAX_NAME_BYTES}")
            if raw_name in names:
                raise GGUFError(path, f"duplicate tensor name {quoted(name)} (tensor {i} at "
                                f"offset {at})")
            names.add(raw_name)
            n_dims = cur.read(_U32, f"tensor '{name}'")
            if not 1 <= n_dims <= _MAX_DIMS:
                raise GGUFError(path, f"tensor {quoted(name)} has {n_dims} dimensions")
            shape = tuple(cur.read(_U64, f"tensor '{name}'") for _ in range(n_dims))
            n = 1
            for d in shape:
                n *= d
            if max(shape) > _INT64_MAX or n > _INT64_MAX:
                raise GGUFError(path, f"tensor {quoted(name)} has shape {list(shape)}: more "
                                "elements than an int64 holds")
            type_id = cur.read(_U32, f"tensor '{name}'")
            offset = cur.read(_U64, f"tensor '{name}'")
            raw_tensors.append((name, shape, type_id, offset))
        data_start = -(-cur.pos // alignment) * alignment if n_tensors else cur.pos
    tensors = []
    expected = 0  # gguf.cpp: each tensor starts where the previous one ends, padded
    data_bytes = size - data_start
    for name, shape, type_id, offset in raw_tensors:
        if type_id not in ggml_types.BY_ID:
            raise GGUFError(path, f"tensor {quoted(name)} has unknown ggml type {type_id}")
        t = ggml_types.BY_ID[type_id]
        if shape[0] % t.block_size:
            raise GGUFError(
                path, f"tensor {quoted(name)}: row of {shape[0]} is not a multiple of "
                f"{t.name}'s block size {t.block_size}"
            )
        if offset != expected:
            raise GGUFError(path, f"tensor {quoted(name)} has offset {offset}, expected "
                            f"{expected} (tensors must follow each other, aligned to "
                            f"{alignment} bytes)")
        nbytes = ggml_types.tensor_bytes(type_id, shape)
        if offset + nbytes > data_bytes:
            raise GGUFError(
                path, f"file is truncated: tensor {quoted(name)} ends at byte "
                f"{data_start + offset + nbytes}, the file has {size}"
            )
        expected = offset + -(-nbytes // alignment) * alignment
        tensors.append(TensorInfo(name, shape, type_id, offset, nbytes))
    return _Part(version, metadata, types, tensors, size, alignment)


def split_parts(path: Path) -> list[Path]:
    """All parts of a split model (``name-00001-of-00003.gguf``), from any one part.

    A name whose numbers cannot be a split (part 0, 0 parts, part 5 of 3, more parts than
    llama.cpp's uint16 split.count) is one file, as llama.cpp treats it."""
    m = _SPLIT_NAME.match(path.name)
    if not m:
        return [path]
    no, count = int(m.group("no")), int(m.group("count"))
    if not 1 <= no <= count <= MAX_SPLIT_COUNT or count == 1:
        return [path]
    return [path.with_name(f"{m.group('prefix')}-{i:05d}-of-{count:05d}.gguf")
            for i in range(1, count + 1)]


def _split_key(part: _Part, key: str, want: int, path: Path) -> int | None:
    if key not in part.metadata:
        return None
    vtype = part.types[key][0]
    if vtype != want:
        raise GGUFError(path, f"key {key!r} must be of type {TYPE_NAMES[want]}, not "
                        f"{TYPE_NAMES.get(vtype, '?')}")
    return int(part.metadata[key])


def read_gguf(path: str | os.PathLike[str]) -> GGUFFile:
    """Read the header of a GGUF model (all parts of a split model; metadata from part 1)."""
    p = Path(path)
    parts = split_parts(p)
    if len(parts) > 1 and not parts[0].exists():
        raise GGUFError(p, f"split model is missing its first part {quoted(parts[0].name)}")
    first = _read_one(parts[0])
    split_count = _split_key(first, "split.count", UINT16, parts[0])
    if split_count is None or split_count <= 1:
        if parts[0] != p:  # not a split after all: llama.cpp reads such a file alone
            first = _read_one(p)
        return GGUFFile(p, first.version, first.metadata, first.tensors, first.size, [p],
                        first.alignment, first.types)
    if len(parts) == 1:
        raise GGUFError(p, f"part of a {split_count}-part split model, but its name does "
                        "not follow the name-00001-of-0000N.gguf pattern")
    if split_count != len(parts):
        raise GGUFError(parts[0], f"the name says {len(parts)} parts, but split.count is "
                        f"{split_count}")
    if _split_key(first, "split.no", UINT16, parts[0]) != 0:
        raise GGUFError(parts[0], "the first part of a split model must have split.no = 0")
    missing = [q.name for q in parts[1:] if not q.exists()]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise GGUFError(p, f"split model is missing {len(missing)} part(s): "
                        f"{', '.join(missing[:3])}{more}")
    tensors = list(first.tensors)
    seen = {t.name for t in tensors}
    total = first.size
    for idx, part_path in enumerate(parts[1:], start=1):
        part = _read_one(part_path)
        no = _split_key(part, "split.no", UINT16, part_path)
        if no is None:
            raise GGUFError(part_path, "missing key split.no in a part of a split model")
        if no != idx:
            raise GGUFError(part_path, f"invalid split file idx: {no}, expected {idx}")
        for t in part.tensors:
            if t.name in seen:
                raise GGUFError(part_path, f"tensor {quoted(t.name)} is duplicated (it is "
                                "also in an earlier part)")
            seen.add(t.name)
        tensors.extend(part.tensors)
        total += part.size
    declared = first.metadata.get("split.tensors.count")
    if declared is not None and declared != len(tensors):
        raise GGUFError(parts[0], f"corrupted model: {declared!r} tensors expected but "
                        f"{len(tensors)} found")
    return GGUFFile(parts[0], first.version, first.metadata, tensors, total, parts,
                    first.alignment, first.types)
