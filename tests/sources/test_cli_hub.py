"""The CLI on Hub models: every command takes repo[:quant] / -hf / a URL; fit --quants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvgui.cli import main
from kvgui.core.config.settings import Settings
from kvgui.core.devices.device_budget import DeviceBudget
from kvgui.core.memory.fit_table import fit_row
from kvgui.core.model.info import load_model
from kvgui.sources.quant_table import TABLE_PAIRS
from kvgui.testing.fake_hub import FakeHub
from kvgui.testing.hub_repos import GEMMA, LLAMA, QWEN_SPLIT, TINY


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_fit_quants_json_matches_the_files_on_disk(hub: FakeHub, hub_files: dict[str, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "fit", QWEN_SPLIT, "--quants", "--vram", "8GiB", "--reserve",
                      "0", "-c", "16384", "--json")
    assert rc == 0
    data = json.loads(out)
    assert [q["quant"] for q in data["quants"]] == ["Q4_K_M", "Q6_K"]
    q6 = data["quants"][1]
    assert len(q6["files"]) == 3 and q6["hf"] == f"{QWEN_SPLIT}:Q6_K"
    assert [(p["type_k"], p["type_v"]) for p in data["pairs"]] == list(TABLE_PAIRS)
    devices = [DeviceBudget(d["name"], d["budget"], is_gpu=d["name"] != "CPU")
               for d in data["budget"]]
    expected = fit_row(load_model(hub_files["qwen_q6_1"]), Settings(n_ctx=16384), devices,
                       TABLE_PAIRS)
    assert q6["pairs"] == [c.to_json() for c in expected]
    assert any(p["fits"] for p in q6["pairs"]) and not all(p["fits"] for p in q6["pairs"])


def test_fit_quants_table_shows_projectors(hub: FakeHub,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "fit", f"https://huggingface.co/{GEMMA}", "--quants",
                      "--vram", "12GiB")
    assert rc == 0
    assert "Q4_K_M" in out and "vision projector: mmproj-model-f16.gguf" in out
    assert "✓" in out


def test_estimate_of_a_hub_model_equals_the_file(hub: FakeHub, hub_files: dict[str, Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    rc, remote, _ = _run(capsys, "estimate", "-hf", f"{LLAMA}:q8_0", "-c", "8192", "--vram",
                         "12GiB", "--json")
    assert rc == 0
    rc, local, _ = _run(capsys, "estimate", str(hub_files["llama_q8"]), "-c", "8192", "--vram",
                        "12GiB", "--json")
    r, m = json.loads(remote), json.loads(local)
    assert r["memory"] == m["memory"] and r["devices"][0] == m["devices"][0]  # [1]: free RAM
    assert r["model"]["path"] is None and r["model"]["name"] == m["model"]["name"]


def test_export_writes_hf_and_download_then_as_path(hub: FakeHub,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(capsys, "export", f"{LLAMA}:Q4_K_M", "--format", "llama-server")
    assert rc == 0 and f"-hf {LLAMA}:Q4_K_M" in out and " -m " not in out
    rc, _, err = _run(capsys, "verify", TINY)
    assert rc == 2 and "only its header has been read; download it first" in err
    rc, out, err = _run(capsys, "download", TINY)
    assert rc == 0
    path = Path(out.strip())
    assert path.is_file() and "part 1/1" in err
    rc, out, _ = _run(capsys, "export", TINY, "--as-path")
    assert rc == 0 and f"-m {path}" in out


def test_hub_errors_are_one_line(hub: FakeHub, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(capsys, "fit", "kvgui-test/nope", "--quants", "--vram", "8GiB")
    assert rc == 2 and err.count("\n") == 1 and "not found, or private (401)" in err
    rc, _, err = _run(capsys, "estimate", f"{LLAMA}:IQ1_S")
    assert rc == 2 and "no quant IQ1_S (it has: Q4_K_M, Q8_0)" in err
