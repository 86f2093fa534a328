"""``kvgui serve``: the real llama-server from the CLI, ready, compared, stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

pytestmark = [pytest.mark.llama, pytest.mark.usefixtures("no_leftover_children")]


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory):
    from kvgui.testing.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny.gguf")


def _kvgui(*args: str, env: dict[str, str] | None = None, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvgui.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_check_reports_the_url_and_memory_equal_to_the_estimate(llama_tools, real_model) -> None:
    r = _kvgui("serve", str(real_model), "-c", "4096", "-nr", "-ctk", "q8_0", "-ctv", "q8_0",
               "-fa", "on", "--llama-cpp", str(llama_tools.bin), "--check", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["url"] == f"http://127.0.0.1:{out['port']}/v1"
    assert out["argv"][-4:] == ["--host", "127.0.0.1", "--port", str(out["port"])]
    assert not psutil.pid_exists(out["pid"]) or \
        psutil.Process(out["pid"]).status() == psutil.STATUS_ZOMBIE
    for part in ("weights", "kv", "compute", "output"):
        assert abs(out["measured"]["CPU"][part] - out["estimated"]["CPU"][part]) <= 11_000, part


def test_no_llama_server_is_bad_input_with_how_to_get_one(tiny_model_path, tmp_path) -> None:
    env = dict(os.environ, PATH=str(tmp_path), KVGUI_CONFIG_DIR=str(tmp_path))
    env.pop("KVGUI_LLAMA_CPP", None)
    r = _kvgui("serve", str(tiny_model_path), "-c", "256", env=env)
    assert r.returncode == 2
    assert "no llama-server" in r.stderr and "releases" in r.stderr


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie); it may exit between any two questions."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigterm_stops_kvgui_and_its_server(llama_tools, tiny_model_path) -> None:
    started: list[int] = []
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvgui.cli", "serve", str(tiny_model_path), "-c", "256",
         "--llama-cpp", str(llama_tools.bin), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or lines[-1] != "}\n":
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
        server = json.loads("".join(lines))["pid"]
        started.append(server)
        assert psutil.pid_exists(server)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        deadline = time.monotonic() + 5
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(server)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pid in started:  # a failed assertion must not leave the server running
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG: Linux only")
def test_a_killed_kvgui_leaves_no_server_running(llama_tools, tiny_model_path) -> None:
    """kill -9 of ``kvgui serve`` (no handler runs): its llama-server, in a session of its own,
    still ends (the kernel's SIGTERM on its parent's death), rather than holding the port and the
    model's memory."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvgui.cli", "serve", str(tiny_model_path), "-c", "256",
         "--llama-cpp", str(llama_tools.bin), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = None
    try:
        lines = []
        while not lines or lines[-1] != "}\n":
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
        server = json.loads("".join(lines))["pid"]
        assert _alive(server) and psutil.Process(server).name().startswith("llama-server")
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(server), "llama-server outlived the kvgui that started it"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)
        proc.stdout.close()
        proc.stderr.close()
