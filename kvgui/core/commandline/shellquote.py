"""Argument lists as text for POSIX sh, PowerShell and cmd.exe, and such text back into lists.

Exports are built as lists (cmdline.py) and quoted only here, so a path with spaces, quotes,
``$`` or non-ASCII survives the trip into a shell and, pasted back, into kvgui again.

Targets: POSIX sh (bash, zsh, dash); PowerShell 7.3+ (its "Standard" native argument passing:
Windows PowerShell 5.1 drops empty arguments and strips embedded double quotes, which no quoting
can fix); cmd.exe typed interactively, with the program receiving its arguments the way the
Microsoft C runtime (UCRT, which llama.cpp's binaries use) splits them. In cmd, ``%NAME%``
still expands inside quotes when NAME is a set variable, and there is no escape for it on a
typed line; ``script()`` writes ``%%`` for batch files, where that escape exists.

What a shell cannot be given safely is refused (``UnsafeForShell``), never written half-right:
a NUL anywhere; for cmd a line break or any other control character (cmd ends the command at a
line break even inside quotes: the next line would run as a command), and two ``%`` on one
typed line (``%NAME%`` expands, quotes or not, and a typed line has no escape for it); for
POSIX sh a control character other than tab and line breaks (sh has no quoting that spells
one, and pasted raw it acts on the terminal). PowerShell gets control characters as backtick
escapes in a double-quoted string, never raw. cmd's delayed ``!NAME!`` expansion is off unless
cmd was started with /V:ON (Microsoft's cmd documentation), so ``!`` is passed as it is.

Pasted text is read as one simple command or refused: an unquoted line break that starts
another command, command substitution (backticks, ``$(...)``, also inside double quotes), a
``;``, ``&``, ``|`` or redirection.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

SHELLS: tuple[str, ...] = ("posix", "powershell", "cmd")


class ShellSyntaxError(ValueError):
    """Text that is not one simple command (unclosed quote, ``;``, a pipe ...)."""


class UnsafeForShell(ValueError):
    """Arguments a shell cannot be given safely; the message says which and why."""


# C0 controls, DEL and C1 controls: invisible, and acted on by terminals and shells.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# what each shell takes inside quotes (PowerShell takes every one, as an escape)
_ALLOWED_CONTROL = {"posix": "\t\n\r", "cmd": "\t"}


def _describe_arg(args: Sequence[str], i: int) -> str:
    if i == 0:
        return "the program path"
    if args[i - 1].startswith("-") and len(args[i - 1]) > 1:
        return f"the value of {args[i - 1]}"
    return f"argument {i}"


def check_safe(args: Sequence[str], shell: str, *, typed: bool = True) -> None:
    """Raise UnsafeForShell if ``args`` cannot be written for ``shell`` without changing
    what it runs (``typed``: a line typed or pasted at the prompt, not a script file)."""
    _check_shell(shell)
    for i, arg in enumerate(args):
        for m in _CONTROL.finditer(arg):
            ch = m.group()
            if ch == "\0":
                raise UnsafeForShell(f"{_describe_arg(args, i)} holds a NUL character, which no "
                                     "program can be given")
            if shell == "powershell":
                continue  # written as a backtick escape
            if ch not in _ALLOWED_CONTROL[shell]:
                what = "a line break" if ch in "\r\n" else f"control character U+{ord(ch):04X}"
                why = ("cmd ends the command at a line break, even inside quotes" if ch in "\r\n"
                       else f"{_SHELL_NAMES[shell]} has no way to write it in an argument")
                raise UnsafeForShell(f"{_describe_arg(args, i)} holds {what}: {why}; "
                                     "remove it, or export for another shell")
    if shell == "cmd" and typed and sum(a.count("%") for a in args) >= 2:
        raise UnsafeForShell("two % signs on one cmd line: cmd expands %NAME% even inside "
                             "quotes, and a typed line has no escape for it; save a .cmd "
                             "script (where %% is a literal %) or use PowerShell")


_SHELL_NAMES = {"posix": "POSIX sh", "powershell": "PowerShell", "cmd": "cmd"}


def _check_shell(shell: str) -> None:
    if shell not in SHELLS:
        raise ValueError(f"shell must be one of {', '.join(SHELLS)}, not {shell!r}")


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------

# PowerShell treats the typographic single quotes as quote characters too (tokenizer.cs).
_PS_SINGLE_QUOTES = "'\u2018\u2019\u201a\u201b"
_PS_FLAG = re.compile(r"-{1,2}[A-Za-z0-9][A-Za-z0-9_-]*")
# Plain numbers, and dotted ones that cannot be a number (an IPv4 address); not 007 or 1e3.
_PS_INT = re.compile(r"0|[1-9][0-9]*|[0-9]+(?:\.[0-9]+){2,}")
# A bareword PowerShell passes through unchanged: no sigils, no leading digit (1kb is 1024),
# no leading ".5" (a number), no comma (the array operator).
_PS_BARE = re.compile(r"(?![.][0-9])[A-Za-z_./\\][A-Za-z0-9_+./\\:-]*")
# Microsoft's cmd documentation lists space & ( ) [ ] { } ^ = ; ! ' + , ` ~ as needing quotes;
# a leading @ would be cmd's "do not echo".
_CMD_SAFE = re.compile(r"[A-Za-z0-9_\-./\\:]+")


def quote_posix(arg: str) -> str:
    return shlex.quote(arg)


_PS_ESCAPE_OUT = {"\n": "`n", "\r": "`r", "\t": "`t", "\x1b": "`e", "\x07": "`a",
                  "\x08": "`b", "\x0b": "`v", "\x0c": "`f", "`": "``", "$": "`$"}


def quote_powershell(arg: str) -> str:
    if arg and arg != "--%" and (
        _PS_FLAG.fullmatch(arg) or _PS_INT.fullmatch(arg) or _PS_BARE.fullmatch(arg)
    ):
        return arg
    if _CONTROL.search(arg):
        # never a raw control character: a double-quoted string with backtick escapes
        # (about_Special_Characters; `e and `u{} need PowerShell 6+)
        body = []
        for ch in arg:
            if ch in _PS_ESCAPE_OUT:
                body.append(_PS_ESCAPE_OUT[ch])
            elif ch in _PS_DOUBLE_QUOTES:
                body.append("`" + ch)
            elif _CONTROL.fullmatch(ch):
                body.append(f"`u{{{ord(ch):x}}}")
            else:
                body.append(ch)
        return '"' + "".join(body) + '"'
    out = []
    for ch in arg:
        out.append(ch + ch if ch in _PS_SINGLE_QUOTES else ch)
    return "'" + "".join(out) + "'"


def quote_cmd(arg: str) -> str:
    """Quote for cmd.exe and the C runtime's argv splitting (UCRT rules).

    An embedded ``"`` is written ``""`` (a literal quote inside a quoted argument for the
    UCRT), not ``\\"``: every quoted argument then holds an even number of quote characters,
    so cmd, which toggles its own quote state at each one, sees all of the argument as quoted
    and leaves ``&|<>^`` in it alone. Backslashes double only where a quote follows them.
    """
    if arg and _CMD_SAFE.fullmatch(arg):
        return arg
    out = ['"']
    backslashes = 0
    for ch in arg:
        if ch == "\\":
            backslashes += 1
            continue
        if ch == '"':
            out.append("\\" * (2 * backslashes) + '""')
        else:
            out.append("\\" * backslashes + ch)
        backslashes = 0
    out.append("\\" * (2 * backslashes) + '"')
    return "".join(out)


def _groups(args: Sequence[str]) -> list[list[str]]:
    """The program, then one group per flag with the values that follow it."""
    groups: list[list[str]] = []
    for i, arg in enumerate(args):
        starts_flag = arg.startswith("-") and len(arg) > 1 and not _PS_INT.fullmatch(arg[1:])
        if i == 0 or starts_flag or not groups:
            groups.append([arg])
        else:
            groups[-1].append(arg)
    return groups


_CONTINUATION = {"posix": " \\\n  ", "powershell": " `\n  ", "cmd": " ^\n  "}


def render(args: Sequence[str], shell: str = "posix", *, multiline: bool = False,
           typed: bool = True) -> str:
    """One command line for ``shell``; with ``multiline``, one flag (and its value) a line.

    Raises UnsafeForShell for what ``shell`` cannot be given safely (see the module doc)."""
    check_safe(args, shell, typed=typed)
    if not args:
        return ""
    if shell == "posix":
        words = [quote_posix(a) for a in args]
    elif shell == "powershell":
        words = [quote_powershell(a) for a in args]
        if words[0] != args[0] or args[0] == "." or args[0].startswith("-"):
            # a quoted string alone is a value, not a command; a bare "." is dot-sourcing
            if words[0] == args[0]:
                words[0] = "'" + args[0] + "'"
            words[0] = "& " + words[0]
    else:
        words = [quote_cmd(a) for a in args]
    if not multiline:
        return " ".join(words)
    lines, i = [], 0
    for group in _groups(args):
        lines.append(" ".join(words[i : i + len(group)]))
        i += len(group)
    return _CONTINUATION[shell].join(lines)


def script(args: Sequence[str], shell: str = "posix") -> str:
    """A script file that runs the command, passing on any arguments given to the script."""
    _check_shell(shell)
    line = render(args, shell, multiline=True, typed=False)
    if shell == "posix":
        return f'#!/bin/sh\nexec {line} \\\n  "$@"\n'
    if shell == "powershell":
        return f"{line} `\n  @args\n"
    # In a batch file %% is a literal percent sign.
    return "@echo off\r\n" + line.replace("%", "%%").replace("\n", "\r\n") + " ^\r\n  %*\r\n"


# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def split_command(text: str, shell: str = "posix") -> list[str]:
    """The argument list a shell would pass for ``text`` (one simple command, no expansion).

    Variables (``$HOME``, ``%USERPROFILE%``) are kept as written: kvgui does not run a shell.
    """
    _check_shell(shell)
    if shell == "posix":
        return _split_posix(text)
    if shell == "powershell":
        return _split_powershell(text)
    return _split_cmd(text)


_POSIX_OPERATORS = set(";|&<>()")


def _second_command(text: str, i: int) -> ShellSyntaxError:
    line = text.count("\n", 0, i) + 1
    rest = text[i:].split("\n", 1)[0].strip()
    shown = rest if len(rest) <= 40 else rest[:37] + "..."
    return ShellSyntaxError(f"a line break ends the command; line {line} ({shown!r}) would run "
                            "as a second command: paste a single command")


def _substitution(how: str) -> ShellSyntaxError:
    return ShellSyntaxError(f"{how} runs a command inside the command: paste a single command "
                            "without it")


def _split_posix(text: str) -> list[str]:
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    ended = False  # an unquoted line break after the command: nothing may follow
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            if ch == "\n" and words:
                ended = True
            i += 1
            continue
        if ch == "#" and not in_word:
            while i < n and text[i] != "\n":
                i += 1
            continue
        if ch == "\\" and text[i + 1 : i + 2] == "\n":
            i += 2  # line continuation
            continue
        if ch == "\\" and text[i + 1 : i + 3] == "\r\n":
            i += 3
            continue
        if ended:
            raise _second_command(text, i)
        if ch == "\\":
            if i + 1 < n:
                cur.append(text[i + 1])
            in_word = True
            i += 2
        elif ch == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unclosed single quote")
            cur.append(text[i + 1 : end])
            in_word = True
            i = end + 1
        elif ch == '"':
            i += 1
            while True:
                if i >= n:
                    raise ShellSyntaxError("unclosed double quote")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and text[i + 1] in '$`"\\\n':
                    if text[i + 1] != "\n":
                        cur.append(text[i + 1])
                    i += 2
                    continue
                if c == "`":
                    raise _substitution("a backtick (`...`) inside double quotes")
                if c == "$" and text[i + 1 : i + 2] == "(":
                    raise _substitution("$(...) inside double quotes")
                cur.append(c)
                i += 1
            in_word = True
        elif ch == "`":
            raise _substitution("a backtick (`...`)")
        elif ch == "$" and text[i + 1 : i + 2] == "(":
            raise _substitution("$(...)")
        elif ch in _POSIX_OPERATORS:
            raise ShellSyntaxError(f"unquoted {ch!r}: paste a single command")
        else:
            cur.append(ch)
            in_word = True
            i += 1
    if in_word:
        words.append("".join(cur))
    return words


_PS_DOUBLE_QUOTES = '"\u201c\u201d\u201e'
_PS_ESCAPES = {"0": "\0", "a": "\a", "b": "\b", "e": "\x1b", "f": "\f", "n": "\n", "r": "\r",
               "t": "\t", "v": "\v"}
_PS_OPERATORS = set(";|&<>(){}")
_PS_UNICODE_ESCAPE = re.compile(r"u\{([0-9A-Fa-f]{1,6})\}")


def _split_powershell(text: str) -> list[str]:
    stripped = text.lstrip()
    if stripped[:1] in ("&", ".") and stripped[1:2] in (" ", "\t", "'", '"'):
        text = stripped[1:]  # the call operator: `& 'C:\\path\\llama-cli.exe' ...`
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    ended = False  # an unquoted line break after the command: nothing may follow
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t\r\n":
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            if ch == "\n" and words:
                ended = True
            i += 1
            continue
        if ch == "#" and not in_word:
            while i < n and text[i] != "\n":
                i += 1
            continue
        if ch == "`" and text[i + 1 : i + 2] in ("\r", "\n") and i + 1 < n:
            i += 3 if text[i + 1 : i + 3] == "\r\n" else 2  # line continuation
            continue
        if ended:
            raise _second_command(text, i)
        if ch == "`":
            if i + 1 < n:
                cur.append(text[i + 1])
            in_word = True
            i += 2
        elif ch in _PS_SINGLE_QUOTES:
            i += 1
            while True:
                if i >= n:
                    raise ShellSyntaxError("unclosed single quote")
                c = text[i]
                if c in _PS_SINGLE_QUOTES:
                    if i + 1 < n and text[i + 1] in _PS_SINGLE_QUOTES:
                        cur.append(c)
                        i += 2
                        continue
                    i += 1
                    break
                cur.append(c)
                i += 1
            in_word = True
        elif ch in _PS_DOUBLE_QUOTES:
            i += 1
            while True:
                if i >= n:
                    raise ShellSyntaxError("unclosed double quote")
                c = text[i]
                if c == "`" and i + 1 < n:
                    m = _PS_UNICODE_ESCAPE.match(text, i + 1)
                    if m:
                        cur.append(chr(min(int(m.group(1), 16), 0x10FFFF)))
                        i = m.end()
                        continue
                    nxt = text[i + 1]
                    cur.append(_PS_ESCAPES.get(nxt, nxt))
                    i += 2
                    continue
                if c == "$" and text[i + 1 : i + 2] == "(":
                    raise _substitution("$(...) inside double quotes")
                if c in _PS_DOUBLE_QUOTES:
                    if i + 1 < n and text[i + 1] in _PS_DOUBLE_QUOTES:
                        cur.append(c)
                        i += 2
                        continue
                    i += 1
                    break
                cur.append(c)
                i += 1
            in_word = True
        elif ch == "$" and text[i + 1 : i + 2] == "(":
            raise _substitution("$(...)")
        elif ch in _PS_OPERATORS:
            raise ShellSyntaxError(f"unquoted {ch!r}: paste a single command")
        else:
            cur.append(ch)
            in_word = True
            i += 1
    if in_word:
        words.append("".join(cur))
    return words


def _cmd_unescape(text: str) -> str:
    """What cmd hands the program: carets removed outside quotes, ``^`` + newline joins lines.

    A line break ends cmd's command wherever it is (a quote does not carry over a line), so
    any text after one that is not a ``^`` continuation would be a second command."""
    out = []
    inside = False
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            inside = not inside
        elif ch == "^" and not inside:
            if i + 1 < n and text[i + 1] in "\r\n":
                i += 3 if text[i + 1 : i + 3] == "\r\n" else 2
                continue
            if i + 1 < n:
                out.append(text[i + 1])
            i += 2
            continue
        elif not inside and ch in "&|<>":
            raise ShellSyntaxError(f"unquoted {ch!r}: paste a single command")
        elif ch in "\r\n":
            if text[i:].strip() and "".join(out).strip():
                raise _second_command(text, i + 1)
            ch = " "
        out.append(ch)
        i += 1
    return "".join(out)


def _split_cmd(text: str) -> list[str]:
    line = _cmd_unescape(text)
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    inside = False
    i, n = 0, len(line)
    while i < n:
        ch = line[i]
        if ch in " \t" and not inside:
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            i += 1
            continue
        in_word = True
        if ch == "\\":
            j = i
            while j < n and line[j] == "\\":
                j += 1
            count = j - i
            if j < n and line[j] == '"':
                cur.append("\\" * (count // 2))
                if count % 2:
                    cur.append('"')
                    j += 1
                i = j
            else:
                cur.append("\\" * count)
                i = j
        elif ch == '"':
            if inside and i + 1 < n and line[i + 1] == '"':
                cur.append('"')  # "" inside quotes: a literal quote (msvcrt since 2008)
                i += 2
            else:
                inside = not inside
                i += 1
        else:
            cur.append(ch)
            i += 1
    if inside:
        raise ShellSyntaxError("unclosed double quote")
    if in_word:
        words.append("".join(cur))
    return words


def guess_shell(text: str) -> str:
    """The shell a pasted command was most likely written for (posix unless it looks Windows)."""
    stripped = text.lstrip()
    if stripped.startswith("& ") or re.search(r"`\r?\n", text) or "$env:" in text:
        return "powershell"
    if re.search(r"\^\r?\n", text):
        return "cmd"
    if re.search(r"(?:^|[\s\"'])[A-Za-z]:\\", text):
        return "powershell" if "'" in text else "cmd"
    return "posix"
