"""Open in terminal: the exported llama-cli command in the desktop's terminal emulator.

The command is the export's argv, quoted for the shell that runs it (``shellquote.render``),
so what runs is exactly what Export shows. The terminal is the user's program and outlives
kvgui: it is started detached, in its own session, and never killed by kvgui. After the
command ends the window waits for Enter, so its last lines stay readable.

Which terminal: $TERMINAL, else the first found of x-terminal-emulator (Debian's choice),
the desktops' own (gnome-terminal, konsole, xfce4-terminal, …) and xterm; Terminal.app on
macOS (osascript); a new console window on Windows (``start``).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence

from kvgui.core.commandline.shellquote import render

log = logging.getLogger(__name__)

# terminal -> the arguments that make it run one command (the argv follows)
_LINUX_TERMINALS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("x-terminal-emulator", ("-e",)),
    ("gnome-terminal", ("--",)),
    ("konsole", ("-e",)),
    ("xfce4-terminal", ("-x",)),
    ("mate-terminal", ("-x",)),
    ("tilix", ("-e",)),
    ("kitty", ()),
    ("alacritty", ("-e",)),
    ("wezterm", ("start", "--")),
    ("foot", ()),
    ("xterm", ("-e",)),
)
_RUN_FLAGS = dict(_LINUX_TERMINALS)


class NoTerminal(RuntimeError):
    pass


def _hold(command: str) -> str:
    """The command, then a pause so the window does not vanish with its output."""
    return (f"{command}; status=$?; echo; echo \"[exited with status $status - press Enter "
            "to close]\"; read _")


def terminal_argv(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                  platform: str | None = None) -> list[str]:
    """The command line that opens a terminal running ``argv``."""
    env = os.environ if env is None else env
    platform = platform or sys.platform
    if platform == "win32":
        command = render(list(argv), "cmd")
        return ["cmd", "/c", "start", "kvgui llama-cli", "cmd", "/k", command]
    command = _hold(render(list(argv), "posix"))
    if platform == "darwin":
        script = command.replace("\\", "\\\\").replace('"', '\\"')
        return ["osascript", "-e", f'tell application "Terminal" to do script "{script}"',
                "-e", 'tell application "Terminal" to activate']
    wanted = env.get("TERMINAL", "").strip()
    candidates = ([(wanted, _RUN_FLAGS.get(os.path.basename(wanted), ("-e",)))] if wanted
                  else []) + list(_LINUX_TERMINALS)
    path_env = env.get("PATH")
    for name, flags in candidates:
        found = shutil.which(name, path=path_env)
        if found:
            return [found, *flags, "sh", "-c", command]
    raise NoTerminal("no terminal emulator found (set $TERMINAL, or install xterm or your "
                     "desktop's terminal)")


def open_in_terminal(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> int:
    """Start the terminal running ``argv``; its pid. The terminal is not kvgui's to stop."""
    command = terminal_argv(argv, env=env)
    proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True,
                            env=None if env is None else dict(env))
    log.info("opened %s in %s (pid %d)", argv[0], command[0], proc.pid)
    _DETACHED.append(proc)  # reaped when it ends (no zombie while kvgui runs)
    return proc.pid


_DETACHED: list[subprocess.Popen[bytes]] = []


def reap() -> None:
    """Collect terminals that have ended (called now and then; harmless otherwise)."""
    for proc in list(_DETACHED):
        if proc.poll() is not None:
            _DETACHED.remove(proc)
