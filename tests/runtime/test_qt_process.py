"""The one process runner (``ChildProcess``) and the one child environment, with real children.

The children are real Python processes (small scripts) and the real kvgui workers; nothing is
faked. Every test checks that nothing it started is left behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from kvgui.runtime.childproc import (
    StoppedWatch,
    child_env,
    describe_exit,
    is_stopped,
    package_root,
)
from kvgui.runtime.protocol import message
from kvgui.runtime.qt_process import ChildProcess, Exit

pytestmark = pytest.mark.usefixtures("no_leftover_children")

ECHO = """
import json, sys
print("not a message", flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    if msg["type"] == "shutdown":
        break
    sys.stdout.write(json.dumps({"type": "token", "text": msg["text"][::-1]}) + "\\n")
    sys.stdout.flush()
print("bye on stderr", file=sys.stderr, flush=True)
"""


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _wait_exit(qtbot, proc: ChildProcess, timeout: int = 10_000) -> Exit:
    with qtbot.waitSignal(proc.exited, timeout=timeout) as sig:
        pass
    return sig.args[0]


def test_json_lines_both_ways_and_a_polite_finish(qtbot) -> None:
    proc = ChildProcess()
    got: list[dict] = []
    proc.message.connect(got.append)
    proc.start(_py(ECHO))
    with qtbot.waitSignal(proc.message, timeout=10_000):
        assert proc.send(message("chat", text="hello"))
    assert got == [{"type": "token", "text": "olleh"}]
    assert "not a message" in proc.tail.lines()  # a stray stdout line is kept, not fatal
    exits: list[Exit] = []
    proc.exited.connect(exits.append)
    proc.finish(5000, request=message("shutdown"))
    assert proc.pid is None and not proc.running
    assert len(exits) == 1 and exits[0].expected and exits[0].ok


def test_a_failure_is_told_with_its_stderr_tail(qtbot) -> None:
    proc = ChildProcess()
    proc.start(_py("import sys; print('GGML_ASSERT(x) failed', file=sys.stderr); sys.exit(3)"))
    end = _wait_exit(qtbot, proc)
    assert end.returncode == 3 and not end.expected
    assert end.description == "exited with status 3"
    assert end.tail == ("GGML_ASSERT(x) failed",)
    assert end.failure("the worker", " while loading") == (
        "the worker exited with status 3 while loading; last log lines:\nGGML_ASSERT(x) failed")


def test_a_kill_is_told_by_its_signal_name(qtbot) -> None:
    proc = ChildProcess()
    proc.start(_py("import time; print('up', flush=True); time.sleep(60)"))
    qtbot.waitSignal(proc.line, timeout=10_000).wait()
    pid = proc.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    end = _wait_exit(qtbot, proc)
    assert end.returncode == -9
    assert end.description.startswith("was killed by SIGKILL")
    assert "exit code" not in end.description and "9" not in end.description
    assert describe_exit(-6).startswith("was killed by SIGABRT")


def test_close_kills_the_whole_process_group(qtbot) -> None:
    """A child that started its own child (as llama-server's launcher scripts may): both go."""
    code = ("import subprocess, sys, time\n"
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(p.pid, flush=True)\n"
            "time.sleep(60)\n")
    proc = ChildProcess(json_lines=False)
    lines: list[str] = []
    proc.line.connect(lambda stream, text: lines.append(text))
    proc.start(_py(code))
    qtbot.waitUntil(lambda: bool(lines), timeout=10_000)
    child, grandchild = proc.pid, int(lines[0])
    assert child is not None and psutil.pid_exists(grandchild)
    assert os.getpgid(grandchild) == child  # the child leads its own group
    proc.terminate()
    deadline = time.monotonic() + 5
    while psutil.pid_exists(grandchild) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not psutil.pid_exists(child) and not psutil.pid_exists(grandchild)


def test_a_silent_child_is_killed_by_the_hang_timeout(qtbot) -> None:
    proc = ChildProcess()
    proc.start(_py("import time; time.sleep(60)"))
    proc.watch(0.5)
    t0 = time.monotonic()
    end = _wait_exit(qtbot, proc)
    assert end.hung and 0.4 < time.monotonic() - t0 < 5
    assert end.description == "stopped answering (nothing for 0.5 s) and was killed"


def test_a_stopped_child_is_ended_with_that_reason(qtbot) -> None:
    """SIGSTOP (issue 18, case 11): a stopped child answers nothing, forever; after the grace
    it is killed and the reason says it was stopped, not "exit code 9"."""
    proc = ChildProcess()
    proc._stopped = StoppedWatch(0.5)
    proc.start(_py("import time; time.sleep(60)"))
    qtbot.waitUntil(lambda: proc.pid is not None, timeout=5_000)
    os.kill(proc.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    end = _wait_exit(qtbot, proc)
    assert end.hung and time.monotonic() - t0 < 5
    assert end.description.startswith("was stopped (SIGSTOP"), end.description


def test_is_stopped_reads_the_process_state() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert not is_stopped(child.pid)
        os.kill(child.pid, signal.SIGSTOP)
        deadline = time.monotonic() + 5
        while not is_stopped(child.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert is_stopped(child.pid)
        watch = StoppedWatch(0.2)
        assert watch.verdict(child.pid) is None  # the grace starts now
        time.sleep(0.3)
        assert "did not resume within 0.2 s" in (watch.verdict(child.pid) or "")
        os.kill(child.pid, signal.SIGCONT)
        time.sleep(0.1)
        assert watch.verdict(child.pid) is None
    finally:
        child.kill()
        child.wait()


def test_output_keeps_a_watched_child_alive(qtbot) -> None:
    proc = ChildProcess(json_lines=False)
    proc.start(_py("import time\nfor i in range(8):\n    print(i, flush=True); time.sleep(0.2)"))
    proc.watch(1.0)  # longer than each pause, shorter than the whole run
    end = _wait_exit(qtbot, proc)
    assert end.ok and not end.hung


def test_a_program_that_does_not_exist(qtbot) -> None:
    proc = ChildProcess()
    proc.start(["/nonexistent/llama-server", "--version"])
    end = _wait_exit(qtbot, proc)
    assert end.returncode is None and end.description.startswith("could not be started")


# --- one child environment ---------------------------------------------------------------------

def test_child_env() -> None:
    env = child_env({"EXTRA": "1"}, base={"PYTHONPATH": "/elsewhere", "HOME": "/h"})
    assert env["PYTHONPATH"] == os.pathsep.join((package_root(), "/elsewhere"))
    assert env["GGML_NO_BACKTRACE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["EXTRA"] == "1" and env["HOME"] == "/h"
    assert Path(package_root(), "kvgui", "__init__.py").is_file()


def _env_of(pid: int) -> dict[str, str]:
    deadline = time.monotonic() + 10
    while True:
        env = psutil.Process(pid).environ()
        if env.get("PYTHONPATH") or time.monotonic() > deadline:
            return env
        time.sleep(0.02)  # between fork and exec the environment is still the parent's


@pytest.mark.llama
def test_every_kvgui_child_gets_the_one_environment(qtbot, tiny_model_path) -> None:
    """The chat worker (window and CLI), the measure worker and the dry run: each used to
    build its own environment, one without GGML_NO_BACKTRACE."""
    from kvgui.core.config.settings import Settings
    from kvgui.runtime.client import WorkerClient
    from kvgui.runtime.measure import MeasureRequest, sample_text
    from kvgui.runtime.qt_dryrun import DryRunProcess
    from kvgui.runtime.qt_measure import MeasureProcess
    from kvgui.runtime.qt_worker import QtWorker

    seen: dict[str, dict[str, str]] = {}
    worker = QtWorker()
    with qtbot.waitSignal(worker.measured, timeout=20_000):
        worker.launch(str(tiny_model_path), Settings(n_ctx=256))
    assert worker.pid is not None
    seen["window chat worker"] = _env_of(worker.pid)
    worker.shutdown()

    with WorkerClient() as client:
        client.start()
        assert client.pid is not None
        seen["CLI chat worker"] = _env_of(client.pid)

    measure = MeasureProcess()
    measure.start(MeasureRequest(str(tiny_model_path), Settings(n_ctx=256), text=sample_text(),
                                 window=64, max_windows=1))
    assert measure.pid is not None
    seen["measure worker"] = _env_of(measure.pid)
    measure.shutdown()

    dry = DryRunProcess()
    with qtbot.waitSignal(dry.done, timeout=30_000) as done:
        dry.start(str(tiny_model_path), Settings(n_ctx=256))
        assert dry.child.pid is not None
        seen["dry run"] = _env_of(dry.child.pid)
    assert done.args[2] == "" and done.args[1].n_ctx == 256

    for who, env in seen.items():
        assert env.get("GGML_NO_BACKTRACE") == "1", who
        assert env.get("PYTHONPATH", "").split(os.pathsep)[0] == package_root(), who


def test_runtime_imports_without_the_ui() -> None:
    """runtime never imports kvgui.ui (qt_worker did, for a PySide6 workaround)."""
    code = ("import importlib.abc, sys\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'kvgui.ui' or name.startswith('kvgui.ui.'):\n"
            "            raise ImportError('kvgui.ui is blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import pkgutil, importlib, kvgui.runtime\n"
            "for m in pkgutil.walk_packages(kvgui.runtime.__path__, 'kvgui.runtime.'):\n"
            "    importlib.import_module(m.name)\n"
            "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=child_env({"QT_QPA_PLATFORM": "offscreen"}))
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
