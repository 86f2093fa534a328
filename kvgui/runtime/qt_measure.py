"""The measurement worker for the window, on the one process runner (``qt_process``).

Events in, signals out, kill to cancel: the same worker, request and ``RunBuilder`` as the
CLI's ``run_measure``, so the window and ``kvgui measure`` cannot disagree.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, QTimer, Signal

from kvgui.runtime.measure import (
    STDERR_TAIL_LINES,
    MeasureRequest,
    RunBuilder,
    worker_command,
    worker_failure,
)
from kvgui.runtime.protocol import Message
from kvgui.runtime.qt_process import ChildProcess, Exit

log = logging.getLogger(__name__)

#: how long the worker may take to exit once it has said ``done`` (or ``failed``): its results
#: are complete by then, so a worker stuck in its interpreter's teardown (llama.cpp's thread pool,
#: a scorer thread) is ended rather than waited for; the CLI's ``_pump`` gives it the same 2 s.
EXIT_GRACE_MS = 2000


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
        self._exit_grace = QTimer(self)
        self._exit_grace.setSingleShot(True)
        self._exit_grace.setInterval(EXIT_GRACE_MS)
        self._exit_grace.timeout.connect(self._end_lingering)

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
        if (b.done or b.error) and not self._exit_grace.isActive():
            self._exit_grace.start()

    def _end_lingering(self) -> None:
        if self._builder is not None and self.child.running:
            log.warning("the measure worker said it was finished but had not exited after "
                        "%d ms: ending it", EXIT_GRACE_MS)
            self.child.kill()  # reported as its own end: the complete run is still delivered

    def _on_exit(self, end: Exit) -> None:
        self._exit_grace.stop()
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
