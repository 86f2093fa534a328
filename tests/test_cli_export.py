"""``kvgui export``: what it prints for each format, and its errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvgui.cli import main
from kvgui.core.commandline.parse import parse_command
from kvgui.core.commandline.preset import preset_from_json
from kvgui.core.commandline.shellquote import split_command
from kvgui.core.config.settings import FlashAttn, Settings

MODEL = "/models/my model.gguf"


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["export", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_llama_cli_posix(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, MODEL, "-c", "32768", "-ctk", "q8_0", "-ctv", "q8_0",
                          "-fa", "on", "--shell", "posix")
    assert code == 0 and err == ""
    assert out == ("llama-cli -m '/models/my model.gguf' -c 32768 -ngl all -ctk q8_0 "
                   "-ctv q8_0 -fa on\n")


def test_llama_server_powershell(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "C:\\Models\\it's.gguf", "-c", "8192", "-ngl", "20",
                        "--format", "llama-server", "--shell", "powershell",
                        "--host", "0.0.0.0", "--port", "9000", "--program",
                        "C:\\Program Files\\llama\\llama-server.exe")
    assert code == 0
    assert out == ("& 'C:\\Program Files\\llama\\llama-server.exe' -m 'C:\\Models\\it''s.gguf' "
                   "-c 8192 -ngl 20 -np 1 --host 0.0.0.0 --port 9000\n")
    parsed = parse_command(out, "powershell")
    assert parsed.model_path == "C:\\Models\\it's.gguf"
    assert parsed.settings == Settings(n_ctx=8192, n_gpu_layers=20,
                                       extra_args=("--host", "0.0.0.0", "--port", "9000"))


def test_cmd_and_multiline(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "C:\\My Models\\a.gguf", "--shell", "cmd", "--multiline",
                        "-nkvo")
    assert code == 0
    assert out == (
        'llama-cli ^\n  -m "C:\\My Models\\a.gguf" ^\n  -c 4096 ^\n  -ngl all ^\n  -nkvo\n'
    )
    assert split_command(out, "cmd") == ["llama-cli", "-m", "C:\\My Models\\a.gguf", "-c",
                                         "4096", "-ngl", "all", "-nkvo"]


def test_full_writes_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = _run(capsys, MODEL, "--full", "--shell", "posix")
    argv = split_command(out, "posix")
    for flag in ("-ctk", "-ctv", "-fa", "-b", "-ub", "-np", "-kvo"):
        assert flag in argv


def test_system_prompt_and_notes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, MODEL, "-sys", 'Say "hi" & $go', "--shell", "posix")
    assert code == 0
    assert parse_command(out, "posix").extras["system_prompt"] == 'Say "hi" & $go'
    assert err == ""
    code, out, err = _run(capsys, MODEL, "--format", "llama-server", "-sys", "x")
    assert "-sys" not in split_command(out, "posix")
    assert err.startswith("kvgui export: note: llama-server has no -sys")


def test_python(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, MODEL, "--format", "python", "-c", "2048", "-ctk", "q4_0",
                          "-fa", "on")
    assert code == 0 and err == ""
    compile(out, "<export>", "exec")
    assert "type_k=2,  # q4_0" in out and "n_ctx=2048," in out and "flash_attn=True," in out


def test_json_preset_loads_back(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, MODEL, "--format", "json", "-c", "16384", "-fa", "off",
                        "-ts", "1/1", "--port", "8081", "-sys", "hi")
    assert code == 0
    preset = preset_from_json(out)
    assert preset.model_path == MODEL
    assert preset.settings == Settings(n_ctx=16384, flash_attn=FlashAttn.OFF,
                                       tensor_split=(1.0, 1.0))
    assert preset.extras == {"port": 8081, "system_prompt": "hi"}


@pytest.mark.skipif(shutil.which("sh") is None or os.name == "nt", reason="needs POSIX sh")
def test_output_writes_a_runnable_script(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    # a stand-in llama-cli that prints the argv it receives
    fake = tmp_path / "llama cli"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n",
                    encoding="utf-8")
    fake.chmod(0o755)
    script = tmp_path / "run.sh"
    code, out, _ = _run(capsys, MODEL, "-c", "1024", "-ctv", "q8_0", "--program", str(fake),
                        "-o", str(script), "--shell", "posix")
    assert code == 0 and out == ""
    assert os.access(script, os.X_OK)
    got = subprocess.run([str(script), "--temp", "0.1"], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(got) == ["-m", MODEL, "-c", "1024", "-ngl", "all", "-ctv", "q8_0",
                               "--temp", "0.1"]


def test_context_zero_reads_the_model(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    tiny = pytest.importorskip("kvgui.testing.tiny_model")
    model = tiny.write_tiny_model(tmp_path / "t.gguf", n_ctx_train=2048)
    code, out, _ = _run(capsys, str(model), "-c", "0", "--shell", "posix")
    assert code == 0
    assert split_command(out, "posix")[3:5] == ["-c", "2048"]


def test_bad_input_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _run(capsys, "/nowhere/missing.gguf", "-c", "0")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "missing.gguf" in err
    with pytest.raises(SystemExit) as info:
        main(["export", MODEL, "-ctk", "q3_k"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        main(["export", MODEL, "--port", "70000"])
    capsys.readouterr()
    code, _, err = _run(capsys, MODEL, "-o", "/nonexistent-dir/x.sh")
    assert code == 2 and err.startswith("kvgui export: cannot write")


# (kvgui's flags, the llama-cli flags after -c/-ngl): kvgui's CLI reads -ot, --cpu-moe,
# --n-cpu-moe in order as llama.cpp does, and exports them in Settings' order
OFFLOAD_FLAGS = [
    (["--n-cpu-moe", "12"], ["--n-cpu-moe", "12"]),
    (["-ncmoe", "4", "-cmoe"], ["--cpu-moe"]),
    (["-ot", r"blk\.(4[0-7])\.ffn_.*_exps=CPU", "-ot", "output=CUDA0"],
     ["-ot", r"blk\.(4[0-7])\.ffn_.*_exps=CPU,output=CUDA0"]),
    (["-ot", "a=CUDA0", "--n-cpu-moe", "2"], ["-ot", "a=CUDA0", "--n-cpu-moe", "2"]),
    # --n-cpu-moe before an -ot to a GPU: its overrides are spelled out, the order kept
    (["--n-cpu-moe", "1", "-ot", "exps=CUDA0"],
     ["-ot", r"blk\.0\.ffn_(up|down|gate|gate_up)_(ch|)exps=CPU,exps=CUDA0"]),
    (["--rpc", "10.0.0.2:50052", "--rpc", "10.0.0.3:50052,10.0.0.2:50052"],
     ["--rpc", "10.0.0.2:50052,10.0.0.3:50052"]),
]


@pytest.mark.parametrize(("flags", "exported"), OFFLOAD_FLAGS)
def test_offload_flags_round_trip(capsys: pytest.CaptureFixture[str], flags: list[str],
                                  exported: list[str]) -> None:
    code, out, err = _run(capsys, MODEL, *flags, "--shell", "posix")
    assert code == 0 and err == ""
    argv = split_command(out, "posix")
    assert argv == ["llama-cli", "-m", MODEL, "-c", "4096", "-ngl", "all", *exported]
    # and llama.cpp's reading of the export is the Settings kvgui read from its own flags
    assert parse_command(out, "posix").settings == parse_command(
        " ".join(["llama-cli", "-m", "m", *[f"'{f}'" for f in flags]]), "posix").settings


@pytest.mark.parametrize("flags", [
    ["-ot", "exps"], ["-ot", "a=CPU,"], ["--n-cpu-moe", "-1"], ["--n-cpu-moe", "x"],
    ["--rpc", "nohost"], ["--rpc", "h:70000"],
])
def test_bad_offload_flags_exit_2(capsys: pytest.CaptureFixture[str], flags: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["export", MODEL, *flags])
    assert info.value.code == 2
    capsys.readouterr()
