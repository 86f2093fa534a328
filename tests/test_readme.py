"""The README's two commands are what a newcomer runs; CI must run the same test command."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _sh_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```sh\n(.*?)```", text, re.S)]


def test_ci_runs_the_readme_test_command() -> None:
    blocks = _sh_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    install_and_run, run_tests = blocks[0], blocks[1]
    assert install_and_run.endswith("kvgui") and "pip install ." in install_and_run
    assert "pytest" in run_tests and "[test]" in run_tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert run_tests in ci, "the README's test command must appear verbatim in .ci/run"


def test_readme_has_no_placeholders_left() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert not re.search(r"\b[A-Z]+_TABLE\b", text)
    assert (ROOT / "docs" / "screenshot.png").is_file()


def test_ci_prepares_the_real_llama_cpp_before_the_tests() -> None:
    # the llama_tools / real_model fixtures skip when absent: CI must provide both first
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    first_pytest = next(i for i, line in enumerate(ci) if "-m pytest" in line)
    before = "\n".join(ci[:first_pytest])
    assert "realmodel]" in before and "-m kvgui.testing.llama_tools build" in before
