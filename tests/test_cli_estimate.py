"""``kvgui estimate`` and ``kvgui fit`` as a user runs them: real processes, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


def kvgui(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvgui", *args], capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def llama3(sparse_model: Callable[[str], Path]) -> Path:
    return sparse_model("Llama-3.1-8B-Instruct Q4_K_M")


def test_estimate_table(llama3: Path) -> None:
    r = kvgui("estimate", str(llama3), "-c", "32768", "--vram", "8GiB", "--reserve", "0")
    assert r.returncode == 1, r.stderr  # exit status 1: does not fit
    assert "Llama-3.1-8B-Instruct" in r.stdout and "K cache" in r.stdout
    assert "2.00 GiB" in r.stdout  # the f16 K cache at 32K
    assert "fits: NO" in r.stdout and "over by" in r.stdout


def test_estimate_json_shape_and_flags_as_llama_cpp_spells_them(llama3: Path) -> None:
    r = kvgui("estimate", str(llama3), "-c", "32700", "-ctk", "q8_0", "-ctv", "q8_0",
              "-fa", "on", "-ngl", "all", "-b", "1024", "-ub", "256", "-np", "1",
              "--vram", "8G", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["settings"] == {"n_ctx": 32768, "type_k": "q8_0", "type_v": "q8_0",
                                "flash_attn": True, "n_gpu_layers": 33, "n_batch": 1024,
                                "n_ubatch": 256, "n_parallel": 1, "swa_full": False,
                                "n_cpu_moe": 0, "override_tensor": [], "rpc_servers": []}
    assert data["memory"]["kv"] == 2 * 34 * (1024 // 32) * 32768 * 32
    assert data["memory"]["total"] == sum(d["total"] for d in data["devices"])
    assert data["fits"] is True and data["errors"] == []
    assert data["model"]["file_bytes"] == llama3.stat().st_size


def test_refused_combination_is_reported(llama3: Path) -> None:
    r = kvgui("estimate", str(llama3), "-ctv", "q4_0", "-fa", "off", "--json")
    data = json.loads(r.stdout)
    assert data["fits"] is False and "flash attention" in data["errors"][0]
    assert data["verdict"] == "refused" and r.returncode == 3
    text = kvgui("estimate", str(llama3), "-ctv", "q4_0", "-fa", "off")
    assert text.returncode == 3 and "refused:" in text.stdout and "fix: -fa auto" in text.stdout
    assert "K cache" not in text.stdout  # no 0.00 MiB cache figures for a refused context


def test_from_command(llama3: Path) -> None:
    r = kvgui("estimate", "--json", "--from-command",
              f"llama-server -m {llama3} -c 16384 -ctk q4_0 -ctv q4_0 --mystery 3")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["settings"]["n_ctx"] == 16384 and data["settings"]["type_k"] == "q4_0"
    assert "--mystery" in " ".join(data.get("unknown_flags", []))


def test_fit(llama3: Path) -> None:
    r = kvgui("fit", str(llama3), "--gpu-model", "RTX 4060", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    ctx = {(t["type_k"], t["type_v"]): t["max_ctx"] for t in data["types"]}
    assert ctx[("f16", "f16")] < ctx[("q8_0", "q8_0")] < ctx[("q4_0", "q4_0")]
    assert data["max_gpu_layers"]["all"] is True
    text = kvgui("fit", str(llama3), "--vram", "4GiB")  # the weights alone do not fit
    assert text.returncode == 1 and "q8_0" in text.stdout and "-ngl" in text.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), (b"", "too small"), (b"just some text, not a model\n", "not a GGUF"),
     (b"GGUF\x03\x00\x00\x00" + b"\xff" * 40, "cannot fit")],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, content: bytes | None,
                                          message: str) -> None:
    path = tmp_path / "bad.gguf"
    if content is not None:
        path.write_bytes(content)
    r = kvgui("estimate", str(path))
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_truncated_model(llama3: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    with open(llama3, "rb") as f:  # the first 2 MB only: the rest is a 4.9 GB hole
        cut.write_bytes(f.read(2_000_000))
    r = kvgui("estimate", str(cut))
    assert r.returncode == 2 and "truncated" in r.stderr and "Traceback" not in r.stderr


def test_directory_and_bad_flags(tmp_path: Path) -> None:
    r = kvgui("estimate", str(tmp_path))
    assert r.returncode == 2 and "directory" in r.stderr
    r = kvgui("estimate", str(tmp_path / "x.gguf"), "-ctk", "q3_k")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_estimate_never_imports_qt(llama3: Path) -> None:
    code = ("import sys; from kvgui.cli import main; main(['estimate', sys.argv[1], '--vram', "
            "'8GiB']); print('QT' if any(m.startswith('PySide6') for m in sys.modules) else "
            "'NOQT')")
    r = subprocess.run([sys.executable, "-c", code, str(llama3)], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout.strip().endswith("NOQT"), r.stdout + r.stderr


def test_plan_from_the_catalog_before_downloading() -> None:
    r = kvgui("estimate", "Llama-3.1-8B-Instruct Q4_K_M", "-c", "32768", "--vram", "8GiB",
              "--reserve", "0", "--json")
    assert r.returncode == 1, r.stderr  # over budget
    data = json.loads(r.stdout)
    assert data["memory"]["kv"] == 4 * 2**30 and data["fits"] is False
    assert data["model"]["path"] is None and data["model"]["file_bytes"] == 4_915_755_968
    listing = kvgui("estimate", "--list-models")
    assert "Gemma-3-12B-it Q4_K_M" in listing.stdout
    missing = kvgui("chat", "Llama-3.1-8B-Instruct Q4_K_M", "-p", "hi")  # needs a real file
    assert missing.returncode == 2 and "no such file" in missing.stderr


@pytest.mark.parametrize(("flag", "value"), [
    ("-c", "4294971392"), ("-c", "٤٠٩٦"), ("-c", "4_096"), ("-ngl", "99999999999999999999"),
    ("-b", "99999999999999"), ("-np", "300"), ("-ub", "0")])
def test_numbers_past_llama_cpp_limits_are_refused(capsys: pytest.CaptureFixture[str],
                                                   flag: str, value: str) -> None:
    """Not wrapped to another number, not guessed: one line, exit status 2."""
    from kvgui.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["estimate", "Llama-3.1-8B-Instruct Q4_K_M", flag, value])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("kvgui estimate: error: argument") and flag in err[-1]
    assert "Traceback" not in "\n".join(err)
