"""The measurement worker for the window, on the one process runner (``qt_process``).

Events in, signals out, kill to cancel: the same worker, request and ``RunBuilder`` as the
CLI's ``run_measure``, so the window and ``kvgui measure`` cannot disagree.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from kvgui.runtime.measure import (
    STDERR_TAIL_LINES,
    MeasureRequest,
    RunBuilder,
    worker_command,
    worker_failure,
)
from kvgui.runtime.protocol import Message
from kvgui.runtime.qt_process import ChildProcess, Exit


class MeasureProcess(QObject):
    """The measurement worker under the process runner: events in, signals out."""

    progress = Signal(float, str)
    result = Signal(object)  # PairResult, as each type finishes
    finished = Signal(object)  # MeasureRun, complete
    failed = Signal(str, object)  # message, the partial MeasureRun or None
    cancelled = Signal(object)  # the partial MeasureRun or None

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.child = ChildProcess(self, json_lines=True, tail_lines=STDERR_TAIL_LINES)
        self.child.message.connect(self._on_message)
        self.child.exited.connect(self._on_exit)
        self._builder: RunBuilder | None = None
        self._cancelling = False

    def is_running(self) -> bool:
        return self._builder is not None

    @property
    def pid(self) -> int | None:
        return self.child.pid

    def start(self, request: MeasureRequest) -> None:
        self.shutdown()
        self._builder = RunBuilder(request)
        self._cancelling = False
        self.child.start(worker_command())
        self.child.send(request.to_message())  # stdin stays open: EOF = cancel

    def cancel(self) -> None:
        """Kill the worker now; ``cancelled`` follows when the process is gone."""
        if self.child.running:
            self._cancelling = True
            self.child.kill()

    def shutdown(self) -> None:
        """Kill and reap the worker synchronously (window closing); no signal is emitted."""
        self._builder = None
        self.child.terminate()

    def _on_message(self, msg: Message) -> None:
        b = self._builder
        if b is None:
            return
        n = len(b.results)
        prog = b.feed(msg)
        if prog is not None:
            self.progress.emit(prog.fraction, prog.message)
        if len(b.results) > n:
            self.result.emit(b.results[-1])

    def _on_exit(self, end: Exit) -> None:
        b, self._builder = self._builder, None
        if b is None or end.expected:
            return
        partial = b.run()
        if b.done and partial is not None:
            self.finished.emit(partial)
        elif self._cancelling:
            self.cancelled.emit(partial)
        elif b.error:
            self.failed.emit(b.error, partial)
        else:
            self.failed.emit(worker_failure(end.returncode, "\n".join(end.tail)), partial)
