"""``kvgui chat``: one turn, --json, refusals, and the interactive mode, with real llama.cpp."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kvgui.cli import main
from kvgui.runtime.llama_log import LOGGED_PRECISION_BYTES
from kvgui.testing.tiny_model import write_tiny_model

pytestmark = pytest.mark.llama
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf"))


def test_one_turn_streams_the_reply(tiny: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", tiny, "-c", "512", "-p", "hello", "-n", "6", "-s", "3"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and out.endswith("\n")
    assert "tokens" in err and "t/s" in err and "first token" in err and "/512" in err


def test_json_has_the_documented_shape(tiny: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["chat", tiny, "-c", "700", "-ctk", "q8_0", "-ctv", "q5_0", "-fa", "on",
               "-p", "hello", "-n", "5", "-s", "1", "--sys", "be brief", "--json"])
    out, _ = capsys.readouterr()
    assert rc == 0
    data = json.loads(out)
    for key in ("reply", "tokens", "tokens_per_s", "prompt_tokens_per_s", "ttft_s",
                "measured", "estimate", "settings"):
        assert key in data, key
    memory_keys = {"weights", "kv_k", "kv_v", "kv", "compute", "output", "n_ctx"}
    assert memory_keys <= set(data["measured"]) and memory_keys <= set(data["estimate"])
    assert data["measured"]["n_ctx"] == data["estimate"]["n_ctx"] == 768
    for key in ("kv_k", "kv_v"):
        assert abs(data["measured"][key] - data["estimate"][key]) <= LOGGED_PRECISION_BYTES
    assert data["settings"]["type_k"] == "q8_0" and data["settings"]["flash_attn"] == "on"
    assert data["tokens"] >= 5 and data["ttft_s"] > 0


def test_refused_settings_exit_3_without_launching(
        tiny: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", tiny, "-ctv", "q4_0", "-fa", "off", "-p", "hi"]) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs flash attention" in err


def test_not_a_model_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_text("not a model")
    assert main(["chat", str(junk), "-p", "hi"]) == 2
    assert capsys.readouterr().err.startswith("kvgui chat: ")
    assert main(["chat", tiny_missing := str(tmp_path / "none.gguf"), "-p", "hi"]) == 2
    assert tiny_missing in capsys.readouterr().err


def test_bad_sampling_and_json_without_prompt_exit_2(
        tiny: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", tiny, "-p", "hi", "--top-p", "3"]) == 2
    assert main(["chat", tiny, "--json"]) == 2
    assert "--json needs -p" in capsys.readouterr().err


def test_interactive_session(tiny: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "kvgui", "chat", tiny, "-c", "512", "-n", "4", "-s", "2"],
        input="hello\n/reset\nagain\n/exit\n", capture_output=True, text=True, timeout=60,
        cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("tokens,") == 2
    assert "(new conversation)" in proc.stderr
    assert proc.stdout.count("> ") >= 3
