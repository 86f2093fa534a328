"""Open in terminal: which terminal, and the command it is given (per platform)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from kvgui.runtime.terminal import NoTerminal, terminal_argv

ARGV = ["/opt/llama.cpp/llama-cli", "-m", "/models/my model's.gguf", "-c", "8192"]


def _exe(folder: Path, name: str) -> Path:
    p = folder / name
    p.write_text("#!/bin/sh\n")
    p.chmod(0o755)
    return p


def test_linux_picks_terminal_then_the_first_known(tmp_path: Path) -> None:
    konsole = _exe(tmp_path, "konsole")
    got = terminal_argv(ARGV, env={"PATH": str(tmp_path)}, platform="linux")
    assert got[:4] == [str(konsole), "-e", "sh", "-c"]
    command = got[4]
    assert shlex.split(command.split(";")[0]) == ARGV  # the export, quoted for sh
    assert "press Enter" in command
    kitty = _exe(tmp_path, "kitty")
    got = terminal_argv(ARGV, env={"PATH": str(tmp_path), "TERMINAL": "kitty"},
                        platform="linux")
    assert got[:3] == [str(kitty), "sh", "-c"]


def test_no_terminal_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(NoTerminal, match=r"set \$TERMINAL"):
        terminal_argv(ARGV, env={"PATH": str(tmp_path)}, platform="linux")


def test_macos_and_windows() -> None:
    mac = terminal_argv(ARGV, env={}, platform="darwin")
    assert mac[0] == "osascript" and 'tell application "Terminal" to do script' in mac[2]
    win = terminal_argv(["C:\\llama\\llama-cli.exe", "-m", "C:\\m.gguf"], env={},
                        platform="win32")
    assert win[:4] == ["cmd", "/c", "start", "kvgui llama-cli"] and win[-2] == "/k"
