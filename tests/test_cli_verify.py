"""``kvgui verify``: the estimate beside llama.cpp's own dry run, on the tiny real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvgui.cli import main

pytestmark = pytest.mark.llama
pytest.importorskip("llama_cpp")

KEYS = {"weights", "kv_k", "kv_v", "kv", "state", "compute", "output", "total"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kvgui.testing.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("verify") / "tiny.gguf")


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    rc = main(["verify", *argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def test_json_puts_estimate_beside_llama_cpp(tiny: Path, capsys) -> None:
    from kvgui.core.config.settings import Settings
    from kvgui.runtime.dryrun import dry_run

    rc, data = run_json(capsys, str(tiny), "-c", "3000", "-ctk", "q8_0", "-fa", "on")
    assert rc == 0
    assert set(data["estimate"]) >= KEYS and set(data["llama_cpp"]) >= KEYS
    assert data["n_ctx"] == {"estimate": 3072, "llama_cpp": 3072}
    assert data["flash_attn"]["llama_cpp"] is True
    assert data["settings"]["type_k"] == "q8_0"
    assert any(d["name"] == "CPU" for d in data["devices"])
    for key, diff in data["difference"].items():
        assert diff == data["estimate"][key] - data["llama_cpp"][key]
    # the llama.cpp side is the dry run for the same settings
    direct = dry_run(tiny, Settings(n_ctx=3000, type_k="q8_0", flash_attn="on"))
    assert data["llama_cpp"] == direct.memory()
    assert "kv" in data["exact"]
    # a plain llama's KV cache: kvgui's estimate is llama.cpp's to the byte
    assert data["difference"]["kv"] == 0


def test_text_output(tiny: Path, capsys) -> None:
    assert main(["verify", str(tiny), "-c", "2048"]) == 0
    out = capsys.readouterr().out
    assert "estimate" in out and "llama.cpp" in out
    assert "KV cache" in out and "compute buffers" in out
    assert "n_ctx: estimate 2048, llama.cpp 2048" in out
    assert "dry run took" in out


def test_llama_cpp_refusal_is_reported(tiny: Path, capsys) -> None:
    rc, data = run_json(capsys, str(tiny), "-ctv", "q8_0", "-fa", "off")
    assert rc == 4  # exit status 4: llama.cpp failed
    assert data["llama_cpp"] is None
    assert "flash" in data["error"]
    assert data["estimate_errors"]  # kvgui saw it coming


def test_not_a_model_is_a_usage_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "x.gguf"
    bad.write_text("not a model")
    assert main(["verify", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvgui verify:") and err.count("\n") == 1
