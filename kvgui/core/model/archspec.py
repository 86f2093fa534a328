"""GGUF headers (metadata + tensor table) built from a compact model description.

The catalog ships models as a few HF-config-like numbers instead of 100 KB tensor lists, and
the tests write the same headers out as sparse GGUF files that llama.cpp itself loads. So the
tensor names and shapes here must be exactly what the bundled llama.cpp's loader creates for
each architecture (src/models/<arch>.cpp, load_arch_tensors; shapes in GGUF order ne0, ne1…),
the metadata keys exactly what it reads (src/llama-arch.cpp), and the tensor types what
convert_hf_to_gguf.py + llama-quantize would choose (conversion/base.py, src/llama-quant.cpp).

Pure Python on purpose: no gguf, numpy or llama_cpp import, so the GUI can expand the catalog.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, NamedTuple

from kvgui.core.gguf import ggml_types
from kvgui.core.model.layouts import LAYOUTS, Hp, Shapes, common_metadata

GGUF_ALIGNMENT = 32  # GGUF_DEFAULT_ALIGNMENT; kvgui never writes general.alignment

# llama.h enum llama_ftype for the mixes kvgui can describe, and the type each starts from.
FILE_TYPES: dict[str, int] = {
    "F32": 0, "F16": 1, "Q8_0": 7, "Q4_K_S": 14, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18,
    "BF16": 32, "MXFP4_MOE": 38,
}
_DEFAULT_TYPE: dict[str, str] = {
    "F32": "f32", "F16": "f16", "BF16": "bf16", "Q8_0": "q8_0", "Q4_K_S": "q4_k",
    "Q4_K_M": "q4_k", "Q5_K_M": "q5_k", "Q6_K": "q6_k", "MXFP4_MOE": "mxfp4",
}
QUANT_NAMES: tuple[str, ...] = tuple(FILE_TYPES)

_T = {t.name: t.id for t in ggml_types.BY_ID.values()}


class TensorDef(NamedTuple):
    """One row of a GGUF tensor table."""

    name: str
    shape: tuple[int, ...]  # GGUF order: ne0 (row length) first
    type_id: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return ggml_types.tensor_bytes(self.type_id, self.shape)


@dataclass(frozen=True)
class ModelSpec:
    """A model as the catalog stores it: llama.cpp arch name, HF-config numbers, a quant mix.

    ``hp`` uses the HF config.json names (hidden_size, num_hidden_layers, …) plus a few
    documented extras (rope_freqs, full_attn_idxs) where the config alone
    does not say what the GGUF holds.
    """

    name: str
    arch: str
    quant: str
    hp: Mapping[str, Any]


@dataclass(frozen=True)
class Header:
    metadata: dict[str, Any]
    tensors: list[TensorDef]

    @property
    def n_params(self) -> int:
        """What llama_model_n_params reports: the elements of every tensor in the file."""
        return sum(t.n_elements for t in self.tensors)

    @property
    def data_bytes(self) -> int:
        return sum(_pad(t.nbytes) for t in self.tensors)

    @property
    def data_offset(self) -> int:
        return _pad(header_bytes(self.metadata, self.tensors))

    @property
    def file_bytes(self) -> int:
        return self.data_offset + self.data_bytes

    def offsets(self) -> list[int]:
        """Each tensor's offset in the data section, as GGUFWriter lays them out."""
        out, pos = [], 0
        for t in self.tensors:
            out.append(pos)
            pos += _pad(t.nbytes)
        return out


def _pad(n: int, align: int = GGUF_ALIGNMENT) -> int:
    return (n + align - 1) // align * align


# --- GGUF value kinds: llama.cpp checks types strictly ("key ... has wrong type") ----------

def value_kind(value: Any) -> str:
    """The GGUF type a metadata value is written as: ints are uint32, floats float32, and
    arrays of ints int32 -- the types llama.cpp's loader asks for."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        if not 0 <= value < 2**32:
            raise ValueError(f"integer metadata value {value} does not fit uint32")
        return "uint32"
    if isinstance(value, float):
        return "float32"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("empty metadata array")
        first = value[0]
        if isinstance(first, bool):
            return "array:bool"
        if isinstance(first, int):
            return "array:int32"
        if isinstance(first, float):
            return "array:float32"
        if isinstance(first, str):
            return "array:string"
    raise ValueError(f"unsupported metadata value {value!r}")


_SCALAR_BYTES = {"bool": 1, "uint32": 4, "float32": 4, "int32": 4}


def header_bytes(metadata: Mapping[str, Any], tensors: Sequence[TensorDef]) -> int:
    """Bytes before the (aligned) data section: magic, counts, key/values, tensor infos."""
    n = 4 + 4 + 8 + 8
    for key, value in metadata.items():
        n += 8 + len(key.encode()) + 4
        kind = value_kind(value)
        if kind == "string":
            n += 8 + len(value.encode())
        elif kind.startswith("array:"):
            sub = kind[6:]
            n += 4 + 8
            if sub == "string":
                n += _strings_bytes(value) if isinstance(value, tuple) else \
                    sum(8 + len(s.encode()) for s in value)
            else:
                n += _SCALAR_BYTES[sub] * len(value)
        else:
            n += _SCALAR_BYTES[kind]
    for t in tensors:
        n += 8 + len(t.name.encode()) + 4 + 8 * len(t.shape) + 4 + 8
    return n


@lru_cache(maxsize=16)
def _strings_bytes(value: tuple[str, ...]) -> int:
    """A string array's packed size (each a uint64 length + UTF-8), once per shared tuple."""
    return 8 * len(value) + len("".join(value).encode())


# --- tokenizer -----------------------------------------------------------------------------

def synthetic_vocab(n_vocab: int) -> dict[str, Any]:
    """A SentencePiece ("llama") vocab of ``n_vocab`` tokens: <unk> <s> </s>, the 256 byte
    tokens llama.cpp's SPM tokenizer needs, then numbered fillers. Only the count matters for
    memory, and generating it keeps the catalog free of 262144-entry token lists."""
    if n_vocab < 259 + 1:
        raise ValueError(f"vocab of {n_vocab} tokens is too small for the byte tokens")
    tokens, scores, types = _vocab_arrays(n_vocab)
    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }


@lru_cache(maxsize=8)
def _vocab_arrays(n_vocab: int) -> tuple[tuple[str, ...], tuple[float, ...], tuple[int, ...]]:
    """The token list, scores and types, as shared tuples: many models have the same vocab
    size, and writing a header packs them once per size (sparse_gguf)."""
    tokens = ["<unk>", "<s>", "</s>"]
    tokens += [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"t{i}" for i in range(len(tokens), n_vocab)]
    types = [2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259)
    scores = [0.0] * 259 + [float(-i) for i in range(n_vocab - 259)]
    return tuple(tokens), tuple(scores), tuple(types)


# --- tensor tables per architecture: kvgui.core.model.layouts -----------------------------

ARCHS: tuple[str, ...] = tuple(LAYOUTS)


# --- tensor types: convert_hf_to_gguf (source) then llama-quantize's mix ------------------

# conversion/base.py: always-F32 tensors besides 1-D ones, norms and non-".weight" tensors
_F32_ALWAYS = ("ffn_gate_inp.weight", "ssm_conv1d", "shortconv.conv.weight")
# llama-quant.cpp tensor_allows_quantization: names kept as they are
_NOT_QUANTIZED = ("ffn_gate_inp.weight", "ssm_conv1d", "shortconv.conv.weight", "altup",
                  "laurel", "per_layer_model_proj", "time_mix_first.weight",
                  "time_mix_w0.weight", "time_mix_w1.weight", "time_mix_w2.weight",
                  "time_mix_v0.weight", "time_mix_v1.weight", "time_mix_v2.weight",
                  "time_mix_a0.weight", "time_mix_a1.weight", "time_mix_a2.weight",
                  "time_mix_g1.weight", "time_mix_g2.weight", "time_mix_decay_w1.weight",
                  "time_mix_decay_w2.weight", "time_mix_lerp_fused.weight")


def _n_dims(shape: tuple[int, ...]) -> int:
    """ggml_n_dims: trailing dimensions of 1 do not count."""
    n = len(shape)
    while n > 1 and shape[n - 1] == 1:
        n -= 1
    return n


def _source_type(name: str, shape: tuple[int, ...], float_type: str) -> int:
    if _n_dims(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight") \
            or any(p in name for p in _F32_ALWAYS):
        return _T["f32"]
    return _T[float_type]


def _allows_quantization(name: str, shape: tuple[int, ...]) -> bool:
    # llama-quant.cpp tensor_allows_quantization, for the names these archs have
    return (_n_dims(shape) >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and not any(p in name for p in _NOT_QUANTIZED))


def _category(name: str) -> str:
    # llama-quant.cpp tensor_get_category (order matters: first match wins)
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for key, cat in (("attn_qkv.weight", "attn_v"), ("attn_kv_b.weight", "attn_v"),
                     ("attn_v.weight", "attn_v"), ("attn_k.weight", "attn_k"),
                     ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                     ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if key in name:
            return cat
    return "other"


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _fallback(ncols: int, type_name: str) -> str:
    # llama-quant.cpp tensor_type_fallback: a row must hold whole blocks
    blk = ggml_types.by_name(type_name).block_size
    if ncols % blk == 0:
        return type_name
    new = {"q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0", "q2_k": "q4_0",
           "q3_k": "q4_0"}.get(type_name, type_name)
    if ncols % ggml_types.by_name(new).block_size != 0:
        new = "f16"
    return new


def _quant_types(shapes: Shapes, quant: str, arch: str, n_layer: int, n_expert: int,
                 is_70b: bool) -> list[int]:
    """llama-quant.cpp llama_tensor_get_type for the mixes in FILE_TYPES (no imatrix)."""
    float_type = "bf16" if quant == "BF16" else "f16"
    src = [_source_type(n, s, float_type) for n, s in shapes]
    if quant in ("F16", "BF16", "F32"):
        return src if quant != "F32" else [_T["f32"]] * len(shapes)
    default = _DEFAULT_TYPE[quant]
    cats = [_category(n) for n, _ in shapes]
    tied = "output" not in cats
    n_wv = sum(c == "attn_v" for c in cats)
    i_wv = i_down = 0
    result: list[int] = []
    for (name, shape), cat, st in zip(shapes, cats, src, strict=True):
        if not _allows_quantization(name, shape):
            result.append(st)
            continue
        new = default
        if cat == "output" or (tied and cat == "token_embd"):
            if quant == "MXFP4_MOE" or shape[0] % ggml_types.by_name(new).block_size:
                new = "q8_0"
            elif new != "q8_0":
                new = "q6_k"
        elif quant == "MXFP4_MOE":
            new = "mxfp4" if len(shape) > 2 and shape[2] > 1 else "q8_0"
        elif cat == "attn_v":
            if quant in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_wv, n_wv):
                new = "q6_k"
            elif quant == "Q4_K_S" and i_wv < 4:
                new = "q5_k"
            if is_70b and new in ("q3_k", "q4_k"):
                new = "q5_k"
            if n_expert == 8:
                new = "q8_0"
            i_wv += 1
        elif cat == "attn_k":
            if n_expert == 8:
                new = "q8_0"
        elif cat == "ffn_down":
            if n_expert > 1:
                m = re.match(r"blk\.(\d+)\.", name)
                i_layer = int(m.group(1)) if m else 0
            else:
                i_layer = i_down
            if quant in ("Q4_K_M", "Q5_K_M") and _use_more_bits(i_layer, n_layer):
                new = "q6_k"
            elif quant == "Q4_K_S" and i_layer < n_layer // 8:
                new = "q5_k"
            i_down += 1
        elif cat == "attn_output" and n_expert == 8 and quant in ("Q4_K_S", "Q4_K_M"):
            new = "q5_k"
        result.append(_T[_fallback(shape[0], new)])
    return result


# --- public entry points -------------------------------------------------------------------

def build_header(spec: ModelSpec, *, vocab: bool = True) -> Header:
    """The GGUF header a file of ``spec`` would have. ``vocab=False`` leaves the generated
    token list out of the metadata (for callers that only need shapes and sizes)."""
    layout = LAYOUTS.get(spec.arch)
    if layout is None:
        raise ValueError(f"no tensor layout for architecture {spec.arch!r}")
    if spec.quant not in FILE_TYPES:
        raise ValueError(f"unknown quantization mix {spec.quant!r}; known: {QUANT_NAMES}")
    h = Hp(spec.hp, spec.arch)
    shapes = layout.tensors(h)
    n_expert = int(spec.hp.get("num_experts") or spec.hp.get("num_local_experts")
                   or spec.hp.get("n_routed_experts") or spec.hp.get("moe_num_experts") or 0)
    is_70b = spec.arch == "llama" and h.n_layer == 80 and h.n_head != h.n_head_kv
    types = _quant_types(shapes, spec.quant, spec.arch, h.n_layer, n_expert, is_70b)
    tensors = [TensorDef(n, s, t) for (n, s), t in zip(shapes, types, strict=True)]

    metadata: dict[str, Any] = {
        "general.architecture": spec.arch,
        "general.name": spec.name,
        "general.file_type": FILE_TYPES[spec.quant],
    }
    if spec.quant not in ("F32", "F16", "BF16"):
        metadata["general.quantization_version"] = 2
    arch_md = common_metadata(h, spec.arch)
    layout.metadata(h, arch_md)
    metadata.update(arch_md)
    if vocab:
        metadata.update(synthetic_vocab(h.n_vocab))
    return Header(metadata, tensors)


def spec_from_dict(d: Mapping[str, Any], quant: str | None = None) -> ModelSpec:
    """A ModelSpec from its catalog JSON form ({"name", "arch", "quant" or "quants", "hp"})."""
    q = quant or d.get("quant") or d["quants"][0]
    return ModelSpec(name=str(d["name"]), arch=str(d["arch"]), quant=str(q), hp=dict(d["hp"]))
