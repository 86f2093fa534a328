"""A synchronous, Qt-free client for the llama.cpp worker (the CLI and the benchmark use it).

It spawns ``python -m kvgui.runtime.worker`` in its own process group, speaks the protocol of
``kvgui.runtime.protocol``, and turns every way the worker can end (a ``failed`` event, an
abort, a kill, a timeout) into one ``WorkerError`` whose message ends with llama.cpp's last
log lines. No orphans: ``close()`` (also on garbage collection and at interpreter exit)
kills the whole group, and the worker exits by itself when its parent dies.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import queue
import subprocess
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvgui.core.config.settings import Settings
from kvgui.runtime.childproc import (
    StoppedWatch,
    Tail,
    child_env,
    describe_exit,
    kill_group,
    python_command,
)
from kvgui.runtime.protocol import Message, ProtocolError, Sampling, decode, encode, message

if TYPE_CHECKING:
    from kvgui.core.devices.device_budget import DeviceBudget
    from kvgui.core.memory.estimate import Estimate

_EOF = {"type": "_eof"}


class WorkerError(RuntimeError):
    """The worker could not do what was asked; ``str()`` is the one-line-first message."""

    def __init__(self, message: str, *, fatal: bool = True) -> None:
        super().__init__(message)
        self.fatal = fatal


class LaunchRefused(WorkerError):
    """Refused before any process was started (invalid settings, not a model file)."""


WORKER_MODULE = "kvgui.runtime.worker"


def worker_command(python: str | None = None) -> list[str]:
    return python_command(WORKER_MODULE, python)


def preflight(model_path: str | os.PathLike[str], settings: Settings,
              devices: Sequence[DeviceBudget] | None = None) -> Estimate:
    """The estimate for a launch, or LaunchRefused with the reason llama.cpp would give."""
    from kvgui.core.gguf.reader import GGUFError
    from kvgui.core.memory.estimate import estimate
    from kvgui.core.model.info import load_model

    path = Path(model_path)
    if not path.is_file():
        raise LaunchRefused(f"no such model file: {path}")
    try:
        model = load_model(path)
    except GGUFError as exc:
        raise LaunchRefused(f"not a usable GGUF model: {exc}") from None
    except OSError as exc:
        raise LaunchRefused(f"cannot read {path}: {exc.strerror or exc}") from None
    est = estimate(model, settings, devices)
    if est.errors:
        raise LaunchRefused("; ".join(est.errors))
    return est


_LIVE: weakref.WeakSet[WorkerClient] = weakref.WeakSet()


@atexit.register
def _kill_all() -> None:
    for client in list(_LIVE):
        client.kill()


class WorkerClient:
    """One worker process. Use as a context manager, or call ``close()``."""

    def __init__(self, *, python: str | None = None, env: dict[str, str] | None = None,
                 on_event: Callable[[Message], None] | None = None) -> None:
        self._python = python
        self._env = env
        self._on_event = on_event
        self._proc: subprocess.Popen[bytes] | None = None
        self._events: queue.Queue[Message] = queue.Queue()
        self._tail = Tail()
        self._write_lock = threading.Lock()
        self._err_thread: threading.Thread | None = None
        self._stopped = StoppedWatch()
        self.started: Message | None = None
        self.loaded: Message | None = None

    # -- process -------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def last_lines(self) -> list[str]:
        """llama.cpp's last log lines and the worker's last stderr lines, oldest first."""
        return self._tail.lines()

    def start(self, timeout: float = 60.0) -> Message:
        """Spawn the worker and wait for its ``started`` event."""
        if self._proc is not None:
            raise WorkerError("the worker is already started")
        self._proc = subprocess.Popen(
            worker_command(self._python),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=child_env(self._env),
            start_new_session=True,  # its own process group: close() kills it all
        )
        _LIVE.add(self)
        threading.Thread(target=self._read_stdout, name="kvgui-worker-out", daemon=True).start()
        self._err_thread = threading.Thread(target=self._read_stderr, name="kvgui-worker-err",
                                            daemon=True)
        self._err_thread.start()
        self.started = self._expect("started", timeout)
        return self.started

    def _read_stdout(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in iter(self._proc.stdout.readline, b""):
            try:
                msg = decode(line)
            except ProtocolError:
                self._tail.err.append(line.decode("utf-8", "replace").rstrip())
                continue
            if msg["type"] == "log":
                self._tail.log.append(str(msg.get("text", "")))
            self._events.put(msg)
        self._events.put(_EOF)

    def _read_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for line in iter(self._proc.stderr.readline, b""):
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self._tail.err.append(text[:500])

    def send(self, kind: str, **payload: Any) -> None:
        if self._proc is None or self._proc.stdin is None:
            raise WorkerError("the worker is not started")
        with self._write_lock:
            try:
                self._proc.stdin.write(encode(message(kind, **payload)))
                self._proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):  # ValueError: stdin closed by kill()
                raise self._died() from None

    def kill(self) -> None:
        """Kill the worker's process group now (SIGKILL); safe to call at any time."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            kill_group(proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        _LIVE.discard(self)

    def close(self, timeout: float = 5.0) -> None:
        """Ask the worker to shut down; kill it if it has not exited within ``timeout``."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(WorkerError):
                self.send("shutdown")
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)
        self.kill()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()

    # -- events --------------------------------------------------------------------------

    def _died(self) -> WorkerError:
        assert self._proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
        if self._err_thread is not None:
            self._err_thread.join(timeout=2)  # stderr's last lines: the abort message
        return WorkerError(self._tail.failure(
            f"the llama.cpp worker {describe_exit(self._proc.poll())}"))

    def next_event(self, timeout: float | None = None) -> Message:
        """The next event (``log`` included); WorkerError if the worker died or was stopped
        (SIGSTOP) past the grace, TimeoutError after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                msg = self._events.get(timeout=1.0 if left is None else max(0.0, min(1.0, left)))
                break
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"no answer from the llama.cpp worker in {timeout:g} s") from None
                if why := self._stopped.verdict(self.pid):
                    self.kill()
                    raise WorkerError(f"the llama.cpp worker {why}") from None
        if msg is _EOF:
            self._events.put(_EOF)  # every later call reports the death too
            raise self._died()
        if self._on_event is not None:
            self._on_event(msg)
        return msg

    def events(self, timeout: float | None = None) -> Iterator[Message]:
        """Events until the worker ends; ``timeout`` is per event."""
        while True:
            yield self.next_event(timeout)

    def _expect(self, kind: str, timeout: float | None,
                on_event: Callable[[Message], None] | None = None) -> Message:
        """Events until ``kind``; a ``failed`` event becomes a WorkerError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                msg = self.next_event(left)
            except TimeoutError:
                self.kill()
                raise
            if on_event is not None:
                on_event(msg)
            if msg["type"] == kind:
                return msg
            if msg["type"] == "failed":
                fatal = bool(msg.get("fatal", True))
                if fatal:
                    self.kill()
                raise WorkerError(str(msg.get("message", "the worker failed")), fatal=fatal)

    # -- requests ------------------------------------------------------------------------

    def load(self, model_path: str | os.PathLike[str], settings: Settings,
             timeout: float | None = None,
             on_event: Callable[[Message], None] | None = None) -> Message:
        """Load the model with exactly ``settings``; returns the ``loaded`` event."""
        if self._proc is None:
            self.start()
        self.send("load", model=str(model_path), settings=settings.to_dict())
        self.loaded = self._expect("loaded", timeout, on_event)
        return self.loaded

    def chat(self, text: str, *, system: str | None = None,
             sampling: Sampling | None = None, timeout: float | None = None,
             on_token: Callable[[str], None] | None = None) -> Message:
        """One turn; ``on_token`` gets each streamed piece; returns the ``finished`` event."""

        def forward(msg: Message) -> None:
            if on_token is not None and msg["type"] == "token":
                on_token(str(msg.get("text", "")))

        self.send("chat", text=text, system=system, sampling=(sampling or Sampling()).to_dict())
        return self._expect("finished", timeout, forward)

    def stop(self) -> None:
        self.send("stop")

    def reset(self, system: str | None = None) -> None:
        self.send("reset", system=system)


def launch(model_path: str | os.PathLike[str], settings: Settings, *,
           devices: Sequence[DeviceBudget] | None = None, check: bool = True,
           timeout: float | None = None,
           on_event: Callable[[Message], None] | None = None,
           ) -> tuple[WorkerClient, Estimate | None]:
    """Preflight (unless ``check`` is False), start a worker and load; the caller closes it."""
    est = preflight(model_path, settings, devices) if check else None
    client = WorkerClient()
    try:
        client.start()
        client.load(model_path, settings, timeout=timeout, on_event=on_event)
    except BaseException:
        client.kill()
        raise
    return client, est


# -- measured vs estimated -------------------------------------------------------------------

MEMORY_KEYS = ("weights", "kv_k", "kv_v", "kv", "compute", "output", "total")


def measured_memory(loaded: Message) -> dict[str, int | None]:
    """What llama.cpp allocated while loading, + n_ctx: exact bytes from its memory breakdown
    where the worker could read it, else the logged figures (to 0.01 MiB)."""
    from kvgui.runtime.llama_log import BufferBytes, parse_llama_log

    mem = parse_llama_log(str(loaded.get("log", "")))
    exact = loaded.get("exact")
    if isinstance(exact, list) and exact:
        mem.exact = [BufferBytes(**b) for b in exact]
    out: dict[str, int | None] = dict(mem.memory())
    out["n_ctx"] = mem.n_ctx if mem.n_ctx is not None else loaded.get("n_ctx")
    return out


def estimated_memory(est: Estimate) -> dict[str, int | None]:
    out: dict[str, int | None] = dict(est.memory_json())
    out["n_ctx"] = est.n_ctx
    return out


def detected_gpus() -> list[Any]:
    """NVML's GPUs (kvgui.core.devices.hardware), or [] when there is none or no NVML."""
    try:
        from kvgui.core.devices.hardware import nvidia

        gpus, _reasons = nvidia.probe()
    except Exception:  # no driver, no library, no module: simply no GPU figures
        return []
    return list(gpus)


def estimate_devices(gpu_offload: bool, gpus: Sequence[Any] | None = None) -> list[DeviceBudget]:
    """The devices llama.cpp actually used: the GPUs only if its build can offload."""
    from kvgui.core.devices.device_budget import DeviceBudget

    if not gpu_offload:
        return []
    found = detected_gpus() if gpus is None else gpus
    return [DeviceBudget(str(g.name), g.free if g.free is not None else g.total) for g in found]
