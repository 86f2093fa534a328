"""ggml tensor types: ids, block sizes and bytes per block, as in ggml/src/ggml.c's type_traits.

Tensor byte sizes in a GGUF file and KV cache sizes are both computed from these, so they
must match ggml exactly.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str
    block_size: int  # elements per block
    type_size: int  # bytes per block

    @property
    def is_quantized(self) -> bool:
        """Stored in blocks with a scale (ggml_is_quantized): q8_0, q4_0, iq4_nl, k-quants…"""
        return self.block_size > 1

    def row_bytes(self, n_elements: int) -> int:
        """Bytes of a row of ``n_elements`` (ggml_row_size); n must be a multiple of the block."""
        return self.type_size * (n_elements // self.block_size)


_TYPES = [
    GGMLType(0, "f32", 1, 4),
    GGMLType(1, "f16", 1, 2),
    GGMLType(2, "q4_0", 32, 18),
    GGMLType(3, "q4_1", 32, 20),
    GGMLType(6, "q5_0", 32, 22),
    GGMLType(7, "q5_1", 32, 24),
    GGMLType(8, "q8_0", 32, 34),
    GGMLType(9, "q8_1", 32, 36),
    GGMLType(10, "q2_k", 256, 84),
    GGMLType(11, "q3_k", 256, 110),
    GGMLType(12, "q4_k", 256, 144),
    GGMLType(13, "q5_k", 256, 176),
    GGMLType(14, "q6_k", 256, 210),
    GGMLType(15, "q8_k", 256, 292),
    GGMLType(16, "iq2_xxs", 256, 66),
    GGMLType(17, "iq2_xs", 256, 74),
    GGMLType(18, "iq3_xxs", 256, 98),
    GGMLType(19, "iq1_s", 256, 50),
    GGMLType(20, "iq4_nl", 32, 18),
    GGMLType(21, "iq3_s", 256, 110),
    GGMLType(22, "iq2_s", 256, 82),
    GGMLType(23, "iq4_xs", 256, 136),
    GGMLType(24, "i8", 1, 1),
    GGMLType(25, "i16", 1, 2),
    GGMLType(26, "i32", 1, 4),
    GGMLType(27, "i64", 1, 8),
    GGMLType(28, "f64", 1, 8),
    GGMLType(29, "iq1_m", 256, 56),
    GGMLType(30, "bf16", 1, 2),
    GGMLType(34, "tq1_0", 256, 54),
    GGMLType(35, "tq2_0", 256, 66),
    GGMLType(39, "mxfp4", 32, 17),
    GGMLType(40, "nvfp4", 64, 36),
    GGMLType(41, "q1_0", 128, 18),
    GGMLType(42, "q2_0", 64, 18),
]

BY_ID: dict[int, GGMLType] = {t.id: t for t in _TYPES}
BY_NAME: dict[str, GGMLType] = {t.name: t for t in _TYPES}

# The KV cache types llama.cpp's -ctk/-ctv accept (common/arg.cpp kv_cache_types), in its order.
CACHE_TYPE_NAMES: tuple[str, ...] = (
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1",
)


def is_quantized(name: str) -> bool:
    """Whether the type called ``name`` is a block-quantized one (the one place kvgui asks)."""
    return by_name(name).is_quantized


def by_name(name: str) -> GGMLType:
    try:
        return BY_NAME[name.lower()]
    except KeyError:
        raise ValueError(f"unknown ggml type {name!r}") from None


def by_id(type_id: int) -> GGMLType:
    try:
        return BY_ID[type_id]
    except KeyError:
        raise ValueError(f"unknown ggml type id {type_id}") from None


def tensor_bytes(type_id: int, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor in the file (ggml_nbytes for a contiguous tensor)."""
    t = by_id(type_id)
    n = 1
    for d in shape:
        n *= d
    return n // t.block_size * t.type_size
