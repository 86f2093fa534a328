"""Text and files from elsewhere (a model's header, a preset, a text file): shown as data, read
within a budget.

A model name is whatever its converter wrote: terminal escape codes clear the screen of
``kvgui estimate``, HTML draws a fake "FITS" in a Qt label (which guesses rich text), a
corrupt 64 KiB key name fills a dialog. So text from a file reaches a terminal through
``printable`` (control characters as visible escapes), a widget as plain text (``html_text``
where a widget takes rich text), and an error message through ``one_line`` (cut, with the
length named). Files are read with a byte cap and JSON with a nesting cap, so a FIFO,
``/dev/zero`` or ``[[[[...`` ends in one line instead of a hang, a kill or a RecursionError.
"""

from __future__ import annotations

import html
import json
import os
import re
import stat
from typing import Any

# C0 and C1 controls and DEL (terminals act on them), and the bidirectional overrides that
# make text display in another order than it reads (U+202A-U+202E, U+2066-U+2069, marks).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\x1b": "\\e"}


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}"


def printable(text: str) -> str:
    """``text`` with every control character written as a visible escape (``\\e[2J``), so
    it prints as what it is and does nothing to the terminal."""
    return _UNSAFE.sub(_escape, text)


def shorten(text: str, limit: int = 120) -> str:
    """``text`` cut to about ``limit`` characters, saying how much was left out."""
    if len(text) <= limit:
        return text
    suffix = f"… ({len(text)} characters)"
    return text[:max(limit - len(suffix), 8)] + suffix


def one_line(text: str, limit: int = 120) -> str:
    """For messages and labels: printable (so one line, line breaks shown as ``\\n``) and
    cut to at most ``limit`` characters, naming the length of the whole."""
    shown = printable(text[:limit])
    if len(text) <= limit and len(shown) <= limit:
        return shown
    suffix = f"… ({len(text)} characters)"
    return shown[:max(limit - len(suffix), 8)] + suffix


def html_text(text: str, limit: int = 120) -> str:
    """``one_line`` escaped for a widget that renders rich text (QLabel's default AutoText,
    tooltips, QTextBrowser): ``<b>`` shows as ``<b>``."""
    return html.escape(one_line(text, limit), quote=True)


class ReadLimitError(ValueError):
    """A file that cannot be read within the budget; the message is one line."""


def read_bytes_capped(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The whole file, or ReadLimitError if it has more than ``max_bytes``.

    Reads at most ``max_bytes + 1`` bytes whatever the file claims, so a character device
    (``/dev/zero``) or an endless pipe stops at the cap. A FIFO is read like a pipe (``<(cmd)``
    gives one); a directory or missing file raises OSError as open() does.
    """
    name = one_line(os.fspath(path), 200)
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if stat.S_ISREG(st.st_mode) and st.st_size > max_bytes:
            raise ReadLimitError(f"{name}: {st.st_size} bytes, more than the {max_bytes} "
                                 "kvgui reads")
        chunks, total = [], 0
        while total <= max_bytes:
            chunk = f.read(min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    if total > max_bytes:
        raise ReadLimitError(f"{name}: more than the {max_bytes} bytes kvgui reads")
    return b"".join(chunks)


def read_text_capped(path: str | os.PathLike[str], max_bytes: int) -> str:
    """``read_bytes_capped`` decoded as UTF-8; invalid UTF-8 is a ReadLimitError naming the
    byte offset (not a UnicodeDecodeError from deep inside a caller)."""
    data = read_bytes_capped(path, max_bytes)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReadLimitError(f"{one_line(os.fspath(path), 200)}: not UTF-8 text "
                             f"(byte {exc.start})") from None


def loads_json(text: str, *, max_depth: int = 64) -> Any:
    """``json.loads`` with one-line errors: invalid JSON (with its line and column), or
    nesting deeper than ``max_depth`` (json itself stops only at Python's recursion limit,
    with a RecursionError)."""
    try:
        data = json.loads(text)
    except RecursionError:
        raise ValueError(f"JSON nested more than {max_depth} deep") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
                         ) from None
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > max_depth:
                raise ValueError(f"JSON nested more than {max_depth} deep")
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items if isinstance(v, (dict, list)))
    return data
