"""Hostile and odd input (issue 18): one test per finding, on files made here.

Numbers refer to the issue's list. Every refusal must be one GGUFError / CommandParseError /
ValueError line -- never a traceback, a hang, or a value llama.cpp cannot hold.
"""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from kvgui.core import untrusted
from kvgui.core.commandline.parse import CommandParseError, parse_command
from kvgui.core.commandline.shellquote import UnsafeForShell, render, script, split_command
from kvgui.core.config import limits
from kvgui.core.config.settings import Settings
from kvgui.core.gguf.reader import GGUFError, NumericArray, read_gguf
from kvgui.core.model.catalog import find
from kvgui.core.model.info import load_model
from kvgui.testing import raw_gguf as raw


def base_header(label: str = "Llama-3.2-3B-Instruct Q4_K_M") -> raw.Header:
    """A catalog model's real header (64 tokens instead of its vocabulary)."""
    h = find(label).build(vocab=False)
    md = dict(h.metadata)
    md["tokenizer.ggml.model"] = "gpt2"
    md["tokenizer.ggml.tokens"] = [f"t{i}" for i in range(64)]
    return raw.from_metadata(md, h.tensors)


@pytest.fixture
def write(tmp_path: Path) -> Callable[..., Path]:
    def _write(h: raw.Header, name: str = "m.gguf", **kw: int) -> Path:
        return raw.write(h, tmp_path / name, **kw)

    return _write


def refusal(path: Path, match: str) -> str:
    with pytest.raises(GGUFError, match=match) as info:
        load_model(path)
    text = str(info.value)
    assert "\n" not in text and len(text) < 600, text
    return text


def test_the_base_header_loads(write: Callable[..., Path]) -> None:
    assert load_model(write(base_header())).n_layer == 28


# --- 1. cmd export can run commands -------------------------------------------------------


def test_1_cmd_export_refuses_a_line_break_in_the_system_prompt_or_path() -> None:
    args = ["llama-cli", "-m", "C:\\m\\x.gguf", "-sys", "Be brief.\ncalc.exe & echo pwned"]
    with pytest.raises(UnsafeForShell, match="the value of -sys holds a line break"):
        render(args, "cmd")
    with pytest.raises(UnsafeForShell, match="line break"):
        script(args, "cmd")  # the saved .cmd script too
    with pytest.raises(UnsafeForShell, match="the value of -m"):
        render(["llama-cli", "-m", "C:\\a\nb.gguf"], "cmd")


def test_1_cmd_export_refuses_percent_names_on_a_typed_line() -> None:
    args = ["llama-cli", "-m", "C:\\Users\\%USERNAME%\\x.gguf"]
    with pytest.raises(UnsafeForShell, match="%NAME% even inside quotes"):
        render(args, "cmd")
    assert "%%USERNAME%%" in script(args, "cmd")  # a batch file has the %% escape


def test_1_powershell_gets_no_raw_line_break_and_no_live_dollar() -> None:
    args = ["llama-cli", "-sys", "Be brief.\ncalc.exe; $env:X `whoami`", "-p", "$(rm x)"]
    line = render(args, "powershell")
    assert "\n" not in line and "\r" not in line
    assert "`n" in line and "`$env" in line  # escaped inside a double-quoted string
    assert "'$(rm x)'" in line  # single quotes: no expansion
    assert split_command(line, "powershell") == args


def test_1_posix_export_refuses_control_characters_the_terminal_would_act_on() -> None:
    with pytest.raises(UnsafeForShell, match="U\\+001B"):
        render(["llama-cli", "-p", "\x1b[201~rm -rf ~\n"], "posix")
    assert split_command(render(["a", "line\nbreak"], "posix")) == ["a", "line\nbreak"]


# --- 2. untrusted text ----------------------------------------------------------------------

HOSTILE_NAME = '\x1b[2J\x1b[1;1HFITS ✔\r\n<b style="color:green">FITS</b>\u202e'


def test_2_model_name_reaches_the_terminal_escaped(write: Callable[..., Path]) -> None:
    path = write(base_header().set("general.name", raw.STRING, HOSTILE_NAME + "x" * 500))
    model = load_model(path)
    assert not any(ord(c) < 32 or 0x7f <= ord(c) <= 0x9f for c in model.name)
    assert "\\e[2J" in model.name and "\u202e" not in model.name and len(model.name) <= 200
    out = subprocess.run([sys.executable, "-m", "kvgui", "estimate", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\r" not in out.stdout


def test_2_helpers_for_widgets_and_terminals() -> None:
    assert untrusted.printable("a\x1b[2Jb\n") == "a\\e[2Jb\\n"
    assert untrusted.html_text('<b style="x">FITS</b>') == \
        "&lt;b style=&quot;x&quot;&gt;FITS&lt;/b&gt;"
    cut = untrusted.one_line("k" * 65535, 80)
    assert len(cut) <= 80 and cut.endswith("… (65535 characters)")


def test_2_a_corrupt_key_name_gives_a_short_error_with_the_offset(tmp_path: Path) -> None:
    key = (b"tok\n" * 16000) + b"enizer"  # 64 KB of "key", then a value type that is nonsense
    body = struct.pack("<Q", len(key)) + key + struct.pack("<I", 99)
    path = tmp_path / "k.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body + b"\0" * 64)
    with pytest.raises(GGUFError, match="invalid GGUF type 99") as info:
        read_gguf(path)
    text = str(info.value)
    assert "\n" not in text and len(text) < 400
    assert "at offset 64038" in text and "(64006 characters)" in text


# --- 4. endless loops bounded by header values ----------------------------------------------


def test_4_key_length_zero_is_refused(write: Callable[..., Path]) -> None:
    h = base_header().set("llama.attention.key_length", raw.UINT32, 0)
    refusal(write(h.set("llama.attention.value_length", raw.UINT32, 0)),
            "key_length = 0: an attention head needs at least one element")


def test_4_the_estimate_ends_even_for_a_model_with_zero_wide_heads() -> None:
    """The loop itself is bounded, also for a ModelInfo built without the file checks."""
    code = (
        "import dataclasses\n"
        "from kvgui.core.model.catalog import find\n"
        "from kvgui.core.model.info import ModelInfo\n"
        "from kvgui.core.memory.estimate import estimate\n"
        "from kvgui.core.config.settings import Settings\n"
        "from kvgui.core.devices.device_budget import DeviceBudget, cpu\n"
        "md, t, size = find('Llama-3.2-3B-Instruct Q4_K_M').header()\n"
        "md['llama.attention.key_length'] = md['llama.attention.value_length'] = 0\n"
        "m = ModelInfo.from_header(md, t, file_bytes=size)\n"
        "estimate(m, Settings(type_k='q8_0'), [DeviceBudget('GPU', 1 << 34), cpu()])\n"
        "print('done')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "done", out.stderr[-500:]


# --- 6. memory and time bounded by the file, not the header's claims ------------------------


def _bounded(fn: Callable[[], object], seconds: float, mib: int) -> None:
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - t0 < seconds
    assert peak < mib << 20, f"{peak >> 20} MiB"


def test_6_a_huge_sparse_header_of_nested_arrays_is_refused_at_once(tmp_path: Path) -> None:
    key = b"a.nested"
    body = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 9, 170_000_000)
    path = tmp_path / "nested.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body)
    os.truncate(path, 2 << 30)  # 2 GiB of zeros, a few bytes on disk
    with pytest.raises(GGUFError, match="array of arrays"):
        _bounded(lambda: read_gguf(path), 2, 8)


def test_6_a_4_gib_u8_array_is_not_read(write: Callable[..., Path]) -> None:
    h = base_header()
    h.entries.insert(3, raw.Entry("x.blob", raw.ARRAY, [], raw.UINT8, count=4 << 30))
    path = write(h)
    os.truncate(path, 5 << 30)
    with pytest.raises(GGUFError, match="larger than 256 MiB"):
        _bounded(lambda: read_gguf(path), 2, 8)


def test_6_long_arrays_are_skipped_and_read_only_on_access(write: Callable[..., Path]) -> None:
    h = base_header()
    h.entries.append(raw.Entry("x.scores", raw.ARRAY, [1.5] * 3_000_000, raw.FLOAT32))
    path = write(h)
    g = _bounded(lambda: read_gguf(path), 2, 8) or read_gguf(path)
    scores = g.metadata["x.scores"]
    assert isinstance(scores, NumericArray) and len(scores) == 3_000_000
    assert scores[2_999_999] == 1.5


def test_6_millions_of_empty_strings_are_refused_quickly(tmp_path: Path) -> None:
    key = b"tokenizer.ggml.tokens"
    body = struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 200_000_000)
    path = tmp_path / "s.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + body)
    os.truncate(path, 2 << 30)
    with pytest.raises(GGUFError, match="strings"):
        _bounded(lambda: read_gguf(path), 3, 16)


def test_6_expert_used_count_of_2_to_the_32_minus_1_is_refused(
        write: Callable[..., Path]) -> None:
    h = base_header("Qwen3-30B-A3B Q4_K_M").set("qwen3moe.expert_used_count", raw.UINT32,
                                                2**32 - 1)
    refusal(write(h), "expert_used_count = 4294967295 is more than the 128 experts")


def test_6_a_text_file_is_read_up_to_a_cap() -> None:
    with pytest.raises(untrusted.ReadLimitError, match="more than the 1048576 bytes"):
        _bounded(lambda: untrusted.read_text_capped("/dev/zero", 1 << 20), 2, 8)


# --- 7. tracebacks ------------------------------------------------------------------------


@pytest.mark.parametrize(("vtype", "value", "match"), [
    (raw.FLOAT32, math.inf, "wrong type f32 but expected type u32"),
    (raw.STRING, "4096", "wrong type str but expected type u32"),
    (raw.FLOAT64, -1.0, "wrong type f64"),
])
def test_7_a_number_key_of_another_type_is_a_one_line_refusal(
        write: Callable[..., Path], vtype: int, value: object, match: str) -> None:
    refusal(write(base_header().set("llama.context_length", vtype, value)), match)


def test_7_infinity_in_a_key_kvgui_reads_for_some_architectures(
        write: Callable[..., Path]) -> None:
    h = base_header().set("llama.ssm.inner_size", raw.FLOAT32, math.inf)
    refusal(write(h), "must be a whole number")


def test_7_a_split_name_with_impossible_numbers_is_one_file(write: Callable[..., Path]) -> None:
    path = write(base_header(), "name-00000-of-00000.gguf")
    assert load_model(path).n_layer == 28


def test_7_deeply_nested_json_is_one_line() -> None:
    with pytest.raises(ValueError, match="nested more than 64 deep"):
        untrusted.loads_json("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested more than 64 deep"):
        untrusted.loads_json("[" * 200 + "]" * 200)
    assert untrusted.loads_json('{"a": [1, {"b": 2}]}') == {"a": [1, {"b": 2}]}


# --- 8. odd paths and long text -----------------------------------------------------------


def _ends(fn: Callable[[], object], seconds: float, unblock: Callable[[], None]) -> object:
    result: list[object] = []
    t = threading.Thread(target=lambda: result.append(_catch(fn)), daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        unblock()
        t.join(5)
        pytest.fail(f"still running after {seconds} s")
    return result[0]


def _catch(fn: Callable[[], object]) -> object:
    try:
        return fn()
    except Exception as exc:
        return exc


def _unblock_fifo(path: Path) -> Callable[[], None]:
    def unblock() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)

    return unblock


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_8_a_fifo_as_the_model_is_refused_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    result = _ends(lambda: load_model(fifo), 5, _unblock_fifo(fifo))
    assert isinstance(result, GGUFError) and "FIFO" in str(result)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_8_a_fifo_as_a_split_part_is_refused_without_waiting(
        write: Callable[..., Path], tmp_path: Path) -> None:
    h = base_header().set("split.no", raw.UINT16, 0).set("split.count", raw.UINT16, 2)
    first = write(h, "m-00001-of-00002.gguf")
    fifo = tmp_path / "m-00002-of-00002.gguf"
    os.mkfifo(fifo)
    result = _ends(lambda: load_model(first), 5, _unblock_fifo(fifo))
    assert isinstance(result, GGUFError) and "FIFO" in str(result)


def test_8_a_99999_part_name_is_quick_and_short(write: Callable[..., Path]) -> None:
    path = write(base_header(), "x-00001-of-99999.gguf")  # > llama.cpp's uint16 split.count
    t0 = time.perf_counter()
    assert load_model(path).n_layer == 28
    h = base_header().set("split.no", raw.UINT16, 0).set("split.count", raw.UINT16, 65000)
    path = write(h, "y-00001-of-65000.gguf")
    text = refusal(path, "missing 64999 part")
    assert time.perf_counter() - t0 < 5 and "and 64996 more" in text


def test_8_a_megabyte_of_pasted_command_is_refused_at_once() -> None:
    t0 = time.perf_counter()
    with pytest.raises(CommandParseError, match="kvgui reads a command of up to"):
        parse_command("A=1 " * 250_000 + "llama-cli -m x")
    # and just under the cap it is read in linear time
    parse_command("A=1 " * 60_000 + "llama-cli -m x -c 4096")
    assert time.perf_counter() - t0 < 3


# --- 10. headers llama.cpp refuses ----------------------------------------------------------

_LLAMA = "llama"


def _dup_key(h: raw.Header) -> raw.Header:
    h.entries.append(h.get("llama.context_length").clone())
    return h


def _dup_tensor(h: raw.Header) -> raw.Header:
    t = h.tensors[1]
    h.tensors.append(raw.Tensor(t.name, t.shape, t.type_id))
    return h


def _misaligned(h: raw.Header) -> raw.Header:
    h.tensors[2].offset = raw.data_bytes(raw.Header([], h.tensors[:2])) + 4
    return h


def _overlap(h: raw.Header) -> raw.Header:
    h.tensors[2].offset = 0
    return h


def _i32_array_kv(h: raw.Header) -> raw.Header:
    return h.set("llama.attention.head_count_kv", raw.ARRAY, [8] * 27 + [-2], raw.INT32)


HEADER_CASES: list[tuple[str, Callable[[raw.Header], raw.Header], str]] = [
    ("duplicate key", _dup_key, "duplicate key 'llama.context_length'"),
    ("duplicate tensor", _dup_tensor, "duplicate tensor name"),
    ("misaligned offset", _misaligned, "has offset .*, expected"),
    ("overlapping offset", _overlap, "has offset 0, expected"),
    ("string block_count", lambda h: h.set("llama.block_count", raw.STRING, "28"),
     "wrong type str"),
    ("bool block_count", lambda h: h.set("llama.block_count", raw.BOOL, True),
     "wrong type bool"),
    ("float block_count", lambda h: h.set("llama.block_count", raw.FLOAT32, 28.0),
     "wrong type f32"),
    ("negative head_count_kv", lambda h: h.set("llama.attention.head_count_kv", raw.INT32, -8),
     "wrong type i32"),
    ("negative entry in a head_count_kv array", _i32_array_kv, r"head_count_kv\[27\] = -2"),
    ("head_count array of the wrong length",
     lambda h: h.set("llama.attention.head_count", raw.ARRAY, [24] * 27, raw.UINT32),
     "wrong array length; expected 28, got 27"),
    ("no block_count", lambda h: h.drop("llama.block_count"), "key not found in model"),
    ("513 layers", lambda h: h.set("llama.block_count", raw.UINT32, 513), "1 to 512 layers"),
    ("alignment of another type", lambda h: h.set("general.alignment", raw.UINT64, 32),
     "must be of type u32"),
    ("alignment not a power of two", lambda h: h.set("general.alignment", raw.UINT32, 48),
     "power of two"),
    ("nested array", lambda h: h.set("x.nested", raw.ARRAY, [raw.Entry("", raw.ARRAY, [1])],
                                     raw.ARRAY), "array of arrays"),
]


@pytest.mark.parametrize(("change", "match"), [c[1:] for c in HEADER_CASES],
                         ids=[c[0] for c in HEADER_CASES])
def test_10_headers_llama_cpp_refuses_are_refused(
        write: Callable[..., Path], change: Callable[[raw.Header], raw.Header],
        match: str) -> None:
    refusal(write(change(base_header())), match)


def test_10_split_parts_are_checked_as_llama_cpp_does(write: Callable[..., Path]) -> None:
    h = base_header()
    first = h.copy().set("split.no", raw.UINT16, 0).set("split.count", raw.UINT16, 2)
    first.tensors = h.tensors[:10]
    second = raw.Header([raw.Entry("split.no", raw.UINT16, 0)], h.tensors[10:])
    write(first, "s-00001-of-00002.gguf")
    path = write(second, "s-00002-of-00002.gguf")
    refusal(path, "invalid split file idx: 0, expected 1")
    second.entries = [raw.Entry("split.no", raw.UINT16, 1)]
    second.tensors = h.tensors[9:]  # tensor 9 is in both
    write(second, "s-00002-of-00002.gguf")
    refusal(path, "is duplicated")


@pytest.mark.llama
def test_10_llama_cpp_refuses_each_of_these_too(tmp_path: Path) -> None:
    """The same changes on a model llama.cpp loads: llama.cpp refuses every one as well."""
    from kvgui.testing.llama_probe import probe
    from kvgui.testing.tiny_model import write_tiny_model

    tiny = raw.read(write_tiny_model(tmp_path / "tiny.gguf"))
    n_layer = next(e.value for e in tiny.entries if e.key == "llama.block_count")
    cases = {"ok": tiny.copy()}
    for name, change, _ in HEADER_CASES:
        if "array" in name and "nested" not in name:  # sized for 28 layers: resize
            h = tiny.copy()
            cases[name] = change(h)
            e = cases[name].get(next(k for k in ("llama.attention.head_count_kv",
                                                 "llama.attention.head_count")
                                     if cases[name].get(k).vtype == raw.ARRAY))
            e.value = e.value[:n_layer - 1] + ([-2] if e.etype == raw.INT32 else [])
            continue
        cases[name] = change(tiny.copy())
    cases["key_length 0"] = tiny.copy().set("llama.attention.key_length", raw.UINT32, 0)
    paths = {name: raw.write(h, tmp_path / f"{i}.gguf") for i, (name, h) in
             enumerate(cases.items())}
    results = probe(list(paths.values()))
    for name, path in paths.items():
        r = results[str(path)]
        kvgui_ok = _catch(lambda p=path: load_model(p))
        if name == "ok":
            assert r.loaded and not isinstance(kvgui_ok, Exception)
        else:
            assert not r.loaded, f"llama.cpp loads '{name}'"
            assert isinstance(kvgui_ok, GGUFError), f"kvgui loads '{name}'"


# --- 12. the import parser: one command or refused --------------------------------------------


@pytest.mark.parametrize(("text", "shell", "match"), [
    ("llama-cli -m a\nrm -rf /", "posix", "line 2 .*second command"),
    ("llama-cli -m a `rm -rf /`", "posix", "backtick"),
    ('llama-cli -m "a`id`"', "posix", "backtick"),
    ('llama-cli -sys "$(rm -rf /)"', "posix", r"\$\(\.\.\.\) inside double quotes"),
    ("& llama-cli.exe -m a\nRemove-Item x", "powershell", "second command"),
    ('llama-cli.exe -sys "$(Remove-Item x)"', "powershell", "inside double quotes"),
    ('llama-cli.exe -m "C:\\a"\r\ncalc.exe', "cmd", "second command"),
])
def test_12_a_pasted_text_is_one_command_or_refused(text: str, shell: str, match: str) -> None:
    with pytest.raises(CommandParseError, match=match):
        parse_command(text, shell)


def test_12_continuations_and_comments_are_still_one_command() -> None:
    p = parse_command("# a note\nllama-cli \\\n  -m a.gguf -c 8192  # trailing\n\n", "posix")
    assert p.model_path == "a.gguf" and p.settings.n_ctx == 8192


@pytest.mark.parametrize(("flag", "match"), [
    ("-c ٤٠٩٦", "only the digits 0-9"),
    ("-c 4_096", "llama.cpp would read 4 and ignore the rest"),
    ("-c 99999999999", "above 2147483647"),
    ("-b 99999999999999", "above 2147483647"),
    ("-np 300", "above 256"),
    ("-ngl 99999999999999999999", "outside llama.cpp.s int32 range"),
    ("-ts 1,nan", "finite"),
    ("--port 70000", "above 65535"),
])
def test_12_numbers_are_read_as_llama_cpp_reads_them(flag: str, match: str) -> None:
    with pytest.raises(CommandParseError, match=match):
        parse_command(f"llama-cli -m a.gguf {flag}")


# --- 9 (ranges as pure functions) ---------------------------------------------------------


@pytest.mark.parametrize(("field", "value", "match"), [
    ("n_ctx", 2**31, "above 2147483647"),
    ("n_ctx", 4294971392, "above 2147483647"),
    ("n_batch", 10**14, "above"),
    ("n_parallel", 257, "above 256"),
    ("n_gpu_layers", 10**20, "above"),
    ("n_ctx", "4096", "whole number"),
    ("n_ctx", 4096.0, "whole number"),
    ("n_ubatch", True, "whole number"),
    ("kv_offload", "no", "true or false"),
    ("tensor_split", (1.0,) * 17, "at most 16"),
    ("tensor_split", (1.0, -1.0), "not negative"),
])
def test_9_settings_hold_only_what_llama_cpp_can(field: str, value: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Settings(**{field: value})


def test_9_limits() -> None:
    assert limits.check("n_threads", 512) == 512
    with pytest.raises(limits.LimitError, match="GGML_MAX_N_THREADS"):
        limits.check("n_threads", 100_000)
    assert limits.parse_int(" 42 ", "-t") == 42
    assert Settings(n_ctx=limits.INT32_MAX).n_ctx == limits.INT32_MAX


def test_4_a_zero_full_attention_interval_is_refused(write: Callable[..., Path]) -> None:
    h = base_header()
    for e in h.entries:  # the same header as a qwen3next (which reads the interval)
        e.key = e.key.replace("llama.", "qwen3next.")
    h.set("general.architecture", raw.STRING, "qwen3next")
    assert load_model(write(h, "a.gguf")).arch == "qwen3next"
    h.set("qwen3next.full_attention_interval", raw.UINT32, 0)
    refusal(write(h, "b.gguf"), "full_attention_interval = 0")


def test_1_the_cli_export_refuses_in_one_line(write: Callable[..., Path]) -> None:
    path = write(base_header())
    out = subprocess.run([sys.executable, "-m", "kvgui", "export", str(path), "--shell", "cmd",
                          "--system-prompt", "Be brief.\ncalc.exe & echo pwned"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "cmd ends the command at a line break" in out.stderr
