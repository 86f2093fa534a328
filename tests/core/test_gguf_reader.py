"""The header reader: exact metadata and tensor table, and only GGUFError for bad input."""

from __future__ import annotations

import contextlib
import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvgui.core.gguf.reader import GGUFError, NumericArray, StringArray, read_gguf, split_parts


def write_model(path: Path, *, n_vocab: int = 300, extra: dict | None = None,
                split: tuple[int, int] | None = None, tensors: int = 3,
                first_tensor: int = 0) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_context_length(2048)
    w.add_embedding_length(64)
    w.add_head_count(2)
    w.add_uint8("test.u8", 200)
    w.add_int8("test.i8", -5)
    w.add_uint16("test.u16", 60000)
    w.add_int16("test.i16", -300)
    w.add_int32("test.i32", -70000)
    w.add_float32("test.f32", 1.5)
    w.add_bool("test.bool", True)
    w.add_uint64("test.u64", 2**40)
    w.add_int64("test.i64", -(2**40))
    w.add_float64("test.f64", 2.25)
    w.add_string("test.str", "héllo")
    w.add_token_list([f"t{i}" for i in range(n_vocab)])
    w.add_token_scores([float(i) for i in range(n_vocab)])
    if split:
        w.add_uint16("split.no", split[0])
        w.add_uint16("split.count", split[1])
    for k, v in (extra or {}).items():
        w.add_uint32(k, v)
    for i in range(tensors):
        w.add_tensor_info(f"blk.0.t{first_tensor + i}", (8, 64), np.dtype(np.float16), 8 * 64 * 2,
                          gguf.GGMLQuantizationType.F16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    size = path.stat().st_size
    os.truncate(path, -(-size // 32) * 32 + tensors * 8 * 64 * 2)
    return path


def test_reads_every_metadata_type_and_the_tensor_table(tmp_path: Path) -> None:
    g = read_gguf(write_model(tmp_path / "m.gguf"))
    md = g.metadata
    assert g.version == 3
    assert md["general.architecture"] == "llama"
    assert md["llama.block_count"] == 1
    assert (md["test.u8"], md["test.i8"], md["test.u16"], md["test.i16"]) == (200, -5, 60000, -300)
    assert (md["test.i32"], md["test.f32"], md["test.bool"]) == (-70000, 1.5, True)
    assert (md["test.u64"], md["test.i64"], md["test.f64"]) == (2**40, -(2**40), 2.25)
    assert md["test.str"] == "héllo"
    tokens = md["tokenizer.ggml.tokens"]
    assert isinstance(tokens, StringArray) and len(tokens) == 300
    assert tokens[0] == "t0" and tokens[-1] == "t299" and list(tokens)[150] == "t150"
    assert md["tokenizer.ggml.scores"][299] == 299.0
    assert [t.name for t in g.tensors] == ["blk.0.t0", "blk.0.t1", "blk.0.t2"]
    t = g.tensors[1]
    assert t.shape == (64, 8) and t.type_name == "f16" and t.nbytes == 1024 and t.offset == 1024
    assert g.file_bytes == (tmp_path / "m.gguf").stat().st_size


def test_long_arrays_are_lazy_but_exact(tmp_path: Path) -> None:
    g = read_gguf(write_model(tmp_path / "m.gguf", n_vocab=20000))
    scores = g.metadata["tokenizer.ggml.scores"]
    assert isinstance(scores, NumericArray)
    assert len(scores) == 20000 and scores[12345] == 12345.0 and scores[-2:] == [19998.0, 19999.0]
    assert g.metadata["tokenizer.ggml.tokens"][19999] == "t19999"


def test_gguf_v2_is_read(tmp_path: Path) -> None:
    path = write_model(tmp_path / "m.gguf")
    with open(path, "r+b") as f:
        f.seek(4)
        f.write(struct.pack("<I", 2))
    assert read_gguf(path).version == 2


def test_split_model_reads_all_parts_from_any_part(tmp_path: Path) -> None:
    parts = [write_model(tmp_path / f"m-{i:05d}-of-00003.gguf", split=(i - 1, 3), tensors=i,
                         first_tensor=10 * i) for i in (1, 2, 3)]
    for part in parts:
        g = read_gguf(part)
        assert g.parts == parts
        assert len(g.tensors) == 6
        assert g.file_bytes == sum(p.stat().st_size for p in parts)
    assert split_parts(Path("x.gguf")) == [Path("x.gguf")]


def test_missing_part_of_a_split_model(tmp_path: Path) -> None:
    write_model(tmp_path / "m-00001-of-00002.gguf", split=(0, 2))
    with pytest.raises(GGUFError, match="missing 1 part"):
        read_gguf(tmp_path / "m-00001-of-00002.gguf")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "too small"),
        (b"hello, this is a text file and not a model\n", "not a GGUF file"),
        (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "unsupported GGUF version 1"),
        (b"GGUF" + struct.pack("<IQQ", 7, 0, 0), "unsupported GGUF version 7"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 2**62), "cannot fit"),
        (b"GGUF" + struct.pack("<IQQ", 3, 2**60, 1), "cannot fit"),
        (b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**63) + b"x" * 16,
         "metadata key 0 at offset 24: a string of 9223372036854775808 bytes"),
    ],
)
def test_bad_files_give_one_clear_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(content)
    with pytest.raises(GGUFError, match=message) as info:
        read_gguf(path)
    assert str(path) in str(info.value)


def test_hostile_array_length_fails_before_allocating(tmp_path: Path) -> None:
    key = b"a.b"
    body = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 6, 2**61)  # u32 array
    path = tmp_path / "hostile.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body + b"\0" * 64)
    with pytest.raises(GGUFError, match="array of"):
        read_gguf(path)
    body = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 3) + \
        struct.pack("<Q", 2**50)  # a string array whose first string is enormous
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body + b"\0" * 64)
    with pytest.raises(GGUFError, match="string"):
        read_gguf(path)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="no such file"):
        read_gguf(tmp_path / "nope.gguf")
    with pytest.raises(GGUFError, match="directory"):
        read_gguf(tmp_path)


def test_every_truncation_is_a_gguf_error(tmp_path: Path) -> None:
    data = write_model(tmp_path / "m.gguf", n_vocab=40).read_bytes()
    path = tmp_path / "cut.gguf"
    for cut in range(0, len(data) - 1, 7):
        path.write_bytes(data[:cut])
        with pytest.raises(GGUFError):
            read_gguf(path)


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_model(tmp_path_factory.mktemp("fuzz") / "m.gguf", n_vocab=30).read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), min_size=1,
                      max_size=6))
def test_flipped_bytes_only_ever_raise_gguf_error(model_bytes: bytes, flips,
                                                  tmp_path_factory) -> None:
    data = bytearray(model_bytes)
    header_end = len(data) - 3 * 1024  # flip inside the header, where meaning lives
    for pos, xor in flips:
        data[pos % header_end] ^= xor
    path = tmp_path_factory.mktemp("f") / "f.gguf"
    path.write_bytes(bytes(data))
    try:
        g = read_gguf(path)
    except GGUFError:
        return
    for value in g.metadata.values():  # lazily decoded arrays must decode too
        if isinstance(value, (StringArray, NumericArray)):
            list(value)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=400))
def test_random_bytes_after_the_magic(tmp_path_factory, tail: bytes) -> None:
    path = tmp_path_factory.mktemp("r") / "r.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<I", 3) + tail)
    with contextlib.suppress(GGUFError):
        read_gguf(path)
