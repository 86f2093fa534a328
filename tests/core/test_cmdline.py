"""Exported llama-cli / llama-server argument lists and the llama-cpp-python snippet."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgui.core.commandline.export import (
    export_notes,
    llama_cli_args,
    llama_server_args,
    ngl_arg,
    python_snippet,
    tensor_split_arg,
)
from kvgui.core.commandline.parse import _OPTIONS
from kvgui.core.config.settings import ALL_LAYERS, FlashAttn, Settings, SplitMode

MODEL = "/models/m.gguf"
REPRESENTATIVE = Settings(
    n_ctx=32768, type_k="q8_0", type_v="q4_0", flash_attn=FlashAttn.ON, n_gpu_layers=20,
    n_batch=1024, n_ubatch=256, n_parallel=2, kv_offload=False, swa_full=True,
    kv_unified=True, mmap=False, tensor_split=(3.0, 1.0),
)


def test_defaults_pass_only_model_context_and_layers() -> None:
    assert llama_cli_args(Settings(), MODEL) == [
        "llama-cli", "-m", MODEL, "-c", "4096", "-ngl", "all",
    ]


def test_server_defaults_pin_the_slot_count() -> None:
    # llama-server's own default is -np auto (4 slots, unified KV), so 1 must be explicit
    assert llama_server_args(Settings(), MODEL) == [
        "llama-server", "-m", MODEL, "-c", "4096", "-ngl", "all", "-np", "1",
    ]


def test_representative_cli_args() -> None:
    args = llama_cli_args(REPRESENTATIVE, MODEL, system_prompt="Be brief.")
    assert args == [
        "llama-cli", "-m", MODEL, "-c", "32768", "-ngl", "20",
        "-ctk", "q8_0", "-ctv", "q4_0", "-fa", "on", "-b", "1024", "-ub", "256",
        "-np", "2", "--swa-full", "-nkvo", "-lm", "none", "-ts", "3,1",
        "-sys", "Be brief.",
    ]


def test_representative_server_args() -> None:
    args = llama_server_args(REPRESENTATIVE, MODEL, "0.0.0.0", 9000)
    assert args == [
        "llama-server", "-m", MODEL, "-c", "32768", "-ngl", "20",
        "-ctk", "q8_0", "-ctv", "q4_0", "-fa", "on", "-b", "1024", "-ub", "256",
        "-np", "2", "--swa-full", "-nkvo", "-kvu", "-lm", "none", "-ts", "3,1",
        "--host", "0.0.0.0", "--port", "9000",
    ]


def test_full_lists_every_setting() -> None:
    assert llama_cli_args(Settings(), MODEL, full=True) == [
        "llama-cli", "-m", MODEL, "-c", "4096", "-ngl", "all", "-ctk", "f16", "-ctv", "f16",
        "-fa", "auto", "-b", "2048", "-ub", "512", "-np", "1", "-kvo", "-sm", "layer",
        "-mg", "0", "--repack",
    ]
    assert llama_server_args(Settings(), MODEL, full=True) == [
        "llama-server", "-m", MODEL, "-c", "4096", "-ngl", "all", "-ctk", "f16", "-ctv", "f16",
        "-fa", "auto", "-b", "2048", "-ub", "512", "-np", "1", "-kvo", "-no-kvu",
        "-sm", "layer", "-mg", "0", "--repack", "--host", "127.0.0.1", "--port", "8080",
    ]


# (Settings, the flags they add after -c/-ngl, for llama-cli and llama-server alike)
OFFLOAD_EXPORTS = [
    (Settings(n_cpu_moe=8), ["--n-cpu-moe", "8"]),
    (Settings(n_cpu_moe=-1), ["--cpu-moe"]),
    (Settings(override_tensor=((r"blk\.(2[0-9])\.ffn_.*_exps", "CPU"),)),
     ["-ot", r"blk\.(2[0-9])\.ffn_.*_exps=CPU"]),
    (Settings(override_tensor=(("a", "CUDA0"), ("b", "CPU")), n_cpu_moe=4),
     ["-ot", "a=CUDA0,b=CPU", "--n-cpu-moe", "4"]),
    # --rpc first: arg.cpp resolves an -ot buffer type among the devices registered so far
    (Settings(rpc_servers=("127.0.0.1:50052", "box:50053"),
              override_tensor=(("exps", "RPC0[box:50053]"),)),
     ["--rpc", "127.0.0.1:50052,box:50053", "-ot", "exps=RPC0[box:50053]"]),
    (Settings(n_gpu_layers=30, n_cpu_moe=2, tensor_split=(1.0, 1.0)),
     ["-ts", "1,1", "--n-cpu-moe", "2"]),
]


@pytest.mark.parametrize(("settings", "flags"), OFFLOAD_EXPORTS)
def test_offload_flags(settings: Settings, flags: list[str]) -> None:
    ngl = ngl_arg(settings.n_gpu_layers)
    assert llama_cli_args(settings, MODEL) == [
        "llama-cli", "-m", MODEL, "-c", "4096", "-ngl", ngl, *flags]
    assert llama_server_args(settings, MODEL) == [
        "llama-server", "-m", MODEL, "-c", "4096", "-ngl", ngl, "-np", "1", *flags]


def test_program_and_extra_args() -> None:
    args = llama_cli_args(Settings(), MODEL, program="./build/bin/llama-cli",
                          extra_args=["--temp", "0.7", "--jinja"])
    assert args[0] == "./build/bin/llama-cli"
    assert args[-3:] == ["--temp", "0.7", "--jinja"]


def test_value_spellings() -> None:
    assert ngl_arg(ALL_LAYERS) == "all"
    assert ngl_arg(0) == "0"
    assert ngl_arg(33) == "33"
    assert tensor_split_arg((3.0, 1.0)) == "3,1"
    assert tensor_split_arg((0.5, 0.25, 1)) == "0.5,0.25,1"


def test_notes_for_what_a_target_cannot_take() -> None:
    s = Settings(kv_unified=True, n_parallel=2)
    assert any("-kvu" in n for n in export_notes(s, "llama-cli"))
    assert export_notes(s, "llama-server") == []
    assert any("-sys" in n for n in export_notes(Settings(), "llama-server", system_prompt="x"))
    assert any("auto" in n for n in export_notes(Settings(), "python"))
    assert export_notes(Settings(flash_attn=FlashAttn.OFF), "python") == []


# --- the flags exist in the bundled llama.cpp, for the tool they are given to ---------------


@pytest.fixture(scope="module")
def arg_cpp(llama_source: Path) -> Path:
    """common/arg.cpp of the llama.cpp that llama-cpp-python bundles: its option registry."""
    return llama_source / "common" / "arg.cpp"


def _arg_cpp_registry(arg_cpp: Path) -> dict[str, list[tuple[set[str], set[str]]]]:
    """flag -> [(examples, excludes)] for each add_opt(common_arg(...)) in arg.cpp."""
    text = arg_cpp.read_text(encoding="utf-8")
    registry: dict[str, list[tuple[set[str], set[str]]]] = {}
    for chunk in text.split("add_opt(common_arg(")[1:]:
        chunk = re.sub(r"//[^\n]*", "", chunk)
        m = re.match(r"\s*(\{[^}]*\})\s*,\s*(\{[^}]*\})?", chunk)
        assert m, chunk[:80]
        names = re.findall(r'"(-[^"]+)"', m.group(1) + (m.group(2) or ""))
        body = chunk.split("add_opt(", 1)[0]
        ex = re.search(r"\.set_examples\(\{([^}]*)\}\)", body)
        exc = re.search(r"\.set_excludes\(\{([^}]*)\}\)", body)
        examples = {e.strip() for e in (ex.group(1) if ex else "LLAMA_EXAMPLE_COMMON").split(",")}
        excludes = {e.strip() for e in (exc.group(1) if exc else "").split(",") if e.strip()}
        for name in names:
            registry.setdefault(name, []).append((examples, excludes))
    return registry


def _accepts(registry: dict[str, list[tuple[set[str], set[str]]]], example: str, flag: str) -> bool:
    return any(
        (example in ex or "LLAMA_EXAMPLE_COMMON" in ex) and example not in exc
        for ex, exc in registry.get(flag, [])
    )


def _flags(args: list[str]) -> list[str]:
    return [a for a in args[1:] if re.fullmatch(r"--?[a-z][a-z-]*", a)]


def test_every_exported_flag_is_registered_for_its_tool(arg_cpp: Path) -> None:
    registry = _arg_cpp_registry(arg_cpp)
    threads_and_gpus = REPRESENTATIVE.replace(split_mode=SplitMode.ROW, main_gpu=1, n_threads=8,
                                              mlock=True)
    for full, s in ((False, REPRESENTATIVE), (True, REPRESENTATIVE),
                    (False, threads_and_gpus)):
        cli = llama_cli_args(s, MODEL, system_prompt="x", full=full)
        server = llama_server_args(s, MODEL, "h", 1, full=full)
        if s is threads_and_gpus:
            assert {"-sm", "-mg", "-t", "-lm"} <= set(cli) & set(server)
        for flag in _flags(cli):
            assert _accepts(registry, "LLAMA_EXAMPLE_CLI", flag), flag
        for flag in _flags(server):
            assert _accepts(registry, "LLAMA_EXAMPLE_SERVER", flag), flag


def test_the_registry_reader_sees_per_tool_options(arg_cpp: Path) -> None:
    # guards the test above: it must be able to tell tools apart
    registry = _arg_cpp_registry(arg_cpp)
    assert not _accepts(registry, "LLAMA_EXAMPLE_CLI", "-kvu")
    assert not _accepts(registry, "LLAMA_EXAMPLE_SERVER", "-sys")
    assert not _accepts(registry, "LLAMA_EXAMPLE_CLI", "--port")
    assert not _accepts(registry, "LLAMA_EXAMPLE_CLI", "--no-mmap")


def test_every_flag_the_importer_knows_is_registered(arg_cpp: Path) -> None:
    registry = _arg_cpp_registry(arg_cpp)
    older = {"--mmap", "--no-mmap", "--mlock"}  # replaced by --load-mode in this llama.cpp
    for names, _, _ in _OPTIONS.values():
        for name in names:
            if name not in older:
                assert name in registry, name


def test_ngl_accepts_all_and_fit_leaves_user_values_alone(arg_cpp: Path) -> None:
    # What the exported -c / -ngl rely on, read from the source it was written against.
    text = arg_cpp.read_text(encoding="utf-8")
    assert 'value == "all"' in text and 'value == "auto"' in text
    fit = (arg_cpp.parent / "fit.cpp").read_text(encoding="utf-8")
    assert "context size set by user" in fit
    assert "n_gpu_layers already set by user" in fit


# --- the llama-cpp-python snippet -------------------------------------------------------------


def _llama_kwargs(code: str) -> dict[str, object]:
    tree = ast.parse(code)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Llama":
            return {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
    raise AssertionError("no Llama(...) call")


def test_snippet_passes_every_setting() -> None:
    code = python_snippet(REPRESENTATIVE, MODEL, system_prompt="Be brief.")
    assert _llama_kwargs(code) == {
        "model_path": MODEL, "n_ctx": 32768, "n_gpu_layers": 20, "type_k": 8, "type_v": 2,
        "flash_attn": True, "n_batch": 1024, "n_ubatch": 256, "swa_full": True,
        "offload_kqv": False, "use_mmap": False, "tensor_split": [3.0, 1.0],
    }
    assert "Be brief." in code and "create_chat_completion" in code


def test_snippet_defaults_override_llama_cpp_python_defaults() -> None:
    kwargs = _llama_kwargs(python_snippet(Settings(), MODEL))
    # llama-cpp-python would otherwise use n_batch 512, swa_full on, flash attention off
    assert kwargs["n_batch"] == 2048
    assert kwargs["swa_full"] is False
    assert kwargs["flash_attn"] is True
    assert kwargs["n_gpu_layers"] == -1
    assert "offload_kqv" not in kwargs and "use_mmap" not in kwargs


def test_snippet_flash_attn_auto_uses_the_resolved_value() -> None:
    off = _llama_kwargs(python_snippet(Settings(), MODEL, flash_attn_resolved=False))
    assert off["flash_attn"] is False
    forced = _llama_kwargs(python_snippet(Settings(flash_attn=FlashAttn.OFF), MODEL,
                                          flash_attn_resolved=True))
    assert forced["flash_attn"] is False


@settings(max_examples=60, deadline=None)
@given(path=st.text(st.characters(blacklist_categories=["Cs"]), min_size=1),
       prompt=st.text(st.characters(blacklist_categories=["Cs"])))
def test_snippet_compiles_for_any_path_and_prompt(path: str, prompt: str) -> None:
    code = python_snippet(Settings(), path, system_prompt=prompt or None, prompt=prompt)
    compile(code, "<snippet>", "exec")
    assert _llama_kwargs(code)["model_path"] == path


def _tiny_model(tmp_path: Path) -> Path:
    tiny = pytest.importorskip("kvgui.testing.tiny_model")
    return tiny.write_tiny_model(tmp_path / "tiny model é.gguf")


@pytest.mark.llama
def test_snippet_runs_as_written_on_a_tiny_model(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    model = _tiny_model(tmp_path)
    s = Settings(n_ctx=512, type_k="q8_0", type_v="q8_0", flash_attn=FlashAttn.ON,
                 n_gpu_layers=0, n_batch=256, n_ubatch=128)
    script = tmp_path / "snippet.py"
    script.write_text(python_snippet(s, str(model), system_prompt="Be 'brief'.", max_tokens=4),
                      encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = proc.stderr
    # llama.cpp's own log shows the settings reached the context
    assert re.search(r"llama_context: n_ctx\s+= 512\b", log), log[-2000:]
    assert re.search(r"llama_context: n_batch\s+= 256\b", log)
    assert re.search(r"llama_context: n_ubatch\s+= 128\b", log)
    assert re.search(r"llama_context: flash_attn\s+= enabled", log)
    assert "K (q8_0)" in log and "V (q8_0)" in log
