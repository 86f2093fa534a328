"""The chat window with real llama.cpp behind it (the tiny model), driven like a user."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from PySide6.QtCore import Qt

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.runtime.qt_worker import FAILED, READY
from kvgui.testing.tiny_model import write_tiny_model
from kvgui.ui.chat_window import MEMORY_ROWS, ChatPanel, ChatWindow, differs, settings_summary

pytestmark = pytest.mark.llama
TIMEOUT = 20000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf"))


def _workers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "kvgui.runtime.worker" in " ".join(p.cmdline())]


@pytest.fixture
def panel(qtbot):
    p = ChatPanel()
    qtbot.addWidget(p)
    p.resize(1000, 700)
    p.show()
    yield p
    p.shutdown()
    deadline = time.monotonic() + 5
    while _workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _workers() == []


def _launch(qtbot, panel: ChatPanel, path: str, settings: Settings) -> dict:
    with qtbot.waitSignal(panel.worker.measured, timeout=TIMEOUT) as loaded:
        assert panel.launch(path, settings)
    return loaded.args[0]


def _cell(panel: ChatPanel, key: str, col: int) -> str:
    row = [k for k, _ in MEMORY_ROWS].index(key)
    return panel.memory_table.item(row, col).text()


def test_reply_streams_with_measured_memory_next_to_the_estimate(qtbot, panel, tiny) -> None:
    settings = Settings(n_ctx=600, type_k="q8_0", type_v="q4_0", flash_attn=FlashAttn.ON)
    _launch(qtbot, panel, tiny, settings)
    assert "-ctk q8_0 -ctv q4_0 -fa on" in panel.settings_label.text()
    assert panel.measured is not None and panel.estimated is not None
    assert panel.measured["n_ctx"] == panel.estimated["n_ctx"] == 768
    for key in ("kv_k", "kv_v", "kv", "n_ctx"):
        assert _cell(panel, key, 2) == "same", key
        assert not differs(key, panel.measured[key], panel.estimated[key])
    assert [r.label for r in panel.memory_bar.rows] == ["Estimated", "Measured"]

    tokens: list[str] = []
    panel.worker.token.connect(tokens.append)
    panel.max_tokens.setValue(8)
    panel.seed.setValue(5)
    panel.system_edit.setText("You are terse.")
    qtbot.keyClicks(panel.input, "hello model")
    with qtbot.waitSignal(panel.worker.finished, timeout=TIMEOUT) as done:
        qtbot.mouseClick(panel.send_button, Qt.MouseButton.LeftButton)
    reply = done.args[0]["reply"]
    assert tokens and "".join(tokens) == reply
    text = panel.transcript.toPlainText()
    assert "You: hello model" in text and text.rstrip().endswith(reply.rstrip())
    assert panel.context_bar.maximum() == 768 and panel.context_bar.value() > 10
    assert "first token" in panel.stats_label.text() and "t/s" in panel.stats_label.text()
    assert panel.input.toPlainText() == "" and panel.send_button.isEnabled()


def test_stop_keeps_the_model_and_new_conversation_clears(qtbot, panel, tiny) -> None:
    _launch(qtbot, panel, tiny, Settings(n_ctx=4096))
    pid = panel.worker.pid
    panel.max_tokens.setValue(-1)
    panel.seed.setValue(1)
    seen: list[str] = []

    def stop_at_first(text: str) -> None:
        seen.append(text)
        if len(seen) == 1:
            assert panel.stop_button.isEnabled()
            qtbot.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)

    panel.worker.token.connect(stop_at_first)
    with qtbot.waitSignal(panel.worker.finished, timeout=TIMEOUT) as done:
        assert panel.send("tell me a long story")
    assert done.args[0]["stop_reason"] == "stopped"
    assert panel.worker.pid == pid and panel.worker.state == READY
    assert panel.status_label.text() == "stopped"
    panel.worker.token.disconnect(stop_at_first)

    qtbot.mouseClick(panel.new_button, Qt.MouseButton.LeftButton)
    assert panel.transcript.toPlainText() == "" and panel.context_bar.value() == 0
    panel.max_tokens.setValue(3)
    with qtbot.waitSignal(panel.worker.finished, timeout=TIMEOUT) as again:
        panel.send("short")
    assert again.args[0]["prompt_tokens"] < done.args[0]["n_past"]  # the history is gone


def test_invalid_combination_is_refused_before_launch(qtbot, panel, tiny) -> None:
    bad = Settings(n_ctx=512, type_v="q8_0", flash_attn=FlashAttn.OFF)
    with qtbot.waitSignal(panel.worker.failed, timeout=TIMEOUT) as failed:
        assert not panel.launch(tiny, bad)
    message, fatal = failed.args
    assert fatal and "needs flash attention" in message
    assert "needs flash attention" in panel.status_label.text()
    assert panel.worker.pid is None and _workers() == []
    assert not panel.send_button.isEnabled()


def test_killed_mid_reply_is_reported_and_relaunch_works(qtbot, panel, tiny) -> None:
    _launch(qtbot, panel, tiny, Settings(n_ctx=4096))
    panel.max_tokens.setValue(-1)
    panel.seed.setValue(1)  # a seed whose reply runs long: no end of turn before the kill

    def kill_on_first_token(_text: str) -> None:
        if panel.worker.pid is not None:
            os.kill(panel.worker.pid, signal.SIGKILL)

    panel.worker.token.connect(kill_on_first_token)
    with qtbot.waitSignal(panel.worker.failed, timeout=TIMEOUT) as failed:
        panel.send("keep going")
    panel.worker.token.disconnect(kill_on_first_token)
    message, fatal = failed.args
    assert fatal and "killed by SIGKILL" in message and "in the middle of a reply" in message
    assert "last log lines" in message
    assert panel.worker.state == FAILED and panel.relaunch_button.isEnabled()
    assert "Error: the llama.cpp worker was killed" in panel.transcript.toPlainText()

    with qtbot.waitSignal(panel.worker.measured, timeout=TIMEOUT):
        qtbot.mouseClick(panel.relaunch_button, Qt.MouseButton.LeftButton)
    panel.max_tokens.setValue(2)
    with qtbot.waitSignal(panel.worker.finished, timeout=TIMEOUT):
        panel.send("hello again")


def test_llama_cpp_abort_leaves_the_window_alive(qtbot, panel, tmp_path: Path) -> None:
    # V heads unlike K heads: kvgui's checks pass it, llama.cpp's llama graph GGML_ASSERTs
    path = str(write_tiny_model(tmp_path / "abort.gguf", value_dim=64))
    with qtbot.waitSignal(panel.worker.failed, timeout=TIMEOUT) as failed:
        assert panel.launch(path, Settings(n_ctx=256))
    message, fatal = failed.args
    assert fatal and "SIGABRT" in message and "GGML_ASSERT" in message
    assert "while loading the model" in message
    assert panel.isVisible() and panel.relaunch_button.isEnabled()


def test_closing_the_window_ends_the_worker(qtbot, tiny) -> None:
    win = ChatWindow()
    qtbot.addWidget(win)
    win.show()
    with qtbot.waitSignal(win.panel.worker.measured, timeout=TIMEOUT):
        win.launch(tiny, Settings(n_ctx=256))
    pid = win.panel.worker.pid
    assert pid is not None and psutil.pid_exists(pid)
    win.close()
    assert win.panel.worker.pid is None
    assert not psutil.pid_exists(pid)  # ended and reaped before close() returned


def test_settings_summary_and_differences() -> None:
    s = Settings(n_ctx=8192, type_k="q4_0", n_parallel=2, kv_offload=False, swa_full=True)
    text = settings_summary(s)
    assert text.startswith("-c 8192 -ctk q4_0 -ctv f16 -fa auto -ngl all")
    assert "-np 2" in text and "-nkvo" in text and "--swa-full" in text
    assert not differs("kv", 1_000_000, 1_000_000 + 4000)  # within the logged 0.01 MiB
    assert differs("kv", 1_000_000, 1_100_000)
    assert differs("n_ctx", 512, 768)


def test_estimate_for_a_gpu_is_redone_for_a_cpu_only_build(qtbot, panel, tiny) -> None:
    import llama_cpp

    from kvgui.core.devices.device_budget import DeviceBudget
    from kvgui.core.memory.estimate import estimate
    from kvgui.core.model.info import load_model

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama.cpp build offloads: the planned GPU estimate is the right one")
    settings = Settings(n_ctx=512)
    model = load_model(tiny)
    planned = estimate(model, settings, [DeviceBudget("GPU 0", 8 << 30)])
    with qtbot.waitSignal(panel.worker.measured, timeout=TIMEOUT):
        panel.launch(tiny, settings, planned)
    cpu_only = estimate(model, settings)
    assert panel.estimated is not None
    assert panel.estimated["compute"] == cpu_only.compute
    assert panel.estimated["kv"] == cpu_only.kv
