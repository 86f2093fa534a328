"""What every child process of kvgui shares: its environment, its command, how its end is told.

kvgui starts llama.cpp in child processes (the chat worker, the measure worker, the dry run,
llama-server, llama-fit-params) because llama.cpp aborts its whole process on a failed
GGML_ASSERT and an out-of-memory load can kill it. Every one of them is started with
``child_env()``, in its own process group (so a close kills it and anything it started), and
its end is described by ``describe_exit`` with the last lines it wrote (``Tail``). The Qt
runner (``kvgui.runtime.qt_process``) and the synchronous callers (``client``, ``dryrun``,
``measure``) all use these.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

TAIL_LINES = 10
_TAIL_LINE_CHARS = 500


def package_root() -> str:
    """The folder that holds the ``kvgui`` package (a checkout works uninstalled)."""
    return str(Path(__file__).resolve().parents[2])


def child_env(extra: Mapping[str, str] | None = None,
              base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every kvgui child process.

    - PYTHONPATH starts with this kvgui's folder, so ``python -m kvgui.runtime.…`` runs the
      same code as the parent even from an uninstalled checkout;
    - PYTHONUNBUFFERED: a Python child's stderr lines arrive as written, not at exit;
    - GGML_NO_BACKTRACE: ggml_abort would otherwise attach gdb to print a backtrace (slow,
      and it buries the one line that matters, "GGML_ASSERT(...) failed", under stack frames).
    """
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (package_root(), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env["GGML_NO_BACKTRACE"] = "1"
    env.update(extra or {})
    return env


def python_command(module: str, python: str | None = None,
                   args: Sequence[str] = ()) -> list[str]:
    """``python -m module args…`` with this interpreter (or ``python``)."""
    return [python or sys.executable, "-m", module, *args]


_SIGNAL_HINTS = {
    "SIGKILL": " (killed - out of memory, or by the user)",
    "SIGABRT": " (llama.cpp aborted: a failed assertion)",
    "SIGSEGV": " (crashed)",
}


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_exit(returncode: int | None) -> str:
    """'was killed by SIGKILL (…)', 'exited with status 3', for a finished process.

    ``returncode`` as subprocess gives it: negative for a signal; None for a process that is
    still running (it "stopped answering")."""
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        name = signal_name(-returncode)
        return f"was killed by {name}{_SIGNAL_HINTS.get(name, '')}"
    return f"exited with status {returncode}"


class Tail:
    """A child's last words: its log lines (events it sent) and its stderr lines, kept apart
    because the two pipes are read independently (a backlog of log events must not push the
    abort message, which comes on stderr, out of the window)."""

    def __init__(self, n: int = TAIL_LINES) -> None:
        self.log: deque[str] = deque(maxlen=n)
        self.err: deque[str] = deque(maxlen=n)

    def clear(self) -> None:
        self.log.clear()
        self.err.clear()

    def add_err(self, line: str) -> None:
        line = line.rstrip()
        if line.strip():
            self.err.append(line[:_TAIL_LINE_CHARS])

    def lines(self) -> list[str]:
        return [line for line in (*self.log, *self.err) if line.strip()]

    def failure(self, what: str) -> str:
        """``what`` plus the last lines, the form every death is reported in."""
        lines = self.lines()
        return what + ("; last log lines:\n" + "\n".join(lines) if lines else "")


def kill_group(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` (every child is started as its leader), or
    the process alone where there are no groups (Windows)."""
    if hasattr(os, "killpg"):
        try:
            os.killpg(pid, signal.SIGKILL)
            return
        except ProcessLookupError:
            return
        except PermissionError:  # not the leader of a group of ours: the process alone
            log.debug("killpg(%d) refused; killing the process", pid)
    with contextlib.suppress(ProcessLookupError, OSError):
        os.kill(pid, getattr(signal, "SIGKILL", signal.SIGTERM))  # Windows: TerminateProcess


def signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the group led by ``pid`` (the process alone without groups)."""
    try:
        if hasattr(os, "killpg"):
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except (ProcessLookupError, PermissionError, OSError) as exc:
        log.debug("signal %d to %d: %s", sig, pid, exc)


STOPPED_GRACE_S = 10.0  # a child stopped (SIGSTOP, a debugger) this long is ended


def is_stopped(pid: int) -> bool:
    """Whether the process is stopped (SIGSTOP/SIGTSTP, or held by a tracer): it then answers
    nothing and would be waited for forever. Linux reads /proc; elsewhere psutil, if there."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        state = stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3]
        return state in (b"T", b"t")
    except FileNotFoundError:
        if sys.platform.startswith("linux"):
            return False  # gone: its end is reported elsewhere
    except (OSError, ValueError):
        return False
    try:
        import psutil

        return bool(psutil.Process(pid).status() in (psutil.STATUS_STOPPED,
                                                     psutil.STATUS_TRACING_STOP))
    except Exception:  # not installed, gone, or not allowed: no verdict
        return False


class StoppedWatch:
    """Tells when a child has been stopped for ``grace_s``: polled by every waiting loop (the
    CLI's worker client, measure, the Qt runner), so a stopped child is ended with a reason
    instead of waited for without end (issue 18: "a stopped worker makes the CLI wait")."""

    def __init__(self, grace_s: float = STOPPED_GRACE_S) -> None:
        self.grace_s = grace_s
        self._since: float | None = None

    def verdict(self, pid: int | None) -> str | None:
        """None while the child runs (or was stopped for less than the grace); else why it is
        to be ended."""
        if pid is None or not is_stopped(pid):
            self._since = None
            return None
        now = time.monotonic()
        if self._since is None:
            self._since = now
        if now - self._since < self.grace_s:
            return None
        return (f"was stopped (SIGSTOP or a debugger) and did not resume within "
                f"{self.grace_s:g} s, so it was ended")


def tied_to_this_process(argv: Sequence[str]) -> list[str]:
    """``argv`` started through :mod:`kvgui.runtime.with_parent`, so that it ends (SIGTERM)
    when this process dies, however it dies. For long-lived tools that run in a session of their
    own (llama-server): without it a killed kvgui leaves them running. Start it from a thread
    that lives as long as the process (the GUI thread, the CLI's main thread): Linux sends the
    signal when the *thread* that started it ends."""
    return [*python_command("kvgui.runtime.with_parent"), str(os.getpid()), "--",
            *(str(a) for a in argv)]
