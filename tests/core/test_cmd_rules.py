"""cmd exports checked against cmd's rules as Microsoft documents them, by a model of cmd
written here from those documents (it shares no code with shellquote.py):

- cmd /? (learn.microsoft.com, windows-commands/cmd): ``%var%`` expands "at input time"; with
  delayed expansion (/V:ON, "not enabled by default") ``!var!`` too.
- set (learn.microsoft.com, windows-commands/set): ``< > | & ^`` "are special command shell
  characters and must be either preceded by the escape character (^) or enclosed in quotation
  marks".
- for / call (batch files): ``%%`` is a literal ``%`` in a batch file, ``%*`` all arguments.
- Parsing C command-line arguments (learn.microsoft.com, cpp/c-language): how the program's
  C runtime splits the line: white space delimits, quotes group, ``""`` inside quotes is a
  literal quote, backslashes are literal unless they precede a quote (2n -> n and the quote
  delimits; 2n+1 -> n and a literal quote).
- A line break ends the command cmd reads (one command a line; ``^`` at a line's end, outside
  quotes, continues it).

The property: whatever the arguments, ``render`` / ``script`` either refuse them
(UnsafeForShell) or produce text that this cmd runs as exactly one command whose argv is the
arguments -- with *every* variable defined, so any ``%NAME%`` left would show.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvgui.core.commandline.shellquote import UnsafeForShell, render, script


class Unsafe(Exception):
    """What cmd would do with the text is not one plain command."""


def _percent(line: str, *, batch: bool, args: list[str]) -> str:
    """cmd's input-time expansion, with every variable defined (as EXPANDED)."""
    out, i = [], 0
    while i < len(line):
        ch = line[i]
        if ch != "%":
            out.append(ch)
            i += 1
            continue
        if batch and line[i + 1 : i + 2] == "%":
            out.append("%")
            i += 2
        elif batch and line[i + 1 : i + 2] == "*":
            out.append(" ".join(args))
            i += 2
        else:
            end = line.find("%", i + 1)
            if end > i + 1:
                raise Unsafe(f"%{line[i + 1:end]}% would expand")
            out.append("%")
            i += 1
    return "".join(out)


def cmd_runs(text: str, *, batch: bool = False, script_args: list[str] = ()) -> list[str]:
    """The argv of the one command cmd runs for ``text`` (Unsafe if it is not one)."""
    # one logical line: ^ + line break outside quotes continues it; any other break ends it
    joined, quoted, i = [], False, 0
    while i < len(text):
        ch = text[i]
        if ch == '"':
            quoted = not quoted
        if ch == "^" and not quoted and text[i + 1 : i + 3] == "\r\n":
            i += 3
            continue
        if ch == "^" and not quoted and text[i + 1 : i + 2] == "\n":
            i += 2
            continue
        if ch in "\r\n":
            if text[i:].strip():
                raise Unsafe("a second line runs as a second command")
            break
        joined.append(ch)
        i += 1
    line = "".join(joined)
    if batch and line.startswith("@echo off"):
        line = line[len("@echo off"):]
    line = _percent(line, batch=batch, args=list(script_args))
    # escapes and specials outside quotes
    plain, quoted, i = [], False, 0
    while i < len(line):
        ch = line[i]
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "^":
            plain.append(line[i + 1 : i + 2])
            i += 2
            continue
        elif not quoted and ch in "&|<>":
            raise Unsafe(f"unquoted {ch}")
        plain.append(ch)
        i += 1
    return crt_argv("".join(plain))


def crt_argv(line: str) -> list[str]:
    """Parsing C command-line arguments, as the documentation lists the rules."""
    args, cur, in_arg, quoted, i = [], [], False, False, 0
    while i < len(line):
        ch = line[i]
        if ch in " \t" and not quoted:
            if in_arg:
                args.append("".join(cur))
                cur, in_arg = [], False
            i += 1
            continue
        in_arg = True
        if ch == "\\":
            n = len(line[i:]) - len(line[i:].lstrip("\\"))
            if line[i + n : i + n + 1] == '"':
                cur.append("\\" * (n // 2))
                if n % 2:
                    cur.append('"')
                    i += n + 1
                else:
                    i += n
            else:
                cur.append("\\" * n)
                i += n
        elif ch == '"':
            if quoted and line[i + 1 : i + 2] == '"':
                cur.append('"')
                i += 2
            else:
                quoted = not quoted
                i += 1
        else:
            cur.append(ch)
            i += 1
    if in_arg:
        args.append("".join(cur))
    return args


_CHARS = st.one_of(
    st.sampled_from(list(' "\\%^&|<>()!=;,\'`~[]{}+@\t\n\r\x00\x1bé模')),
    st.characters(blacklist_categories=["Cs"]),
)
ARG = st.one_of(st.text(_CHARS, min_size=1, max_size=12),
                st.builds(lambda a, b: f"{a}%PATH%{b}", st.text(_CHARS, max_size=4),
                          st.text(_CHARS, max_size=4)))
# argv[0] follows its own rule (no backslash escapes) and is a Windows path: no '"' (not allowed
# in file names), no trailing backslash
PROGRAM = st.text(_CHARS, min_size=1, max_size=12).filter(
    lambda a: '"' not in a and not a.endswith("\\"))


def _unsafe(args: list[str]) -> bool:
    """What shellquote documents it refuses for cmd."""
    control = any((ord(c) < 32 and c != "\t") or 0x7f <= ord(c) <= 0x9f
                  for a in args for c in a)
    return control or sum(a.count("%") for a in args) >= 2


@settings(max_examples=400, deadline=None)
@given(program=PROGRAM, rest=st.lists(ARG, max_size=5), multiline=st.booleans())
def test_a_rendered_line_is_one_command_with_these_arguments(program: str, rest: list[str],
                                                            multiline: bool) -> None:
    args = [program, *rest]
    try:
        line = render(args, "cmd", multiline=multiline)
    except UnsafeForShell:
        assert _unsafe(args), f"refused safe arguments {args!r}"
        return
    assert not _unsafe(args)
    assert not line.startswith("@")  # cmd would take a leading @ as "do not echo"
    assert cmd_runs(line) == args


@settings(max_examples=300, deadline=None)
@given(program=PROGRAM, rest=st.lists(ARG, max_size=5))
def test_a_batch_script_runs_one_command_with_these_arguments(program: str,
                                                              rest: list[str]) -> None:
    args = [program, *rest]
    try:
        text = script(args, "cmd")
    except UnsafeForShell:
        assert _unsafe([a.replace("%", "") for a in args])  # a script takes any % sign
        return
    lines = text.split("\r\n", 1)
    assert lines[0] == "@echo off"
    assert cmd_runs(lines[1], batch=True, script_args=["x y"]) == [*args, "x", "y"]


@pytest.mark.parametrize(
    ("args", "why"),
    [(["llama-cli", "-sys", "Be brief.\ncalc.exe & echo pwned"], "line break"),
     (["llama-cli", "-m", "C:\\m\\a\r\nb.gguf"], "line break"),
     (["llama-cli", "-m", "C:\\%USERPROFILE%\\x.gguf"], "two % signs"),
     (["llama-cli", "-p", "50% off", "-sys", "or 20%"], "two % signs"),
     (["llama-cli", "-p", "a\x1bb"], r"U\+001B")],
)
def test_what_cmd_cannot_take_is_refused_with_the_reason(args: list[str], why: str) -> None:
    with pytest.raises(UnsafeForShell, match=why):
        render(args, "cmd")
    if why != r"U\+001B":  # (a raw ESC acts on the terminal it is pasted into, not on cmd)
        with pytest.raises(Unsafe):  # the model agrees: quoted as usual it would be unsafe
            cmd_runs(" ".join(f'"{a}"' for a in args))


def test_one_percent_is_passed_and_a_script_writes_two() -> None:
    assert cmd_runs(render(["llama-cli", "-p", "50% off"], "cmd")) == ["llama-cli", "-p",
                                                                       "50% off"]
    text = script(["llama-cli", "-m", "C:\\%USERPROFILE%\\x.gguf"], "cmd")
    assert "%%USERPROFILE%%" in text
    assert cmd_runs(text.split("\r\n", 1)[1], batch=True) == [
        "llama-cli", "-m", "C:\\%USERPROFILE%\\x.gguf"]
