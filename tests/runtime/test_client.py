"""The synchronous worker client: refusals before launch, crashes, aborts, no orphans."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.runtime.client import (
    LaunchRefused,
    WorkerClient,
    WorkerError,
    describe_exit,
    launch,
    preflight,
)
from kvgui.runtime.protocol import Sampling
from kvgui.testing.tiny_model import write_tiny_model

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def tiny(tiny_model_path) -> str:
    return str(tiny_model_path)


@pytest.fixture(scope="module")
def aborting(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A model whose header passes kvgui's checks but trips a GGML_ASSERT in llama.cpp (a V
    head size unlike the K one: the llama graph asserts they match)."""
    path = tmp_path_factory.mktemp("models") / "abort.gguf"
    write_tiny_model(path, value_dim=64)
    return str(path)


def _workers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "kvgui.runtime.worker" in " ".join(p.cmdline())]


@pytest.fixture(autouse=True)
def _no_worker_left_behind():
    yield
    deadline = time.monotonic() + 5
    while _workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _workers() == []


def test_invalid_combination_is_refused_before_launch(tiny: str) -> None:
    bad = Settings(n_ctx=512, type_v="q8_0", flash_attn=FlashAttn.OFF)
    with pytest.raises(LaunchRefused, match="quantized V cache"):
        launch(tiny, bad)
    assert _workers() == []


def test_missing_or_non_model_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(LaunchRefused, match="no such model file"):
        preflight(tmp_path / "nope.gguf", Settings())
    junk = tmp_path / "notes.gguf"
    junk.write_text("these are my notes, not a model\n")
    with pytest.raises(LaunchRefused, match="not a usable GGUF model"):
        preflight(junk, Settings())


def test_launch_returns_a_loaded_worker_and_estimate(tiny: str) -> None:
    client, est = launch(tiny, Settings(n_ctx=300))
    with client:
        assert est is not None and est.n_ctx == 512
        assert client.loaded is not None and client.loaded["n_ctx"] == est.n_ctx
        assert client.chat("hi", sampling=Sampling(max_tokens=2, seed=1))["tokens"] >= 1


def test_killed_mid_reply_is_reported_and_a_relaunch_works(tiny: str) -> None:
    with WorkerClient() as client:
        client.load(tiny, Settings(n_ctx=4096))
        client.send("chat", text="go on", sampling=Sampling(max_tokens=-1, seed=2).to_dict())
        while client.next_event(timeout=20)["type"] != "token":
            pass
        assert client.pid is not None
        os.kill(client.pid, signal.SIGKILL)
        with pytest.raises(WorkerError, match="killed by SIGKILL") as info:
            while True:
                client.next_event(timeout=20)
        assert "last log lines" in str(info.value)
        with pytest.raises(WorkerError):  # every later call says the same, none hangs
            client.chat("again")
    with WorkerClient() as again:
        again.load(tiny, Settings(n_ctx=256))
        assert again.chat("again", sampling=Sampling(max_tokens=2, seed=1))["tokens"] >= 1


def test_llama_cpp_abort_leaves_the_caller_alive_with_the_message(aborting: str) -> None:
    preflight(aborting, Settings(n_ctx=256))  # kvgui's reader accepts it: llama.cpp must judge
    with WorkerClient() as client, pytest.raises(WorkerError) as info:
        client.load(aborting, Settings(n_ctx=256))
    text = str(info.value)
    assert text.startswith("the llama.cpp worker was killed by SIGABRT")
    assert "GGML_ASSERT" in text and "n_embd_head" in text
    assert "#0 " not in text  # no gdb backtrace buried the assertion


def test_timeout_when_the_worker_is_silent(tiny: str) -> None:
    with WorkerClient() as client:
        client.load(tiny, Settings(n_ctx=256))
        with pytest.raises(TimeoutError):
            client.next_event(timeout=0.2)
        assert client.running  # a silent wait is not a death


def test_worker_exits_when_its_parent_is_killed(tiny: str, tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        from kvgui.runtime.client import WorkerClient
        from kvgui.core.config.settings import Settings
        c = WorkerClient()
        c.load({tiny!r}, Settings(n_ctx=256))
        print(c.pid, flush=True)
        time.sleep(60)
    """))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                              cwd=str(Path(__file__).resolve().parents[2]))
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        child = psutil.Process(pid)
        parent.kill()  # SIGKILL: no atexit, no cleanup in the parent
        parent.wait(5)
        child.wait(timeout=5)  # psutil.TimeoutExpired would mean an orphan
        assert not psutil.pid_exists(pid) or child.status() == psutil.STATUS_ZOMBIE
    finally:
        parent.kill()
        parent.wait(5)
        if parent.stdout is not None:
            parent.stdout.close()


def test_describe_exit() -> None:
    assert describe_exit(-9).startswith("was killed by SIGKILL")
    assert "assertion" in describe_exit(-6)
    assert describe_exit(3) == "exited with status 3"
    assert describe_exit(None) == "stopped answering"
