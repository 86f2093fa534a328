"""Quoting argument lists for POSIX sh, PowerShell and cmd, and splitting such text back."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgui.core.commandline.shellquote import (
    ShellSyntaxError,
    guess_shell,
    quote_powershell,
    render,
    script,
    split_command,
)

# Arguments a process can receive: anything but NUL (and no lone surrogates in a str). Control
# characters other than tab and line breaks are refused for POSIX sh (no quoting spells them,
# and pasted raw they act on the terminal); PowerShell gets every one as a backtick escape.
_ARG_CHARS = st.characters(blacklist_categories=["Cs", "Cc"])
_TRICKY = st.sampled_from(
    [" ", "'", '"', "$", "`", "\\", "&", "|", ";", "#", "%", "^", "!", "*", "~", "(", ")",
     "\u2019", "\u201c", "é", "模", "\t", "\n", "\r", "-", "=", ",", "{", "@"]
)
ARG = st.text(st.one_of(_ARG_CHARS, _TRICKY), max_size=24)
ARGS = st.lists(ARG, min_size=1, max_size=6)
PS_ARG = st.text(st.one_of(_ARG_CHARS, _TRICKY, st.characters(
    whitelist_categories=["Cc"], blacklist_characters="\x00")), max_size=24)
# cmd.exe cannot carry line breaks (or other control characters) in an argument, and %NAME%
# expands even inside quotes: one % per line at most.
CMD_ARG = st.text(
    st.one_of(
        st.characters(blacklist_categories=["Cs", "Cc"], blacklist_characters="%"),
        st.sampled_from(" '\"$`\\&|;#^!*~()\u2019\u201cé模\t-=,"),
    ),
    max_size=24,
)


@settings(max_examples=300, deadline=None)
@given(args=ARGS, multiline=st.booleans())
def test_round_trip_posix(args: list[str], multiline: bool) -> None:
    assert split_command(render(args, "posix", multiline=multiline), "posix") == args


@settings(max_examples=300, deadline=None)
@given(args=st.lists(PS_ARG, min_size=1, max_size=6), multiline=st.booleans())
def test_round_trip_powershell(args: list[str], multiline: bool) -> None:
    line = render(args, "powershell", multiline=multiline)
    assert not re.search(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]", line.replace(" `\n  ", " "))
    assert split_command(line, "powershell") == args


@settings(max_examples=300, deadline=None)
@given(args=st.lists(CMD_ARG, min_size=1, max_size=6), multiline=st.booleans())
def test_round_trip_cmd(args: list[str], multiline: bool) -> None:
    assert split_command(render(args, "cmd", multiline=multiline), "cmd") == args


def test_posix_examples() -> None:
    args = ["llama-cli", "-m", "/m/my model's.gguf", "-sys", "cost $5 `now`", "-c", "4096"]
    assert render(args) == (
        "llama-cli -m '/m/my model'\"'\"'s.gguf' -sys 'cost $5 `now`' -c 4096"
    )


def test_powershell_examples() -> None:
    assert render(["C:\\Program Files\\llama\\llama-cli.exe", "-m", "D:\\m\\x.gguf"],
                  "powershell") == "& 'C:\\Program Files\\llama\\llama-cli.exe' -m D:\\m\\x.gguf"
    assert quote_powershell("it's") == "'it''s'"
    # PowerShell also ends a single-quoted string at a typographic quote
    assert quote_powershell("it\u2019s") == "'it\u2019\u2019s'"
    assert quote_powershell("3,1") == "'3,1'"  # a bare comma would make an array
    assert quote_powershell("1kb") == "'1kb'"  # a bare 1kb is the number 1024
    assert quote_powershell("$env:HOME") == "'$env:HOME'"
    assert quote_powershell("-ngl") == "-ngl"
    assert quote_powershell("") == "''"


def test_cmd_examples() -> None:
    assert render(["llama-cli.exe", "-m", "C:\\My Models\\x.gguf"], "cmd") == (
        'llama-cli.exe -m "C:\\My Models\\x.gguf"'
    )
    # a trailing backslash is doubled before the closing quote
    assert render(["a", "C:\\dir with space\\"], "cmd") == 'a "C:\\dir with space\\\\"'
    # "" keeps cmd's own quote state in step, so the & stays quoted for cmd too
    assert render(["a", 'say "hi & bye'], "cmd") == 'a "say ""hi & bye"'
    assert render(["a", 'x\\"y'], "cmd") == 'a "x\\\\""y"'


def test_posix_parsing_of_pasted_text() -> None:
    text = """CUDA_VISIBLE_DEVICES=0 ./llama-server \\
      -m "$HOME/models/a \\"b\\".gguf" \\
      -c 8192  # trailing comment
    """
    assert split_command(text, "posix") == [
        "CUDA_VISIBLE_DEVICES=0", "./llama-server", "-m", '$HOME/models/a "b".gguf', "-c", "8192",
    ]
    assert split_command("a\\ b 'c''d' \"e\\f\"", "posix") == ["a b", "cd", "e\\f"]


def test_powershell_parsing_of_pasted_text() -> None:
    text = "& \"C:\\llama\\llama-cli.exe\" `\n  -m 'C:\\m\\it''s.gguf' `\n  -sys \"a`\"b\" -c 1"
    assert split_command(text, "powershell") == [
        "C:\\llama\\llama-cli.exe", "-m", "C:\\m\\it's.gguf", "-sys", 'a"b', "-c", "1",
    ]


def test_cmd_parsing_of_pasted_text() -> None:
    text = 'llama-cli.exe ^\n  -m "C:\\m\\a b.gguf" -sys "say ""hi""" -p x^&y'
    assert split_command(text, "cmd") == [
        "llama-cli.exe", "-m", "C:\\m\\a b.gguf", "-sys", 'say "hi"', "-p", "x&y",
    ]


@pytest.mark.parametrize(
    ("text", "shell"),
    [("a 'b", "posix"), ('a "b', "posix"), ("a ; b", "posix"), ("a | b", "posix"),
     ("a 'b", "powershell"), ("a ; b", "powershell"), ('a "b', "cmd"), ("a & b", "cmd")],
)
def test_not_one_simple_command(text: str, shell: str) -> None:
    with pytest.raises(ShellSyntaxError):
        split_command(text, shell)


def test_unknown_shell() -> None:
    with pytest.raises(ValueError, match="shell must be one of"):
        render(["a"], "fish")


@pytest.mark.parametrize(
    ("text", "shell"),
    [("llama-cli -m /m/a.gguf -c 4096", "posix"),
     ("./llama-server \\\n -m x", "posix"),
     ("& 'C:\\l\\llama-cli.exe' -m x", "powershell"),
     ("llama-cli.exe `\n -m x", "powershell"),
     ("llama-cli.exe -m 'C:\\m\\x.gguf'", "powershell"),
     ('llama-cli.exe -m "C:\\m\\x.gguf"', "cmd"),
     ("llama-cli.exe ^\n -m x", "cmd")],
)
def test_guess_shell(text: str, shell: str) -> None:
    assert guess_shell(text) == shell


_ECHO = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh")
@settings(max_examples=40, deadline=None)
@given(args=st.lists(ARG, min_size=1, max_size=4))
def test_a_real_sh_receives_the_arguments(args: list[str]) -> None:
    # printf is a sh builtin: one NUL-terminated line per argument it was given
    out = subprocess.run(["sh", "-c", render(["printf", "%s\\0", *args], "posix")],
                         capture_output=True, check=True).stdout
    assert out.decode("utf-8").split("\0")[:-1] == args


@pytest.mark.skipif(shutil.which("sh") is None, reason="no POSIX sh")
def test_posix_script_runs_and_passes_on_its_arguments(tmp_path: Path) -> None:
    path = tmp_path / "run.sh"
    path.write_text(script([*_ECHO, "a b", "it's"], "posix"), encoding="utf-8")
    out = subprocess.run(["sh", str(path), "x y"], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == ["a b", "it's", "x y"]


@pytest.mark.skipif(shutil.which("pwsh") is None, reason="no PowerShell")
def test_a_real_powershell_receives_the_arguments() -> None:
    args = ["a b", "it's", "it\u2019s", "$x", "`t", "3,1", "1kb", "é"]
    out = subprocess.run(["pwsh", "-NoProfile", "-Command", render([*_ECHO, *args], "powershell")],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out) == args


def test_scripts_for_windows_shells() -> None:
    assert script(["llama-cli", "-p", "50%"], "cmd") == (
        "@echo off\r\nllama-cli ^\r\n  -p \"50%%\" ^\r\n  %*\r\n"
    )
    ps = script(["llama-cli", "-m", "a b"], "powershell")
    assert ps == "llama-cli `\n  -m 'a b' `\n  @args\n"
    assert split_command(ps.replace("@args", ""), "powershell") == ["llama-cli", "-m", "a b"]
