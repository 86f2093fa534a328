"""The llama.cpp worker for the window: a QObject around QProcess, so the GUI never blocks.

The protocol is ``kvgui.runtime.protocol``; this class turns its events into signals and
every way the worker can end (a ``failed`` event, an abort, a kill) into ``failed`` with
llama.cpp's last log lines. ``relaunch()`` starts a fresh worker with the same model and
settings after a crash. ``shutdown()`` (also on application quit) leaves no process behind;
a GUI that is itself killed leaves none either (the worker watches its parent).
"""

from __future__ import annotations

import sys
from typing import Any

from PySide6.QtCore import (
    QByteArray,
    QCoreApplication,
    QObject,
    QProcess,
    QProcessEnvironment,
    Signal,
)

from kvgui import qtfix
from kvgui.core.config.settings import Settings
from kvgui.runtime.client import (
    LaunchRefused,
    Tail,
    describe_exit,
    preflight,
    worker_command,
    worker_env,
)
from kvgui.runtime.protocol import Message, ProtocolError, Sampling, decode, encode, message

qtfix.apply()  # PySide6 6.12 on Python 3.11: see kvgui.qtfix


def emit(signal: Any, *args: Any) -> None:
    """``signal.emit(*args)``. Kept for callers written when this module worked around
    PySide6 6.12's reference leak itself; ``kvgui.qtfix`` (applied below) now does."""
    signal.emit(*args)


# states
IDLE, STARTING, LOADING, READY, GENERATING, FAILED = (
    "idle", "starting", "loading", "ready", "generating", "failed")


class QtWorker(QObject):
    started = Signal(dict)  # the started event
    progress = Signal(float)  # load progress 0..1
    logLine = Signal(str)  # one llama.cpp log line (INFO and above)
    measured = Signal(dict)  # the loaded event: "log" holds the load log to parse figures from
    token = Signal(str)  # a piece of the streamed reply
    finished = Signal(dict)  # the finished event of one reply
    failed = Signal(str, bool)  # message, fatal (fatal: the worker is gone; relaunch() to retry)
    stateChanged = Signal(str)

    def __init__(self, parent: QObject | None = None, python: str | None = None) -> None:
        super().__init__(parent)
        self._python = python or sys.executable
        self._proc: QProcess | None = None
        self._buffer = bytearray()
        self._err_buffer = bytearray()
        self._tail = Tail()
        self._state = IDLE
        self._closing = False
        self._failed_sent = False
        self.model_path: str | None = None
        self.settings: Settings | None = None
        self.loaded_event: Message | None = None
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.shutdown)

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    def _set_state(self, state: str) -> None:
        if state != self._state:
            self._state = state
            self.stateChanged.emit(state)

    @property
    def pid(self) -> int | None:
        if self._proc is None or self._proc.state() == QProcess.ProcessState.NotRunning:
            return None
        return int(self._proc.processId())

    @property
    def last_lines(self) -> list[str]:
        return self._tail.lines()

    # -- launch --------------------------------------------------------------------------

    def launch(self, model_path: str, settings: Settings, *, check: bool = True,
               devices: Any = None) -> bool:
        """Start a worker and load; False (and ``failed``) when refused before launch."""
        self.shutdown()
        self.model_path, self.settings = str(model_path), settings
        if check:
            try:
                preflight(model_path, settings, devices)
            except LaunchRefused as exc:
                self._set_state(FAILED)
                self.failed.emit(f"not launched: {exc}", True)
                return False
        self._start()
        return True

    def relaunch(self) -> bool:
        """Start again with the last model and settings (after a crash or a failure)."""
        if self.model_path is None or self.settings is None:
            return False
        return self.launch(self.model_path, self.settings, check=False)

    def _start(self) -> None:
        self._buffer.clear()
        self._err_buffer.clear()
        self._tail.clear()
        self._closing = False
        self._failed_sent = False
        self.loaded_event = None
        proc = QProcess(self)
        env = QProcessEnvironment()
        for key, value in worker_env().items():
            env.insert(key, value)
        proc.setProcessEnvironment(env)
        command = worker_command(self._python)  # the same command line as the CLI's client
        proc.setProgram(command[0])
        proc.setArguments(command[1:])
        proc.readyReadStandardOutput.connect(self._on_stdout)
        proc.readyReadStandardError.connect(self._on_stderr)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_error)
        self._proc = proc
        self._set_state(STARTING)
        proc.start()
        self._send("load", model=self.model_path,
                   settings=(self.settings or Settings()).to_dict())

    # -- requests ------------------------------------------------------------------------

    def _send(self, kind: str, **payload: Any) -> bool:
        proc = self._proc
        if proc is None or (proc.state() == QProcess.ProcessState.NotRunning and kind != "load"):
            return False
        proc.write(QByteArray(encode(message(kind, **payload))))
        return True

    def chat(self, text: str, system: str | None = None,
             sampling: Sampling | None = None) -> bool:
        if self._state != READY:
            return False
        self._set_state(GENERATING)
        return self._send("chat", text=text, system=system,
                          sampling=(sampling or Sampling()).to_dict())

    def stop(self) -> None:
        if self._state == GENERATING:
            self._send("stop")

    def reset(self, system: str | None = None) -> None:
        self._send("reset", system=system)

    def shutdown(self, wait_ms: int = 3000) -> None:
        """End the worker: ask politely, then kill. Safe to call at any time."""
        proc = self._proc
        if proc is None:
            return
        self._closing = True
        if proc.state() != QProcess.ProcessState.NotRunning:
            self._send("shutdown")
            proc.closeWriteChannel()
            if not proc.waitForFinished(wait_ms):
                proc.kill()
                proc.waitForFinished(2000)
        self._proc = None
        proc.deleteLater()
        if self._state != FAILED:
            self._set_state(IDLE)

    def kill(self) -> None:
        """Kill the worker at once (it is reported as a crash: for tests and emergencies)."""
        if self._proc is not None:
            self._proc.kill()

    # -- process output ------------------------------------------------------------------

    def _on_stdout(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._buffer += bytes(proc.readAllStandardOutput().data())
        while b"\n" in self._buffer:
            line, _, rest = bytes(self._buffer).partition(b"\n")
            self._buffer = bytearray(rest)
            try:
                msg = decode(line)
            except ProtocolError:
                continue
            self._dispatch(msg)

    def _on_stderr(self) -> None:
        proc = self._proc
        if proc is None:
            return
        self._err_buffer += bytes(proc.readAllStandardError().data())
        while b"\n" in self._err_buffer:
            line, _, rest = bytes(self._err_buffer).partition(b"\n")
            self._err_buffer = bytearray(rest)
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self._tail.err.append(text[:500])

    def _dispatch(self, msg: Message) -> None:
        kind = msg["type"]
        if kind == "started":
            self._set_state(LOADING)
            self.started.emit(msg)
        elif kind == "progress":
            self.progress.emit(float(msg.get("fraction", 0.0)))
        elif kind == "log":
            text = str(msg.get("text", ""))
            self._tail.log.append(text)
            self.logLine.emit(text)
        elif kind == "loaded":
            self.loaded_event = msg
            self._set_state(READY)
            self.measured.emit(msg)
        elif kind == "token":
            self.token.emit(str(msg.get("text", "")))
        elif kind == "finished":
            self._set_state(READY)
            self.finished.emit(msg)
        elif kind == "failed":
            fatal = bool(msg.get("fatal", True))
            if fatal:
                self._failed_sent = True
                self._set_state(FAILED)
            elif self._state == GENERATING:
                self._set_state(READY)
            self.failed.emit(str(msg.get("message", "the worker failed")), fatal)

    def _on_finished(self, exit_code: int, status: QProcess.ExitStatus) -> None:
        self._on_stdout()
        self._on_stderr()
        if self._closing or self._failed_sent:
            return
        # Qt reports the signal number as the exit code of a crashed process (Unix)
        code = -exit_code if status == QProcess.ExitStatus.CrashExit else exit_code
        self._report_death(code)

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart and not self._closing:
            self._failed_sent = True
            self._set_state(FAILED)
            self.failed.emit(f"could not start the llama.cpp worker ({self._python}): "
                             f"{self._proc.errorString() if self._proc else error}", True)

    def _report_death(self, code: int) -> None:
        was = self._state
        self._failed_sent = True
        self._set_state(FAILED)
        doing = {LOADING: " while loading the model", STARTING: " while starting",
                 GENERATING: " in the middle of a reply"}.get(was, "")
        self.failed.emit(self._tail.failure(f"the llama.cpp worker {describe_exit(code)}{doing}"),
             True)

