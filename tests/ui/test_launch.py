"""Launching like llama.cpp users do (issue 14): the chat's fixes, chat in llama-server, Serve,
Verify with llama-fit-params, Open in terminal, one model copy. Real llama.cpp throughout: the
bundled library, the llama-server / llama-fit-params / llama-cli built from its source, the
tiny generated models and (where it says so) the real Gemma-3-270M.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import psutil
import pytest
from PySide6.QtCore import Qt

from kvgui.core.config.settings import Settings
from kvgui.runtime import llama_bin
from kvgui.runtime.qt_worker import FAILED, READY
from kvgui.testing.tiny_model import write_tiny_model
from kvgui.ui.chat_window import SERVER, ChatPanel

pytestmark = [pytest.mark.llama, pytest.mark.usefixtures("no_leftover_children")]
TIMEOUT = 20000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_tiny_model(tmp_path_factory.mktemp("models") / "tiny.gguf"))


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A Gemma-architecture GGUF without a chat template, like the real Gemma-3-270M file."""
    return str(write_tiny_model(tmp_path_factory.mktemp("models") / "base-gemma2.gguf",
                                arch="gemma2", n_layer=4, n_swa=128, chat_template=None))


@pytest.fixture(scope="module")
def server_tool(llama_tools) -> llama_bin.ToolInfo:
    return llama_bin.probe(llama_tools.server)


@pytest.fixture
def panel(qtbot):
    p = ChatPanel()
    qtbot.addWidget(p)
    p.resize(1000, 700)
    p.show()
    yield p
    p.shutdown()


def _launch(qtbot, panel: ChatPanel, path: str, settings: Settings) -> dict:
    with qtbot.waitSignal(panel.worker.measured, timeout=TIMEOUT) as loaded:
        assert panel.launch(path, settings)
    return loaded.args[0]


def _stop_after_tokens(qtbot, panel: ChatPanel, n: int) -> list[str]:
    seen: list[str] = []

    def on_token(text: str) -> None:
        seen.append(text)
        if len(seen) == n:
            qtbot.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)

    panel.worker.token.connect(on_token)
    return seen


# --- chat fixes ----------------------------------------------------------------------------------

# This machine's CPU has AMX, and llama.cpp's AMX matmul crashes (SIGSEGV) on the real model's
# Q4_K weights here (llama-cpp-python and the tools alike): -nr keeps them out of AMX buffers.
REAL = Settings(n_ctx=2048, repack=False)


def _real_in_server(qtbot, panel, request) -> None:
    """The real Gemma-3-270M in llama-server, continuing text: ~40 tokens/s here, slow enough
    for Stop or a kill to land mid-reply (the tiny model finishes before the GUI sees it)."""
    panel.set_server_tool(request.getfixturevalue("server_tool"))
    assert panel.use_backend(SERVER)
    _launch(qtbot, panel, str(request.getfixturevalue("real_model")), REAL)
    panel.mode_box.setCurrentIndex(panel.mode_box.findData("completion"))


@pytest.mark.parametrize("backend", ["worker", "server"])
def test_stop_keeps_the_streamed_reply(qtbot, panel, tiny, backend, request) -> None:
    """Stop used to replace the streamed text by "" (and keep an empty turn)."""
    if backend == "server":
        _real_in_server(qtbot, panel, request)
    else:
        _launch(qtbot, panel, tiny, Settings(n_ctx=4096))
    panel.max_tokens.setValue(-1)
    panel.seed.setValue(1)
    seen = _stop_after_tokens(qtbot, panel, 1)
    with qtbot.waitSignal(panel.worker.finished, timeout=TIMEOUT) as done:
        assert panel.send("Once upon a time")
    assert done.args[0]["stop_reason"] == "stopped"
    streamed = "".join(seen)
    assert streamed and done.args[0]["reply"].startswith(streamed[:1])
    transcript = panel.transcript.toPlainText()
    reply = done.args[0]["reply"].replace("\r", "\n")  # the document's own line breaks
    assert transcript.rstrip().endswith(reply.rstrip())
    assert done.args[0]["reply"] != ""
    assert panel.status_label.text() == "stopped"


def test_the_context_counter_moves_while_generating(qtbot, panel, tiny) -> None:
    _launch(qtbot, panel, tiny, Settings(n_ctx=1024))
    panel.max_tokens.setValue(40)
    panel.seed.setValue(2)
    during: list[int] = []
    panel.worker.token.connect(lambda _t: during.append(panel.context_bar.value()))
    with qtbot.waitSignal(panel.worker.finished, timeout=TIMEOUT) as done:
        panel.send("count to ten")
    assert during and during[0] > 0  # not "0 / 1024" while the reply streams
    assert during == sorted(during) and during[-1] <= done.args[0]["n_past"]


def test_relaunch_clears_the_stats_line(qtbot, panel, tiny) -> None:
    _launch(qtbot, panel, tiny, Settings(n_ctx=512))
    panel.max_tokens.setValue(3)
    with qtbot.waitSignal(panel.worker.finished, timeout=TIMEOUT):
        panel.send("hi")
    assert "tokens" in panel.stats_label.text()
    panel.relaunch()
    assert panel.stats_label.text() == ""  # the old figures were for the old process
    qtbot.waitSignal(panel.worker.measured, timeout=TIMEOUT).wait()


def test_a_message_typed_during_a_reply_is_queued_and_sent(qtbot, panel, tiny) -> None:
    _launch(qtbot, panel, tiny, Settings(n_ctx=2048))
    panel.max_tokens.setValue(30)
    panel.seed.setValue(3)
    finished: list[dict] = []
    panel.worker.finished.connect(finished.append)
    queued = []

    def type_next(_text: str) -> None:
        if not queued:
            queued.append(True)
            qtbot.keyClicks(panel.input, "and then?")
            assert panel.send_button.isEnabled() and panel.send_button.text() == "Queue"
            qtbot.mouseClick(panel.send_button, Qt.MouseButton.LeftButton)
            assert panel.input.toPlainText() == ""  # not left piling up in the box
            assert panel.status_label.text().startswith("queued")

    panel.worker.token.connect(type_next)
    panel.send("first")
    qtbot.waitUntil(lambda: len(finished) == 2, timeout=TIMEOUT)
    text = panel.transcript.toPlainText()
    assert text.index("You: first") < text.index("You: and then?")


def test_a_gguf_without_template_is_told_and_chatted_with_its_format(qtbot, panel,
                                                                      base_model) -> None:
    loaded = _launch(qtbot, panel, base_model, Settings(n_ctx=512))
    assert loaded["chat_template"] is False
    assert panel.notice_label.isVisible()
    assert "no chat template" in panel.notice_label.text()
    assert "gemma" in panel.notice_label.text()
    assert panel.format_box.currentData() == "gemma"  # not llama-cpp-python's llama-2
    assert panel.format_box.itemData(0) == "gemma"
    panel.max_tokens.setValue(2)
    with qtbot.waitSignal(panel.worker.finished, timeout=TIMEOUT) as chat:
        panel.send("hello")
    assert chat.args[0]["chat_format"] == "gemma"
    panel.mode_box.setCurrentIndex(panel.mode_box.findData("completion"))
    assert not panel.format_box.isEnabled()
    with qtbot.waitSignal(panel.worker.finished, timeout=TIMEOUT) as done:
        panel.send("Once upon a time")
    assert done.args[0]["mode"] == "completion"


def test_an_empty_reply_of_a_base_model_says_why(qtbot, panel, base_model) -> None:
    _launch(qtbot, panel, base_model, Settings(n_ctx=512))
    panel._on_finished({"reply": "", "tokens": 0, "stop_reason": "eos", "n_past": 10,
                        "n_ctx": 512})
    assert "empty reply" in panel.status_label.text()
    assert "no chat template" in panel.status_label.text()


# --- chat in llama-server ------------------------------------------------------------------------

def test_chat_in_llama_server_streams_and_shows_its_url(qtbot, panel, tiny, server_tool) -> None:
    panel.set_server_tool(server_tool)
    assert panel.use_backend(SERVER) and panel.backend == SERVER
    loaded = _launch(qtbot, panel, tiny, Settings(n_ctx=1024))
    assert loaded["openai_url"].startswith("http://127.0.0.1:")
    assert panel.url_label.isVisible() and loaded["openai_url"] in panel.url_label.text()
    pid = panel.worker.pid
    cmd = psutil.Process(pid).cmdline()
    assert cmd[0] == server_tool.path and cmd[-4:-2] == ["--host", "127.0.0.1"]
    for key in ("kv", "compute", "n_ctx"):  # the memory table from llama-server's log
        assert panel.measured[key] == pytest.approx(panel.estimated[key], abs=20_000), key
    panel.max_tokens.setValue(6)
    panel.seed.setValue(4)  # the random tiny model may sample its end token: a fixed draw
    tokens: list[str] = []
    panel.worker.token.connect(tokens.append)
    with qtbot.waitSignal(panel.worker.finished, timeout=TIMEOUT) as done:
        panel.send("hello")
    reply = done.args[0]
    assert reply["reply"] == "".join(tokens)
    # six tokens, unless the model ended its reply sooner (a CI run saw 4 and an end token)
    assert (reply["stop_reason"], reply["tokens"]) == ("max_tokens", 6) or (
        reply["stop_reason"] == "eos" and 0 < reply["tokens"] < 6), reply
    assert "t/s" in panel.stats_label.text()
    panel.shutdown()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_llama_server_killed_mid_reply_is_reported(qtbot, panel, request) -> None:
    _real_in_server(qtbot, panel, request)
    panel.max_tokens.setValue(-1)
    panel.seed.setValue(1)

    def kill(_text: str) -> None:
        if panel.worker.pid:
            os.kill(panel.worker.pid, signal.SIGKILL)

    panel.worker.token.connect(kill)
    with qtbot.waitSignal(panel.worker.failed, timeout=TIMEOUT) as failed:
        panel.send("Once upon a time")
    message, fatal = failed.args
    assert fatal and message.startswith("llama-server was killed by SIGKILL")
    assert "in the middle of a reply" in message
    assert panel.worker.state == FAILED and panel.relaunch_button.isEnabled()


def test_the_server_choice_says_how_to_get_one_when_there_is_none(qtbot, panel) -> None:
    panel.set_server_tool(None)
    model = panel.backend_box.model()
    item = model.item(panel.backend_box.findData(SERVER))
    assert not item.isEnabled() and "releases" in item.toolTip()
    assert not panel.use_backend(SERVER) and panel.backend == "worker"


# --- the main window: one model copy, Serve, Verify, terminal -----------------------------------

@pytest.fixture
def launching(qtbot, window, open_model, tiny, llama_tools):
    window.config.llama_cpp_folder = str(llama_tools.bin)
    open_model(window, tiny)
    yield window
    window.launch.close_all()


def _workers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True)
            if "kvgui.runtime.worker" in " ".join(p.cmdline())]


def test_launch_chat_twice_reuses_the_chat_and_asks_first(qtbot, launching) -> None:
    """It used to open a second window with a second copy of the model, without asking."""
    w = launching
    asked: list[str] = []
    answer = [False]
    w.launch.ask = lambda title, text: asked.append(text) or answer[0]
    first = w.launch.launch_chat()
    qtbot.waitUntil(lambda: first.panel.worker.state == READY, timeout=TIMEOUT)
    pid = first.panel.worker.pid
    assert w.launch.launch_chat() is first and not asked  # same settings: brought forward
    w.ctl.update_settings(n_ctx=1024)
    w.ctl.flush()
    assert w.launch.launch_chat() is first and len(asked) == 1  # asked, declined: kept
    assert "Relaunch" in asked[0] and first.panel.worker.pid == pid
    answer[0] = True
    assert w.launch.launch_chat() is first
    qtbot.waitUntil(lambda: first.panel.worker.state == READY, timeout=TIMEOUT)
    assert first.panel.worker.pid != pid and first.panel.settings.n_ctx == 1024
    assert len(_workers()) == 1 and len(w.launch.chats) == 1


def test_serve_from_the_window(qtbot, launching, server_tool) -> None:
    w = launching
    win = w.launch.serve()
    panel = win.panel
    with qtbot.waitSignal(panel.server.ready, timeout=TIMEOUT):
        pass
    assert panel.openai_url.startswith("http://127.0.0.1:") and panel.openai_url.endswith("/v1")
    assert panel.copy_button.isEnabled()
    rows = panel.measured_rows()
    assert rows and all(r[4] == "same" for r in rows if r[3] != "-"), rows
    assert "--host 127.0.0.1 --port" in panel.command_edit.toPlainText()
    assert w.launch.serve() is win  # already serving this model: brought forward
    pid = panel.server.pid
    panel.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert panel.status_label.text() == "stopped"


def test_serve_on_a_port_in_use_says_so(qtbot, launching) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        win = launching.launch.serve(port=port)
        assert f"port {port} on 127.0.0.1 is in use" in win.panel.status_label.text()
        assert win.panel.server.pid is None


def test_verify_with_llama_fit_params(qtbot, launching) -> None:
    dlg = launching.launch.verify_with_fit_params()
    with qtbot.waitSignal(dlg.process.done, timeout=TIMEOUT * 3) as done:
        pass
    assert done.args[2] == "", done.args[2]
    parts = {(dev, part): (theirs, mine) for dev, part, theirs, mine in dlg.rows}
    assert parts[("Host", "model")][0] == parts[("Host", "model")][1]
    assert parts[("Host", "context")][0] == parts[("Host", "context")][1]
    assert "llama-fit-params" in dlg.command.toPlainText()
    assert "-fit off -fitp on" in dlg.command.toPlainText()


FAKE_TERMINAL = """#!/bin/sh
# a terminal emulator as x-terminal-emulator is called: -e then the command to run
[ "$1" = "-e" ] && shift
printf '%s\\n' "$@" > "{log}.argv"
"$@" > "{log}" 2>&1 < /dev/null
"""


def test_open_in_terminal_runs_the_exported_llama_cli(qtbot, launching, tmp_path: Path,
                                                      monkeypatch) -> None:
    from kvgui.core.commandline.export import llama_cli_args
    from kvgui.core.commandline.shellquote import render

    log = tmp_path / "terminal.log"
    term = tmp_path / "bin" / "x-terminal-emulator"
    term.parent.mkdir()
    term.write_text(FAKE_TERMINAL.format(log=log))
    term.chmod(0o755)
    monkeypatch.setenv("PATH", f"{term.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("TERMINAL", raising=False)
    w = launching
    argv = w.launch.terminal_argv()
    assert argv == llama_cli_args(w.ctl.settings, w.ctl.model_source,
                                  program=str(Path(w.config.llama_cpp_folder) / "llama-cli"))
    pid = w.launch.open_terminal()
    assert pid is not None
    psutil.Process(pid).wait(60)
    sent = (tmp_path / "terminal.log.argv").read_text().splitlines()
    assert sent[:2] == ["sh", "-c"] and sent[2].startswith(render(argv, "posix") + ";")
    out = log.read_text()  # llama-cli itself ran, and exited at the end of its input
    assert "Loading model" in out and "[exited with status 0" in out


def test_the_llama_cpp_folder_is_remembered(qtbot, window, llama_tools) -> None:
    from kvgui.core.config.appconfig import AppConfig

    window.launch.choose_folder(str(llama_tools.bin))
    assert window.config.llama_cpp_folder == str(llama_tools.bin)
    again = AppConfig.from_dict(window.config.to_dict())
    assert again.llama_cpp_folder == str(llama_tools.bin)
    message = window.statusBar().currentMessage()
    assert "llama-server" in message and "llama-fit-params" in message
