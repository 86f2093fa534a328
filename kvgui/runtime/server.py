"""Serve: the user's own ``llama-server`` with exactly the exported arguments, on 127.0.0.1.

The command line is ``export.llama_server_args`` (what Export shows) plus
``--host 127.0.0.1 --port <free>``: nothing else, so what was planned is what runs. The only
addition is in the environment: ``LLAMA_ARG_LOG_VERBOSITY=4``, which makes llama-server log
llama.cpp's own INFO lines (the buffer sizes; at its default verbosity it hides them) without
touching the command line. Before launch the binary is probed (``llama_bin``): not llama-server,
or an older build that lacks a flag, is refused with the reason.

From its log kvgui reads what llama.cpp allocated, per device (``measured_devices``), to set
beside the estimate for the devices that build sees. Ready means ``GET /health`` answers 200
(503 while loading). The server runs in its own process group and is stopped with it.

``LlamaServer`` here is synchronous (the CLI's ``kvgui serve``, tests, benchmarks); the window
runs the same argv, environment and log reading on the process runner
(``kvgui.runtime.qt_server``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvgui.core.commandline.export import llama_server_args
from kvgui.core.config.settings import Settings
from kvgui.runtime.childproc import (
    Tail,
    child_env,
    describe_exit,
    kill_group,
    tied_to_this_process,
)
from kvgui.runtime.llama_bin import NotLlamaCpp, ToolInfo
from kvgui.runtime.llama_log import LlamaCppMemory, mib_to_bytes, parse_llama_log

if TYPE_CHECKING:
    import httpx

    from kvgui.core.devices.device_budget import DeviceBudget
    from kvgui.core.memory.estimate import Estimate

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
LOG_VERBOSITY_ENV = {"LLAMA_ARG_LOG_VERBOSITY": "4"}  # llama.cpp's INFO lines (arg.cpp: -lv)
READY_TIMEOUT_S = 600.0  # a large model from a slow disk
STOP_GRACE_S = 5.0


class ServerError(RuntimeError):
    """llama-server could not be started or did not become ready: one line, then its log."""


class PortInUse(ServerError):
    pass


# --- the command line ---------------------------------------------------------------------------

def free_port(host: str = HOST) -> int:
    """A port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = HOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def serve_argv(program: str | os.PathLike[str], settings: Settings, model: str, port: int,
               extra_args: Sequence[str] = ()) -> list[str]:
    """Exactly the export's llama-server command, plus ``--host 127.0.0.1 --port <port>``."""
    exported = llama_server_args(settings, model, program=str(program), extra_args=extra_args)
    return [*exported, "--host", HOST, "--port", str(port)]


def server_env() -> dict[str, str]:
    return child_env(LOG_VERBOSITY_ENV)


def check_server(tool: ToolInfo, argv: Sequence[str]) -> None:
    """Refuse before launch: a program that is not llama-server, or one that lacks a flag."""
    if "--port" not in tool.flags or "--host" not in tool.flags:
        raise NotLlamaCpp(f"{tool.path} is not llama-server: its --help has no --host/--port "
                          f"({tool.name} {tool.version_line})")
    tool.check(argv)


def base_url(port: int, host: str = HOST) -> str:
    return f"http://{host}:{port}"


def openai_url(port: int, host: str = HOST) -> str:
    """What other apps are pointed at (the OpenAI-compatible API)."""
    return base_url(port, host) + "/v1"


# --- its log ------------------------------------------------------------------------------------

# "0.01.230.074 I load_tensors: …": common_log's timestamp and level (--log-prefix adds more)
_PREFIX = re.compile(r"^(?:\d+\.\d+\.\d+\.\d+ )?(?:[DIWE] )?")
_BIND_FAILED = "couldn't bind HTTP server socket"
_MODEL_LOAD = "load_tensors: offloaded"


def strip_prefix(line: str) -> str:
    return _PREFIX.sub("", line, count=1)


@dataclass
class ServerLog:
    """llama-server's log lines, prefix stripped; the last ones kept for a failure."""

    lines: list[str] = field(default_factory=list)
    tail: Tail = field(default_factory=lambda: Tail(12))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, raw: str) -> str:
        line = strip_prefix(raw.rstrip("\r\n"))
        with self._lock:
            self.lines.append(line)
        self.tail.add_err(line)
        return line

    def text(self) -> str:
        with self._lock:
            return "\n".join(self.lines) + "\n"

    def load_text(self) -> str:
        """The log of the model load that serves: from the last load_tensors on (llama-server
        first runs --fit's no_alloc trial, which logs a whole load of its own)."""
        text = self.text()
        at = text.rfind(_MODEL_LOAD)
        if at < 0:
            return text
        return text[text.rfind("\n", 0, at) + 1:]

    def memory(self) -> LlamaCppMemory:
        return parse_llama_log(self.load_text())

    @property
    def bind_failed(self) -> bool:
        return any(_BIND_FAILED in line for line in self.lines)

    def errors(self) -> list[str]:
        return [line for line in self.lines if "error" in line.lower()
                or "failed" in line.lower()][-3:]


PARTS = ("weights", "kv", "compute", "output")


def _device_of(buffer: str, devices: Sequence[str]) -> str:
    """Which device a buffer lives on: "CUDA0" -> CUDA0, "CUDA_Host"/"CPU_Mapped" -> CPU."""
    for d in sorted(devices, key=len, reverse=True):
        if buffer == d or (buffer.startswith(d) and not buffer[len(d):].startswith("_Host")):
            return d
    return "CPU"


def measured_devices(memory: LlamaCppMemory, devices: Sequence[str]) -> dict[str, dict[str, int]]:
    """What the log says llama.cpp allocated, per device (bytes, to the logged 0.01 MiB):
    {"CUDA0": {"weights", "kv", "compute", "output"}, "CPU": {…}}."""
    out: dict[str, dict[str, int]] = {}

    def add(buffer: str, part: str, mib: float) -> None:
        row = out.setdefault(_device_of(buffer, devices), dict.fromkeys(PARTS, 0))
        row[part] += mib_to_bytes(mib)

    for name, mib in memory.model_buffers_mib.items():
        add(name, "weights", mib)
    for name, mib in memory.kv_buffers_mib.items():
        add(name, "kv", mib)
    for name, mib in memory.compute_mib.items():
        add(name, "compute", mib)
    for name, mib in memory.output_mib.items():
        add(name, "output", mib)
    return out


def estimated_devices(est: Estimate) -> dict[str, dict[str, int]]:
    return {d.name: {"weights": d.weights, "kv": d.kv + d.state, "compute": d.compute,
                     "output": d.output} for d in est.devices}


def device_budgets(tool: ToolInfo) -> list[DeviceBudget]:
    """The GPUs this build sees, as the estimate's devices (free memory as the budget)."""
    from kvgui.core.devices.device_budget import DeviceBudget

    return [DeviceBudget(d.name, (d.free_mib if d.free_mib is not None else d.total_mib or 0)
                         * 1024 * 1024) for d in tool.devices]


# --- the HTTP side ------------------------------------------------------------------------------

def health(client: httpx.Client, url: str, timeout: float = 1.0) -> int | None:
    """``GET /health``'s status (200 ready, 503 loading), None when nothing answers."""
    import httpx

    try:
        return client.get(url + "/health", timeout=timeout).status_code
    except httpx.HTTPError:
        return None


# --- the synchronous server ---------------------------------------------------------------------

class LlamaServer:
    """One llama-server process (CLI, tests, benchmarks). Use as a context manager."""

    def __init__(self, tool: ToolInfo, model: str | os.PathLike[str], settings: Settings, *,
                 port: int | None = None, extra_args: Sequence[str] = (),
                 on_line: Callable[[str], None] | None = None) -> None:
        self.tool = tool
        self.model = str(model)
        self.settings = settings
        self.requested_port = port
        self.port = port or free_port()
        self.extra_args = tuple(extra_args)
        self.argv = serve_argv(tool.path, settings, self.model, self.port, self.extra_args)
        self.log = ServerLog()
        self._on_line = on_line
        self._proc: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []
        self.t_start = 0.0
        self.t_ready: float | None = None

    @property
    def url(self) -> str:
        return base_url(self.port)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def start(self) -> None:
        if not Path(self.model).is_file():
            raise ServerError(f"no such model file: {self.model}")
        check_server(self.tool, self.argv)
        if self.requested_port is not None and port_in_use(self.port):
            raise PortInUse(f"port {self.port} on {HOST} is in use: choose another (--port) or "
                            "leave it out for a free one")
        self.t_start = time.perf_counter()
        self._proc = subprocess.Popen(  # ends with us even if we are killed (no orphan server)
            tied_to_this_process(self.argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=server_env(), start_new_session=True)
        for stream in (self._proc.stdout, self._proc.stderr):
            t = threading.Thread(target=self._read, args=(stream,), daemon=True,
                                 name="kvgui-llama-server-log")
            t.start()
            self._readers.append(t)

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            line = self.log.add(raw.decode("utf-8", "replace"))
            if self._on_line is not None:
                self._on_line(line)

    def wait_ready(self, timeout: float = READY_TIMEOUT_S, poll_s: float = 0.02) -> float:
        """Seconds from start until ``/health`` said 200; ServerError if it died or hung."""
        from kvgui.runtime.local_http import local_client

        deadline = time.monotonic() + timeout
        with local_client() as client:
            while True:
                code = self.returncode
                if code is not None:
                    raise self._died(code)
                if health(client, self.url, timeout=1.0) == 200:
                    self.t_ready = time.perf_counter()
                    return self.t_ready - self.t_start
                if time.monotonic() > deadline:
                    self.close()
                    raise ServerError(self.log.tail.failure(
                        f"llama-server was not ready after {timeout:g} s"))
                time.sleep(poll_s)

    def _died(self, code: int) -> ServerError:
        for t in self._readers:
            t.join(timeout=2)
        if self.log.bind_failed:
            return PortInUse(f"llama-server could not listen on {HOST}:{self.port} (in use)")
        return ServerError(self.log.tail.failure(f"llama-server {describe_exit(code)}"))

    def __enter__(self) -> LlamaServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, grace: float = STOP_GRACE_S) -> int | None:
        """SIGTERM its group (llama-server cleans up), SIGKILL after ``grace``; reaped."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError, AttributeError):
                os.killpg(proc.pid, signal.SIGTERM)  # no process groups on Windows
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.warning("llama-server %d ignored SIGTERM for %g s: killing it", proc.pid,
                            grace)
        kill_group(proc.pid)  # and anything left in its group
        proc.wait()
        for t in self._readers:
            t.join(timeout=2)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        return proc.returncode

    def measured(self) -> dict[str, dict[str, int]]:
        return measured_devices(self.log.memory(), [d.name for d in self.tool.devices])
