"""``kvgui measure``: the JSON shape, the cache, the table, and one-line errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvgui.cli import main

pytest.importorskip("llama_cpp")

TOP_KEYS = {"version", "model", "settings", "text", "evaluation", "results", "failures",
            "pareto", "llama_cpp_version", "created", "cached", "kv_budget", "recommended",
            "threshold", "cheapest_within_threshold"}
RESULT_KEYS = {"type_k", "type_v", "label", "ppl", "ppl_stderr", "kl_mean", "kl_stderr",
               "kl_p99", "kl_max", "top1_agreement", "pp_tokens_per_s", "tg_tokens_per_s",
               "kv_bytes", "kv_k_bytes", "kv_v_bytes", "flash_attn", "seconds", "pp_samples",
               "tg_samples", "eval_tokens", "eval_seconds", "profile", "retrieval"}
BASE = ["-c", "256", "--ctx", "128", "--chunks", "3", "-t", "2", "--speed-repeats", "2"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kvgui.testing.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


@pytest.mark.llama
@pytest.mark.slow
def test_json_shape_and_cache(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["measure", str(tiny), *BASE, "--types", "q8_0,q4_0", "--kv-budget", "48K", "--json"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    data = json.loads(out)
    assert set(data) == TOP_KEYS
    assert data["version"] == 2 and data["cached"] is False
    assert [r["label"] for r in data["results"]] == ["f16", "q8_0", "q4_0"]
    assert all(set(r) == RESULT_KEYS for r in data["results"])
    assert data["evaluation"] == {"window": 128, "windows": 3, "tokens": 3 * 63,
                                  "text_tokens": data["evaluation"]["text_tokens"],
                                  "max_windows": 3, "kl_method": "full", "reference": "f16",
                                  "reference_repeated": False, "score_from": 64,
                                  "n_threads": 2, "speed_repeats": 2, "retrieval_ctx": None,
                                  "sweep": ""}
    assert all(len(r["pp_samples"]) == 2 and len(r["tg_samples"]) == 2 for r in data["results"])
    assert data["threshold"] == {"metric": "kl", "value": 0.01, "text": "KL ≤ 0.01"}
    assert data["settings"]["n_ctx"] == 256 and data["settings"]["flash_attn"] == "on"
    assert data["text"]["name"] == "sample (public domain)"
    assert data["model"]["path"] == str(tiny.resolve())
    assert data["kv_budget"] == 48 * 1024
    # f16 (64 KiB) does not fit; q8_0 (34 KiB, logged as 0.04 MiB) is the most faithful that does
    assert data["recommended"] == "q8_0"
    assert data["results"][0]["kl_mean"] == 0.0 and data["results"][2]["kl_mean"] > 0

    # asked again: from the cache, the same figures, no worker
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cached"] is True
    assert again["results"] == data["results"]

    # the table, also from the cache, with a subset of the types
    assert main(["measure", str(tiny), *BASE, "--types", "q4_0"]) == 0
    table = capsys.readouterr().out
    assert "189 tokens scored per type: 3 windows of 128 tokens" in table
    assert "cached" in table
    lines = table.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("type "))
    rows = [ln.split()[0].rstrip("*") for ln in lines[head + 1:head + 3]]
    assert rows == ["f16", "q4_0"]
    assert "median (slowest–fastest) of 2 repeats" in table
    assert "KL by position in the window" in table


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--types", "q9_0"], "unknown cache type"),
        (["--types", "q4_0", "-fa", "off"], "needs flash attention"),
        (["--ctx", "512"], "larger than the context"),
        (["--text", "/nonexistent/text.txt"], "No such file"),
        (["--text", "/dev/zero"], "not a regular file"),  # read until the kernel killed it
        (["--kv-budget", "lots"], "not a size"),
    ],
)
def test_bad_input_is_one_line_and_status_2(tiny: Path, capsys: pytest.CaptureFixture[str],
                                            extra: list[str], message: str) -> None:
    assert main(["measure", str(tiny), *BASE, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("kvgui measure: ")
    assert len(err.strip().splitlines()) == 1


def test_missing_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["measure", str(tmp_path / "none.gguf")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_text_larger_than_the_cap_is_refused_without_reading_it(
        tiny: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import os

    from kvgui.runtime.measure import MAX_TEXT_BYTES

    big = tmp_path / "big.txt"
    with open(big, "wb") as f:  # sparse: the size without the disk
        f.truncate(MAX_TEXT_BYTES + 1)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it would block for ever
    for path, message in ((big, "larger than 64 MiB"), (fifo, "not a regular file")):
        assert main(["measure", str(tiny), *BASE, "--text", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
