"""llama-server for the window: Serve, and chat "in llama-server", on the one process runner.

``ServerProcess`` runs the argv of ``server.serve_argv`` (the export's, plus host and port)
with ``server.server_env()`` under ``ChildProcess``; its log lines fill a ``ServerLog``; a
thread polls ``/health`` until it answers 200 and then ``ready`` is emitted once. Stop sends
SIGTERM to its group (llama-server cleans up), then SIGKILL.

``ServerChatBackend`` gives the chat window the same signals and methods as the in-process
``QtWorker`` (started, progress, measured, token, finished, failed, stateChanged; launch,
chat, stop, reset, shutdown), so the window does not care which one runs the model. Each
reply streams on a thread (``server_chat.ServerChat``); pieces reach the GUI thread as
queued signals.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QObject, Signal

from kvgui.core.config.settings import Settings
from kvgui.runtime.childproc import tied_to_this_process
from kvgui.runtime.llama_bin import ToolError, ToolInfo
from kvgui.runtime.protocol import Sampling
from kvgui.runtime.qt_process import ChildProcess, Exit
from kvgui.runtime.qt_worker import FAILED, GENERATING, IDLE, LOADING, READY, STARTING
from kvgui.runtime.server import (
    HOST,
    PortInUse,
    ServerError,
    ServerLog,
    base_url,
    check_server,
    free_port,
    measured_devices,
    openai_url,
    port_in_use,
    serve_argv,
    server_env,
)
from kvgui.runtime.server_chat import ServerChat, ServerChatError

log = logging.getLogger(__name__)

HEALTH_POLL_S = 0.02


class ServerProcess(QObject):
    """One llama-server, started from the window."""

    ready = Signal(dict)  # {"url", "openai_url", "port", "load_s", "argv", "log"}
    line = Signal(str)  # one log line (prefix stripped)
    failed = Signal(str)  # it could not start, or died (the reason, then its last lines)
    stopped = Signal()  # ended by stop()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.child = ChildProcess(self, json_lines=False, tail_lines=12)
        self.child.line.connect(self._on_line)
        self.child.exited.connect(self._on_exit)
        self.log = ServerLog()
        self.tool: ToolInfo | None = None
        self.model = ""
        self.settings: Settings | None = None
        self.port = 0
        self.argv: list[str] = []
        self.is_ready = False
        self.t_start = 0.0
        self.t_ready: float | None = None
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()
        self.doing = ""  # what it was doing, for the message if it dies (set by the chat)
        self._healthy.connect(self._on_healthy)

    @property
    def running(self) -> bool:
        return self.child.running

    @property
    def pid(self) -> int | None:
        return self.child.pid

    @property
    def url(self) -> str:
        return base_url(self.port)

    def start(self, tool: ToolInfo, model: str, settings: Settings, *,
              port: int | None = None, extra_args: Sequence[str] = ()) -> bool:
        """Launch; False (and ``failed``) when refused before launch."""
        self.stop()
        self.tool, self.model, self.settings = tool, str(model), settings
        self.port = port or free_port()
        self.argv = serve_argv(tool.path, settings, self.model, self.port, extra_args)
        self.log = ServerLog()
        self.is_ready = False
        self.t_ready = None
        try:
            check_server(tool, self.argv)
            if port is not None and port_in_use(port):
                raise PortInUse(f"port {port} on {HOST} is in use: choose another, or let "
                                "kvgui pick a free one")
        except (ToolError, ServerError) as exc:
            self.failed.emit(f"not launched: {exc}")
            return False
        self.t_start = time.perf_counter()
        # through the shim that ends it with kvgui: a killed window leaves no server behind
        self.child.start(tied_to_this_process(self.argv), env=server_env())
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(target=self._poll_health,
                                        args=(self.url, self._stop_polling), daemon=True,
                                        name="kvgui-llama-server-health")
        self._poller.start()
        return True

    def _poll_health(self, url: str, stop: threading.Event) -> None:
        """Poll ``/health`` until 200, then read ``/props`` here too: both are network
        round trips that must not run on the GUI thread (the first message waits on them)."""
        from kvgui.runtime.local_http import local_client, read_props
        from kvgui.runtime.server import health

        with local_client() as client:
            while not stop.is_set():
                if health(client, url, timeout=1.0) == 200:
                    t = time.perf_counter()
                    props: dict[str, Any] = {}
                    try:
                        props = read_props(client, url)
                    except Exception as exc:  # it answered /health but not /props
                        log.warning("llama-server /props failed: %s", exc)
                    if not stop.is_set():
                        self._healthy.emit(t, props)
                    return
                stop.wait(HEALTH_POLL_S)

    _healthy = Signal(float, dict)  # from the poller thread: queued to the GUI thread

    def _on_healthy(self, t: float, props: dict) -> None:
        if not self.running or self.is_ready:
            return
        self.is_ready = True
        self.t_ready = t
        self.ready.emit({"url": self.url, "openai_url": openai_url(self.port),
                         "port": self.port, "load_s": t - self.t_start, "argv": self.argv,
                         "log": self.log.load_text(), "props": props})

    def _on_line(self, _stream: str, text: str) -> None:
        self.line.emit(self.log.add(text))

    def _on_exit(self, end: Exit) -> None:
        self._stop_polling.set()
        was_ready, self.is_ready = self.is_ready, False
        if end.expected:
            self.stopped.emit()
            return
        if self.log.bind_failed:
            self.failed.emit(f"llama-server could not listen on {HOST}:{self.port} (in use)")
            return
        doing = self.doing if was_ready else " while loading the model"
        self.failed.emit(self.log.tail.failure(f"llama-server {end.description}{doing}"))

    def wait_exit(self, ms: int) -> bool:
        """Wait (processing its exit) up to ``ms``; True when it has ended."""
        return self.child.wait(ms)

    def stop(self, wait_ms: int = 5000) -> None:
        """SIGTERM its group, SIGKILL after ``wait_ms``; synchronous; ``stopped`` follows."""
        self._stop_polling.set()
        if self.child.running or self.child.pid is not None:
            self.child.finish(wait_ms, signal_first=signal.SIGTERM)
        if self._poller is not None:
            self._poller.join(timeout=2)
            self._poller = None

    def measured(self) -> dict[str, dict[str, int]]:
        names = [d.name for d in self.tool.devices] if self.tool else []
        return measured_devices(self.log.memory(), names)


class ServerChatBackend(QObject):
    """The chat window's model "in llama-server": QtWorker's interface over HTTP."""

    started = Signal(dict)
    progress = Signal(float)
    logLine = Signal(str)
    measured = Signal(dict)
    token = Signal(str)
    contextUsed = Signal(int)
    finished = Signal(dict)
    failed = Signal(str, bool)
    stateChanged = Signal(str)

    kind = "server"
    _piece = Signal(str, int)  # from the reply thread
    _done = Signal(dict)
    _error = Signal(str, bool)

    def __init__(self, parent: QObject | None = None, tool: ToolInfo | None = None) -> None:
        super().__init__(parent)
        self.tool = tool
        self.server = ServerProcess(self)
        self.server.ready.connect(self._on_ready)
        self.server.failed.connect(self._on_server_failed)
        self.server.line.connect(self.logLine)
        self._piece.connect(self._on_piece)
        self._done.connect(self._on_done)
        self._error.connect(self._on_error)
        self._state = IDLE
        self.model_path: str | None = None
        self.settings: Settings | None = None
        self.loaded_event: dict[str, Any] | None = None
        self.chat_client: ServerChat | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._failed_sent = False
        self.first_piece_at: float | None = None  # perf_counter of the last reply's first piece
        self._n_past = self._n_past_before = 0

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
        return self.server.pid

    @property
    def last_lines(self) -> list[str]:
        return self.server.child.tail.lines()

    # -- launch --------------------------------------------------------------------------

    def launch(self, model_path: str, settings: Settings, *, check: bool = True,
               devices: Any = None) -> bool:
        self.shutdown()
        self.model_path, self.settings = str(model_path), settings
        self._failed_sent = False
        self.loaded_event = None
        if self.tool is None:
            from kvgui.runtime.llama_bin import LLAMA_SERVER, MISSING_HINT

            self._set_state(FAILED)
            self.failed.emit(f"not launched: no llama-server: "
                             f"{MISSING_HINT.format(tool=LLAMA_SERVER)}", True)
            return False
        if check:
            from kvgui.runtime.client import LaunchRefused, preflight

            try:
                preflight(model_path, settings, devices)
            except LaunchRefused as exc:
                self._set_state(FAILED)
                self.failed.emit(f"not launched: {exc}", True)
                return False
        self._set_state(STARTING)
        if not self.server.start(self.tool, self.model_path, settings):
            return False
        self._set_state(LOADING)
        # built while the model loads (a client costs milliseconds): the first message
        # after "ready" goes out at once
        self.chat_client = ServerChat(self.server.url)
        self.started.emit({"pid": self.server.pid, "argv": self.server.argv})
        return True

    def relaunch(self) -> bool:
        if self.model_path is None or self.settings is None:
            return False
        return self.launch(self.model_path, self.settings, check=False)

    def _on_ready(self, info: dict) -> None:
        assert self.settings is not None
        if self.chat_client is None or self.chat_client.url != info["url"]:
            self.chat_client = ServerChat(info["url"])
        props = info.get("props") or {}
        self.chat_client.use_props(props)
        memory = self.server.log.memory()
        n_ctx_seq = self.chat_client.n_ctx or memory.n_ctx_seq
        self.loaded_event = {
            "type": "loaded", "kind": "server", "log": info["log"],
            "load_s": info["load_s"], "n_ctx": memory.n_ctx, "n_ctx_seq": n_ctx_seq,
            "chat_format": "llama-server (the GGUF's template)",
            "chat_template": bool(props.get("chat_template")),
            "formats": [], "gpu_offload": bool(self.tool and self.tool.devices),
            "url": info["url"], "openai_url": info["openai_url"], "argv": info["argv"],
            "tool": self.tool.summary() if self.tool else "",
        }
        self._set_state(READY)
        self.measured.emit(self.loaded_event)

    def _on_server_failed(self, message: str) -> None:
        if self._failed_sent:
            return
        self._failed_sent = True
        self._set_state(FAILED)
        self.failed.emit(message, True)

    # -- requests ------------------------------------------------------------------------

    def chat(self, text: str, system: str | None = None, sampling: Sampling | None = None,
             mode: str = "chat", chat_format: str | None = None) -> bool:
        if self._state != READY or self.chat_client is None:
            return False
        self._set_state(GENERATING)
        self._n_past_before = self._n_past
        self.server.doing = " in the middle of a reply"
        self._stop = threading.Event()
        self.first_piece_at = None
        client, stop = self.chat_client, self._stop

        def run() -> None:
            try:
                done = client.turn(text, system=system, sampling=sampling or Sampling(),
                                   mode=mode, on_piece=lambda p, n: self._piece.emit(p, n),
                                   should_stop=stop.is_set)
            except ServerChatError as exc:
                self._error.emit(str(exc), exc.fatal)
                return
            except Exception as exc:  # a bug must still reach the window as one message
                log.exception("chat over llama-server failed")
                self._error.emit(f"chat over llama-server failed: {exc}", False)
                return
            self._done.emit(done)

        self._thread = threading.Thread(target=run, daemon=True, name="kvgui-server-chat")
        self._thread.start()
        return True

    def _on_piece(self, text: str, n: int) -> None:
        if self.first_piece_at is None:
            self.first_piece_at = time.perf_counter()
        # llama-server tells the prompt's size only at the end: the last turn's context
        # plus the pieces so far (one token each, as it streams them)
        self.contextUsed.emit(self._n_past_before + n)
        self.token.emit(text)

    def _on_done(self, done: dict) -> None:
        self.server.doing = ""
        self._n_past = int(done.get("n_past") or 0)
        if self._state == GENERATING:
            self._set_state(READY)
        self.finished.emit(done)

    def _on_error(self, message: str, fatal: bool) -> None:
        if fatal and self.server.wait_exit(2000):
            return  # the connection broke because it died: its exit says why (once)
        self.server.doing = ""
        if self._failed_sent:
            return
        if self._state == GENERATING:
            self._set_state(READY)
        self.failed.emit(message, fatal)

    def stop(self) -> None:
        if self._state == GENERATING:
            self._stop.set()

    def reset(self, system: str | None = None) -> None:
        self._n_past = 0
        if self.chat_client is not None:
            self.chat_client.reset(system)

    def shutdown(self, wait_ms: int = 5000) -> None:
        self._stop.set()
        self.server.stop(wait_ms)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.chat_client is not None:
            self.chat_client.close()
            self.chat_client = None
        if self._state != FAILED:
            self._set_state(IDLE)

    def kill(self) -> None:
        self.server.child.kill()

    def measured_devices(self) -> dict[str, dict[str, int]]:
        return self.server.measured()
