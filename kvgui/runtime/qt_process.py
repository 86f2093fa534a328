"""The one process runner of the window: a child process under QProcess, lines in and out.

Chat (``qt_worker``), measure, verify and llama-server all run through ``ChildProcess``: it
starts the command with ``childproc.child_env()`` in a new session (its own process group),
splits stdout into lines (JSON messages when ``json_lines``; any other line goes to the tail),
keeps the last stderr lines for the reason of a failure, writes JSON-line requests to stdin,
kills the whole group on close, and reports every end as one ``exited`` signal carrying an
``Exit``: the status, "killed by SIGKILL" rather than "exit code 9", and the last lines. A
hang timeout (``watch``) kills a child that stays silent for too long and says so.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from PySide6.QtCore import (
    QByteArray,
    QCoreApplication,
    QObject,
    QProcess,
    QProcessEnvironment,
    QTimer,
    Signal,
)

from kvgui import qtfix
from kvgui.runtime.childproc import (
    StoppedWatch,
    Tail,
    child_env,
    describe_exit,
    kill_group,
    signal_group,
)
from kvgui.runtime.protocol import Message, ProtocolError, decode, encode

log = logging.getLogger(__name__)
qtfix.apply()  # PySide6 6.12 on Python 3.11: before any Qt call of this module


@dataclass(frozen=True)
class Exit:
    """How a child ended. ``returncode`` as subprocess spells it (negative: the signal);
    None when it never started. ``expected``: ended by ``finish``/``terminate`` (a close),
    not on its own. ``hung``: killed by the hang timeout."""

    returncode: int | None
    description: str
    tail: tuple[str, ...]
    expected: bool = False
    hung: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def failure(self, what: str, doing: str = "") -> str:
        """'<what> <description><doing>; last log lines: …' (e.g. 'the llama.cpp worker was
        killed by SIGKILL (…) in the middle of a reply; last log lines: …')."""
        text = f"{what} {self.description}{doing}"
        return text + ("; last log lines:\n" + "\n".join(self.tail) if self.tail else "")


class ChildProcess(QObject):
    message = Signal(dict)  # one JSON line from stdout (json_lines)
    line = Signal(str, str)  # ("stdout" | "stderr", text): every line, JSON or not
    exited = Signal(object)  # Exit, once per start

    def __init__(self, parent: QObject | None = None, *, json_lines: bool = True,
                 tail_lines: int = 12) -> None:
        super().__init__(parent)
        self.json_lines = json_lines
        self.tail = Tail(tail_lines)
        self._proc: QProcess | None = None
        self._out = bytearray()
        self._err = bytearray()
        self._expected = False
        self._hung = False
        self._reported = True
        self._pid: int | None = None
        self._silence_s = 0.0
        self._watchdog = QTimer(self)
        self._watchdog.setSingleShot(True)
        self._watchdog.timeout.connect(self._on_hang)
        # a child stopped by SIGSTOP (or a debugger) is ended after a grace, with that reason
        self._stopped = StoppedWatch()
        self._stopped_why = ""
        self._state_timer = QTimer(self)
        self._state_timer.setInterval(1000)
        self._state_timer.timeout.connect(self._check_stopped)
        self.program: str = ""
        app = QCoreApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.terminate)

    # -- state ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._proc is not None and \
            self._proc.state() != QProcess.ProcessState.NotRunning

    @property
    def pid(self) -> int | None:
        if not self.running or self._proc is None:
            return None
        if not self._pid:
            self._pid = int(self._proc.processId()) or None
        return self._pid

    # -- start / stop --------------------------------------------------------------------

    def start(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None,
              cwd: str | None = None) -> None:
        """Start ``argv`` (the previous child, if any, is killed first)."""
        self.terminate()
        self._out.clear()
        self._err.clear()
        self.tail.clear()
        self._expected = self._hung = self._reported = False
        self._pid = None
        self.program = str(argv[0])
        proc = QProcess(self)
        qenv = QProcessEnvironment()
        for key, value in (child_env() if env is None else env).items():
            qenv.insert(key, value)
        proc.setProcessEnvironment(qenv)
        if cwd:
            proc.setWorkingDirectory(cwd)
        if sys.platform != "win32" and hasattr(proc, "setUnixProcessParameters"):
            # its own session and process group: a close kills it and all it started
            proc.setUnixProcessParameters(QProcess.UnixProcessFlag.CreateNewSession)
        proc.setProgram(self.program)
        proc.setArguments([str(a) for a in argv[1:]])
        proc.readyReadStandardOutput.connect(self._on_stdout)
        proc.readyReadStandardError.connect(self._on_stderr)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_error)
        proc.started.connect(self._on_started)
        self._proc = proc
        proc.start()
        self._pid = int(proc.processId()) or None  # forked by now (Unix); 0 if it failed

    def watch(self, seconds: float | None) -> None:
        """Kill the child if it writes nothing for ``seconds`` (None: stop watching).
        Any output restarts the count."""
        self._silence_s = float(seconds or 0.0)
        if self._silence_s > 0 and self.running:
            self._watchdog.start(int(self._silence_s * 1000))
        else:
            self._watchdog.stop()

    def send(self, msg: Message) -> bool:
        """One JSON line to the child's stdin; False when it is not running."""
        return self.write(encode(msg))

    def write(self, data: bytes) -> bool:
        proc = self._proc
        if proc is None or (proc.state() == QProcess.ProcessState.NotRunning and \
                not self._starting()):
            return False
        proc.write(QByteArray(data))
        return True

    def close_input(self) -> None:
        if self._proc is not None:
            self._proc.closeWriteChannel()

    def finish(self, wait_ms: int = 3000, *, request: Message | None = None,
               signal_first: int | None = None) -> None:
        """End it politely and synchronously: ``request`` (e.g. shutdown) and EOF on stdin,
        or ``signal_first`` (e.g. SIGTERM, for llama-server) to its group, then, after
        ``wait_ms``, the kill of its group. Reported as ``expected``."""
        proc = self._proc
        if proc is None:
            return
        self._expected = True
        if self.running:
            if request is not None:
                self.send(request)
            if signal_first is not None and self._pid:
                signal_group(self._pid, signal_first)
            proc.closeWriteChannel()
            if not proc.waitForFinished(wait_ms):
                self._kill_group()
                proc.waitForFinished(2000)
        self._reap()

    def terminate(self) -> None:
        """Kill the group now and wait for it (window closing, application quit)."""
        proc = self._proc
        if proc is None:
            return
        self._expected = True
        if self.running:
            self._kill_group()
            proc.waitForFinished(3000)
        self._reap()

    def wait(self, ms: int) -> bool:
        """Wait up to ``ms`` for the child to end (its exit is reported meanwhile); True when
        it has ended (or never ran)."""
        proc = self._proc
        if proc is None:
            return True
        if proc.state() != QProcess.ProcessState.NotRunning:
            proc.waitForFinished(ms)
        return self._proc is None or self._proc.state() == QProcess.ProcessState.NotRunning

    def kill(self) -> None:
        """SIGKILL the group now; reported as the child's own end (tests, Cancel)."""
        if self.running:
            self._kill_group()

    # -- internals -----------------------------------------------------------------------

    def _starting(self) -> bool:
        return self._proc is not None and \
            self._proc.state() == QProcess.ProcessState.Starting

    def _kill_group(self) -> None:
        if self._pid:
            kill_group(self._pid)
        elif self._proc is not None:
            self._proc.kill()

    def _reap(self) -> None:
        """Forget the process; the exit is reported here if Qt has not reported it yet."""
        proc, self._proc = self._proc, None
        self._watchdog.stop()
        if proc is None:
            return
        with contextlib.suppress(RuntimeError, TypeError):  # already disconnected
            proc.finished.disconnect(self._on_finished)
        self._drain(proc)
        if self._pid:
            kill_group(self._pid)  # anything the child left behind in its group
        self._report(proc)
        proc.deleteLater()

    def _on_started(self) -> None:
        if self._proc is not None:
            self._pid = int(self._proc.processId()) or None
        self._stopped = StoppedWatch(self._stopped.grace_s)
        self._stopped_why = ""
        self._state_timer.start()
        if self._silence_s > 0:
            self._watchdog.start(int(self._silence_s * 1000))

    def _poke(self) -> None:
        if self._silence_s > 0 and self._watchdog.isActive():
            self._watchdog.start(int(self._silence_s * 1000))

    def _drain(self, proc: QProcess) -> None:
        self._read_out(bytes(proc.readAllStandardOutput().data()), final=True)
        self._read_err(bytes(proc.readAllStandardError().data()), final=True)

    def _on_stdout(self) -> None:
        if self._proc is not None:
            self._poke()
            self._read_out(bytes(self._proc.readAllStandardOutput().data()))

    def _on_stderr(self) -> None:
        if self._proc is not None:
            self._poke()
            self._read_err(bytes(self._proc.readAllStandardError().data()))

    def _read_out(self, data: bytes, final: bool = False) -> None:
        self._out += data
        for raw in _lines(self._out, final):
            text = raw.decode("utf-8", "replace").rstrip("\r")
            self.line.emit("stdout", text)
            if not self.json_lines:
                self.tail.add_err(text)
                continue
            try:
                msg = decode(raw)
            except ProtocolError:
                self.tail.add_err(text)  # not ours: never fatal, but worth showing
                continue
            if msg.get("type") == "log":
                self.tail.log.append(str(msg.get("text", "")))
            self.message.emit(msg)

    def _read_err(self, data: bytes, final: bool = False) -> None:
        self._err += data
        for raw in _lines(self._err, final):
            text = raw.decode("utf-8", "replace").rstrip("\r")
            self.tail.add_err(text)
            self.line.emit("stderr", text)

    def _on_finished(self, exit_code: int, status: QProcess.ExitStatus) -> None:
        proc = self._proc
        if proc is None:
            return
        self._drain(proc)
        self._watchdog.stop()
        if self._pid:
            kill_group(self._pid)  # grandchildren of a child that is gone
        self._report(proc, exit_code, status)
        self._proc = None
        proc.deleteLater()

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error != QProcess.ProcessError.FailedToStart or self._proc is None:
            return
        proc, self._proc = self._proc, None
        self._watchdog.stop()
        if not self._reported:
            self._reported = True
            why = proc.errorString() or "it could not be started"
            self.exited.emit(Exit(None, f"could not be started: {why}", (), self._expected))
        proc.deleteLater()

    def _check_stopped(self) -> None:
        if not self.running:
            self._state_timer.stop()
            return
        why = self._stopped.verdict(self.pid)
        if why:
            log.warning("%s %s", self.program, why)
            self._hung = True
            self._stopped_why = why
            self._state_timer.stop()
            self._kill_group()

    def _on_hang(self) -> None:
        if self.running:
            log.warning("%s wrote nothing for %.0f s: killing it", self.program,
                        self._silence_s)
            self._hung = True
            self._kill_group()

    def _report(self, proc: QProcess, exit_code: int | None = None,
                status: QProcess.ExitStatus | None = None) -> None:
        if self._reported:
            return
        self._reported = True
        if exit_code is None:
            exit_code, status = proc.exitCode(), proc.exitStatus()
        # Qt reports the signal number as the exit code of a crashed process (Unix)
        code = -exit_code if status == QProcess.ExitStatus.CrashExit else exit_code
        self._state_timer.stop()
        if self._hung and self._stopped_why:
            what = self._stopped_why
        elif self._hung:
            what = f"stopped answering (nothing for {self._silence_s:g} s) and was killed"
        else:
            what = describe_exit(code)
        self.exited.emit(Exit(code, what, tuple(self.tail.lines()), self._expected,
                              self._hung))


def _lines(buffer: bytearray, final: bool) -> list[bytes]:
    """Complete lines taken out of ``buffer`` (and the rest too when ``final``)."""
    out: list[bytes] = []
    while (i := buffer.find(b"\n")) >= 0:
        out.append(bytes(buffer[:i]))
        del buffer[:i + 1]
    if final and buffer:
        out.append(bytes(buffer))
        buffer.clear()
    return out
