"""llama.cpp's dry run for the window, on the one process runner (``qt_process``).

The same child, request and reply reader as ``dryrun.dry_run`` (the CLI's ``verify``); here
the GUI thread never waits: the child's lines are collected by the runner and read when it
exits. The hang timeout is the dry run's own timeout (the child writes only at the end).
"""

from __future__ import annotations

import time
from pathlib import Path

from PySide6.QtCore import QObject, Signal

from kvgui.core.config.settings import Settings
from kvgui.runtime.dryrun import (
    DEFAULT_TIMEOUT,
    DryRunError,
    child_command,
    child_request,
    read_child_output,
    refusal,
)
from kvgui.runtime.qt_process import ChildProcess, Exit


class DryRunProcess(QObject):
    """One dry run at a time, off the GUI thread."""

    done = Signal(object, object, str)  # settings, LlamaCppMemory or None, error ("" when ok)

    def __init__(self, parent: QObject | None = None, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(parent)
        self.timeout = timeout
        self.child = ChildProcess(self, json_lines=False)
        self.child.line.connect(self._on_line)
        self.child.exited.connect(self._on_exit)
        self._settings: Settings | None = None
        self._out: list[str] = []
        self._err: list[str] = []
        self._t0 = 0.0

    @property
    def running(self) -> bool:
        return self._settings is not None

    def start(self, path: str, settings: Settings) -> bool:
        """Start; False while one runs. A refusal (no file, too large) is ``done`` at once."""
        if self.running:
            return False
        if (why := refusal(Path(path), settings)) is not None:
            self.done.emit(settings, None, why.reason)
            return True
        self._settings, self._out, self._err = settings, [], []
        self._t0 = time.perf_counter()
        self.child.start(child_command())
        self.child.watch(self.timeout)
        self.child.write(child_request(path, [settings]))
        return True

    def shutdown(self) -> None:
        self._settings = None
        self.child.terminate()

    def _on_line(self, stream: str, text: str) -> None:
        (self._out if stream == "stdout" else self._err).append(text)

    def _on_exit(self, end: Exit) -> None:
        settings, self._settings = self._settings, None
        if settings is None:
            return
        replies, failure = read_child_output(
            "\n".join(self._out), "\n".join(self._err), end.returncode,
            timeout=self.timeout, wall=time.perf_counter() - self._t0, timed_out=end.hung)
        result = replies.get(0)
        if result is None:
            result = failure or DryRunError("the dry run did not answer")
        if isinstance(result, DryRunError):
            lines = str(result).strip().splitlines()
            self.done.emit(settings, None, lines[0] if lines else "the dry run failed")
        else:
            self.done.emit(settings, result, "")
