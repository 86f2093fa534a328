"""The llama.cpp chat worker for the window, on the one process runner (``qt_process``).

The protocol is ``kvgui.runtime.protocol``; this class turns its events into signals and
every way the worker can end (a ``failed`` event, an abort, a kill) into ``failed`` with
llama.cpp's last log lines. ``relaunch()`` starts a fresh worker with the same model and
settings after a crash. ``shutdown()`` (also on application quit) leaves no process behind;
a GUI that is itself killed leaves none either (the worker watches its parent).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QObject, Signal

from kvgui import qtfix
from kvgui.core.config.settings import Settings
from kvgui.runtime.client import LaunchRefused, preflight, worker_command
from kvgui.runtime.protocol import Message, Sampling, message
from kvgui.runtime.qt_process import ChildProcess, Exit

qtfix.apply()  # PySide6 6.12 on Python 3.11: see kvgui.qtfix

# states
IDLE, STARTING, LOADING, READY, GENERATING, FAILED = (
    "idle", "starting", "loading", "ready", "generating", "failed")

# The worker imports llama_cpp before its first event: longer than this without a word is a
# hang (a broken shared library, a blocked file system), not a slow start.
START_TIMEOUT_S = 120.0


class QtWorker(QObject):
    started = Signal(dict)  # the started event
    progress = Signal(float)  # load progress 0..1
    logLine = Signal(str)  # one llama.cpp log line (INFO and above)
    measured = Signal(dict)  # the loaded event: "log" holds the load log to parse figures from
    token = Signal(str)  # a piece of the streamed reply
    contextUsed = Signal(int)  # tokens in the context while a reply streams
    finished = Signal(dict)  # the finished event of one reply
    failed = Signal(str, bool)  # message, fatal (fatal: the worker is gone; relaunch() to retry)
    stateChanged = Signal(str)

    kind = "worker"  # which chat backend this is (the chat window offers two)

    def __init__(self, parent: QObject | None = None, python: str | None = None) -> None:
        super().__init__(parent)
        self._python = python
        self.process = ChildProcess(self, json_lines=True)
        self.process.message.connect(self._dispatch)
        self.process.exited.connect(self._on_exit)
        self._state = IDLE
        self._failed_sent = False
        self.model_path: str | None = None
        self.settings: Settings | None = None
        self.loaded_event: Message | None = None

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
        return self.process.pid

    @property
    def last_lines(self) -> list[str]:
        return self.process.tail.lines()

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
        self._failed_sent = False
        self.loaded_event = None
        self._set_state(STARTING)
        self.process.start(worker_command(self._python))  # the CLI client's command line
        self.process.watch(START_TIMEOUT_S)
        self.process.send(message("load", model=self.model_path,
                                  settings=(self.settings or Settings()).to_dict()))

    # -- requests ------------------------------------------------------------------------

    def _send(self, kind: str, **payload: Any) -> bool:
        return self.process.send(message(kind, **payload))

    def chat(self, text: str, system: str | None = None, sampling: Sampling | None = None,
             mode: str = "chat", chat_format: str | None = None) -> bool:
        """One turn; ``mode`` "completion" continues the text (no template); ``chat_format``
        a llama-cpp-python format instead of the GGUF's template."""
        if self._state != READY:
            return False
        self._set_state(GENERATING)
        return self._send("chat", text=text, system=system,
                          sampling=(sampling or Sampling()).to_dict(), mode=mode,
                          chat_format=chat_format)

    def stop(self) -> None:
        if self._state == GENERATING:
            self._send("stop")

    def reset(self, system: str | None = None) -> None:
        self._send("reset", system=system)

    def shutdown(self, wait_ms: int = 3000) -> None:
        """End the worker: ask politely, then kill its group. Safe to call at any time."""
        self.process.finish(wait_ms, request=message("shutdown"))
        if self._state != FAILED:
            self._set_state(IDLE)

    def kill(self) -> None:
        """Kill the worker at once (it is reported as a crash: for tests and emergencies)."""
        self.process.kill()

    # -- process output ------------------------------------------------------------------

    def _dispatch(self, msg: Message) -> None:
        kind = msg["type"]
        if kind == "started":
            self.process.watch(None)  # loading and answering may take any time
            self._set_state(LOADING)
            self.started.emit(msg)
        elif kind == "progress":
            self.progress.emit(float(msg.get("fraction", 0.0)))
        elif kind == "log":
            self.logLine.emit(str(msg.get("text", "")))
        elif kind == "loaded":
            self.loaded_event = msg
            self._set_state(READY)
            self.measured.emit(msg)
        elif kind == "token":
            if msg.get("n_past") is not None:
                self.contextUsed.emit(int(msg["n_past"]))
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

    def _on_exit(self, end: Exit) -> None:
        if end.expected or self._failed_sent:
            return
        was = self._state
        self._failed_sent = True
        self._set_state(FAILED)
        if end.returncode is None and not end.hung:
            self.failed.emit(f"the llama.cpp worker {end.description}", True)
            return
        doing = {LOADING: " while loading the model", STARTING: " while starting",
                 GENERATING: " in the middle of a reply"}.get(was, "")
        self.failed.emit(end.failure("the llama.cpp worker", doing), True)
