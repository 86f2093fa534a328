"""Write a model's real GGUF header with a sparse (unwritten) data section.

llama.cpp loaded with ``no_alloc`` reads only the header, but it checks that every tensor's
data lies inside the file. Truncating the file up to its full length gives it the right
apparent size while the data region stays a hole: a 20 GB model costs a few MB of disk.
"""

from __future__ import annotations

import os
import struct
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFValueType, GGUFWriter

from kvgui.core.model.archspec import (
    Header,
    ModelSpec,
    build_header,
    header_bytes,
    spec_from_dict,
    value_kind,
)

_KINDS = {
    "bool": GGUFValueType.BOOL, "uint32": GGUFValueType.UINT32,
    "float32": GGUFValueType.FLOAT32, "string": GGUFValueType.STRING,
    "int32": GGUFValueType.INT32,
}


class _Writer(GGUFWriter):
    """GGUFWriter with bulk packing of the big tokenizer arrays (the stock writer packs them
    one element at a time: seconds for a 262144-token vocab). Same bytes, little-endian."""

    def _pack_val(self, val: Any, vtype: GGUFValueType, add_vtype: bool,
                  sub_type: GGUFValueType | None = None) -> bytes:
        if vtype != GGUFValueType.ARRAY or sub_type not in _BULK or len(val) == 0:
            return super()._pack_val(val, vtype, add_vtype, sub_type=sub_type)
        assert sub_type is not None
        out = [struct.pack("<I", vtype)] if add_vtype else []
        out.append(struct.pack("<IQ", sub_type, len(val)))
        body = _pack_array(val, sub_type) if isinstance(val, tuple) else \
            _pack_array.__wrapped__(val, sub_type)
        out.append(body)
        return b"".join(out)


_BULK = {GGUFValueType.STRING: "", GGUFValueType.FLOAT32: "f", GGUFValueType.INT32: "i"}


@lru_cache(maxsize=24)
def _pack_array(val: Sequence[Any], sub_type: GGUFValueType) -> bytes:
    """An array's elements, packed; tuples (the shared synthetic vocab) once per process."""
    if sub_type == GGUFValueType.STRING:
        encoded = [s.encode("utf-8") for s in val]
        lengths = struct.pack(f"<{len(encoded)}Q", *map(len, encoded))
        parts: list[bytes] = [b""] * (2 * len(encoded))
        parts[0::2] = [lengths[8 * i:8 * i + 8] for i in range(len(encoded))]
        parts[1::2] = encoded
        return b"".join(parts)
    return struct.pack(f"<{len(val)}{_BULK[sub_type]}", *val)


def _header_of(spec_or_entry: Any) -> Header:
    if isinstance(spec_or_entry, Header):
        return spec_or_entry
    if isinstance(spec_or_entry, ModelSpec):
        return build_header(spec_or_entry)
    spec = getattr(spec_or_entry, "spec", None)  # a kvgui.core.model.catalog.CatalogEntry
    if isinstance(spec, ModelSpec):
        return build_header(spec)
    if isinstance(spec_or_entry, Mapping) and "arch" in spec_or_entry:  # catalog JSON form
        return build_header(spec_from_dict(spec_or_entry))
    raise TypeError(f"expected a ModelSpec, CatalogEntry, spec dict or Header, "
                    f"not {spec_or_entry!r}")


def write_sparse_gguf(spec_or_entry: Any, path: str | os.PathLike[str]) -> Path:
    """Write the header of ``spec_or_entry`` (ModelSpec, CatalogEntry or Header) to ``path``
    and extend the file to its full size without writing the tensor data.

    ``python -m kvgui.testing.sparse_gguf "Llama-3.1-8B-Instruct Q4_K_M" out.gguf`` writes a
    catalog model from the command line."""
    header = _header_of(spec_or_entry)
    path = Path(path)
    md = header.metadata
    writer = _Writer(path, arch=str(md["general.architecture"]))
    for key, value in md.items():
        if key == "general.architecture":  # GGUFWriter adds it itself
            continue
        kind = value_kind(value)
        if kind.startswith("array:"):
            # tuples stay tuples: _Writer packs a shared tuple once (see _pack_array)
            bulk = isinstance(value, tuple) and _KINDS[kind[6:]] in _BULK
            writer.add_key_value(key, value if bulk else list(value), GGUFValueType.ARRAY,
                                 sub_type=_KINDS[kind[6:]])
        else:
            writer.add_key_value(key, value, _KINDS[kind])
    for t in header.tensors:
        # GGUFWriter takes numpy order (reversed) and stores ne0 first
        writer.add_tensor_info(t.name, tuple(reversed(t.shape)), np.dtype(np.float32),
                               t.nbytes, raw_dtype=GGMLQuantizationType(t.type_id))
    try:
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
    finally:
        writer.close()
    written = path.stat().st_size
    expected = header_bytes(md, header.tensors)
    if written != expected:
        raise ValueError(f"{path}: wrote a {written}-byte header, archspec computed {expected}")
    # the data section starts at the next alignment boundary; the hole covers the padding too
    os.truncate(path, header.file_bytes)
    return path


def main(argv: list[str] | None = None) -> int:
    from kvgui.core.model.catalog import find, load_catalog

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        labels = "\n  ".join(e.label for e in load_catalog())
        print(f"usage: python -m kvgui.testing.sparse_gguf LABEL OUT.gguf\n  {labels}",
              file=sys.stderr)
        return 2
    path = write_sparse_gguf(find(args[0]), args[1])
    print(f"{path}: {path.stat().st_size} bytes apparent, "
          f"{path.stat().st_blocks * 512} on disk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
