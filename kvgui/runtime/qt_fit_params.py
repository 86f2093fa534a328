"""llama-fit-params for the window, on the one process runner (``qt_process``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from PySide6.QtCore import QObject, Signal

from kvgui.core.config.settings import Settings
from kvgui.runtime.fit_params import FIT_TIMEOUT_S, FitParamsError, fit_argv, read_output
from kvgui.runtime.llama_bin import ToolError, ToolInfo
from kvgui.runtime.qt_process import ChildProcess, Exit


class FitParamsProcess(QObject):
    """One llama-fit-params run at a time; ``done(settings, rows or None, error)``."""

    done = Signal(object, object, str)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.child = ChildProcess(self, json_lines=False)
        self.child.line.connect(self._on_line)
        self.child.exited.connect(self._on_exit)
        self._settings: Settings | None = None
        self._out: list[str] = []
        self._err: list[str] = []
        self.argv: list[str] = []

    @property
    def running(self) -> bool:
        return self._settings is not None

    def start(self, tool: ToolInfo, settings: Settings, model: str | os.PathLike[str],
              extra_args: Sequence[str] = ()) -> bool:
        if self.running:
            return False
        self.argv = fit_argv(tool, settings, model, extra_args)
        try:
            tool.check(self.argv)
        except ToolError as exc:
            self.done.emit(settings, None, str(exc))
            return True
        self._settings, self._out, self._err = settings, [], []
        self.child.start(self.argv)
        self.child.watch(FIT_TIMEOUT_S)
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
        try:
            rows = read_output("\n".join(self._out), "\n".join(self._err), end.returncode)
        except FitParamsError as exc:
            self.done.emit(settings, None, str(exc) if not end.hung else end.description)
            return
        self.done.emit(settings, rows, "")
