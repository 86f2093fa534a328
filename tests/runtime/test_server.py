"""Serve: the real llama-server (built from the bundled llama.cpp) on 127.0.0.1, real models.

Needs the tools (``python -m kvgui.testing.llama_tools build``) and, for the Gemma tests, the
``realmodel`` extra; each test skips with a one-line reason when they are absent. Every test
checks that no process is left behind.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import threading
from pathlib import Path

import psutil
import pytest

from kvgui.core.commandline.export import llama_server_args
from kvgui.core.commandline.llama_params import server_settings
from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.memory.estimate import estimate
from kvgui.core.model.info import load_model
from kvgui.runtime import llama_bin
from kvgui.runtime.llama_log import LOGGED_PRECISION_BYTES, matches_logged
from kvgui.runtime.server import (
    HOST,
    LlamaServer,
    PortInUse,
    ServerLog,
    estimated_devices,
    measured_devices,
    openai_url,
    serve_argv,
    strip_prefix,
)
from kvgui.runtime.server_chat import ServerChat, ServerChatError

pytestmark = [pytest.mark.llama, pytest.mark.usefixtures("no_leftover_children")]

# This machine's CPU has AMX, and llama.cpp's AMX matmul crashes (SIGSEGV) on Q4_K weights
# here, in llama-cpp-python and the tools alike: -nr keeps the weights out of AMX buffers.
NO_REPACK = Settings(repack=False)


@pytest.fixture(scope="module")
def server_tool(llama_tools) -> llama_bin.ToolInfo:
    return llama_bin.probe(llama_tools.server)


@pytest.fixture(scope="module")
def tiny_server(server_tool, tiny_model_path):
    with LlamaServer(server_tool, tiny_model_path, Settings(n_ctx=512, n_threads=1)) as srv:
        yield srv


def test_probe_reads_version_devices_and_flags(server_tool) -> None:
    assert server_tool.name == "llama-server"
    assert server_tool.commit == "0c1e570" and server_tool.version_line.startswith("version:")
    assert server_tool.devices == () and server_tool.backends == ()  # the tools are CPU-only
    assert {"-m", "--ctx-size", "-kvu", "--host", "--port", "-lm", "-nr"} <= server_tool.flags
    assert "CPU only" in server_tool.summary()


def test_the_command_line_is_the_exports_plus_host_and_port(tiny_server) -> None:
    s = tiny_server
    exported = llama_server_args(s.settings, s.model, program=s.tool.path)
    assert s.argv == [*exported, "--host", HOST, "--port", str(s.port)]
    assert psutil.Process(s.pid).cmdline() == s.argv  # what really runs
    assert openai_url(s.port) == f"http://127.0.0.1:{s.port}/v1"


def test_chat_streams_over_http_and_stop_keeps_the_partial_reply(tiny_server) -> None:
    from kvgui.runtime.protocol import Sampling

    chat = ServerChat(tiny_server.url)
    chat.props()
    assert chat.n_ctx == 512
    pieces: list[str] = []
    done = chat.turn("hello", sampling=Sampling(max_tokens=8, seed=1),
                     on_piece=lambda text, n: pieces.append(text))
    assert done["reply"] == "".join(pieces) and done["tokens"] == 8
    assert done["stop_reason"] == "max_tokens" and done["tokens_per_s"] > 0
    assert done["n_past"] == done["prompt_tokens"] + 8 <= 512 and done["ttft_s"] > 0

    streamed: list[str] = []
    stopped = chat.turn("tell me a long story", sampling=Sampling(max_tokens=-1, seed=1),
                        on_piece=lambda text, n: streamed.append(text),
                        should_stop=lambda: len(streamed) >= 3)
    assert stopped["stop_reason"] == "stopped"
    assert stopped["reply"] == "".join(streamed) != ""
    assert chat.conversation.turns[-1] == ("tell me a long story", stopped["reply"])
    # the server is free again at once (the cancelled task released its slot)
    again = chat.turn("short", sampling=Sampling(max_tokens=2, seed=1))
    assert again["tokens"] == 2
    chat.close()


def test_a_proxy_in_the_environment_does_not_take_the_local_chat(tiny_server,
                                                                monkeypatch) -> None:
    """A user behind a proxy (HTTP_PROXY / ALL_PROXY set, NO_PROXY not naming 127.0.0.1):
    httpx's defaults send the loopback chat to the proxy, which cannot reach it."""
    from kvgui.runtime.protocol import Sampling

    with socket.socket() as dead:  # a proxy port that refuses every connection
        dead.bind((HOST, 0))
        proxy = f"http://{HOST}:{dead.getsockname()[1]}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    chat = ServerChat(tiny_server.url)
    assert chat.props()["default_generation_settings"]["n_ctx"] == 512
    assert chat.turn("hi", sampling=Sampling(max_tokens=2, seed=1))["tokens"] == 2
    chat.close()


def test_a_message_longer_than_the_context_drops_old_turns_then_refuses(tiny_server) -> None:
    from kvgui.runtime.protocol import Sampling

    chat = ServerChat(tiny_server.url, n_ctx=512)
    long = "word " * 150
    for _ in range(3):
        last = chat.turn(long, sampling=Sampling(max_tokens=2, seed=1))
    assert last["dropped_turns"] >= 1
    with pytest.raises(ServerChatError, match="does not fit in the context"):
        chat.turn("word " * 700, sampling=Sampling(max_tokens=2))
    chat.close()


def test_measured_memory_per_device_equals_the_estimate(server_tool, real_model) -> None:
    """Gemma-3-270M (iSWA: two KV caches) as llama-server allocates it, from its log."""
    settings = NO_REPACK.replace(n_ctx=4096, type_k="q8_0", type_v="q8_0",
                                 flash_attn=FlashAttn.ON)
    with LlamaServer(server_tool, real_model, settings) as srv:
        measured = srv.measured()
        memory = srv.log.memory()
    # llama-server reserves one output row per slot (llama-cli: a whole ubatch of logits)
    est = estimate(load_model(real_model), server_settings(settings))
    assert not est.errors
    assert est.compute < estimate(load_model(real_model), settings).compute
    expected = estimated_devices(est)
    assert set(measured) == set(expected) == {"CPU"}
    for part in ("weights", "compute", "output"):
        assert matches_logged(expected["CPU"][part], measured["CPU"][part] / 2**20), part
    # two KV buffers (SWA and full layers), each logged to 0.01 MiB
    assert abs(expected["CPU"]["kv"] - measured["CPU"]["kv"]) <= 2 * LOGGED_PRECISION_BYTES
    assert [c.type_k for c in memory.kv_caches] == ["q8_0", "q8_0"]
    assert memory.n_ctx == est.n_ctx


def test_kill_9_mid_reply_is_reported(server_tool, tiny_model_path) -> None:
    """SIGKILL at the first piece. The tiny model writes its whole reply (158 tokens) in a
    few ms, so on a loaded machine the server can finish (and the reply sit complete in the
    socket) before the kill lands: such a try proves nothing and is run again."""
    from kvgui.runtime.protocol import Sampling

    for _attempt in range(4):
        with LlamaServer(server_tool, tiny_model_path, Settings(n_ctx=4096)) as srv:
            chat = ServerChat(srv.url)

            def kill(_text: str, n: int, pid: int = srv.pid) -> None:
                if n == 1:
                    os.kill(pid, signal.SIGKILL)

            try:
                chat.turn("go on", sampling=Sampling(max_tokens=-1, seed=1), on_piece=kill)
            except ServerChatError as e:
                assert e.fatal and "lost llama-server" in str(e)
            else:  # the whole reply arrived before the kill
                chat.close()
                continue
            chat.close()
            srv._proc.wait(5)
            assert srv.returncode == -signal.SIGKILL
            assert srv._died(srv.returncode).args[0].startswith(
                "llama-server was killed by SIGKILL")
            return
    pytest.fail("in 4 tries the whole reply always arrived before the kill")


def test_a_port_in_use_is_refused_before_launch(server_tool, tiny_model_path) -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        srv = LlamaServer(server_tool, tiny_model_path, Settings(n_ctx=256), port=port)
        with pytest.raises(PortInUse, match=f"port {port} on 127.0.0.1 is in use"):
            srv.start()
        assert srv.pid is None


def test_a_server_that_cannot_bind_says_so(server_tool, tiny_model_path) -> None:
    """The port taken between the check and the launch: llama-server's own error is read."""
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen(1)
        srv = LlamaServer(server_tool, tiny_model_path, Settings(n_ctx=256))
        srv.port = busy.getsockname()[1]
        srv.argv = serve_argv(server_tool.path, srv.settings, srv.model, srv.port)
        srv.start()
        with pytest.raises(PortInUse, match="could not listen"):
            srv.wait_ready(timeout=60)
        srv.close()


def test_a_binary_that_is_not_llama_server(llama_tools, tiny_model_path) -> None:
    cli = llama_bin.probe(llama_tools.cli)  # real llama.cpp, but not the server
    srv = LlamaServer(cli, tiny_model_path, Settings(n_ctx=256))
    with pytest.raises(llama_bin.NotLlamaCpp, match="is not llama-server"):
        srv.start()
    with pytest.raises(llama_bin.NotLlamaCpp, match=r"not a llama\.cpp program"):
        llama_bin.probe("/bin/true")


OLD_SERVER = """#!/bin/sh
# answers like a llama-server from before -kvu and --load-mode existed
case "$1" in
  --version) echo "version: 4000 (abc1234)" >&2; echo "built with cc for x86_64" >&2; exit 0;;
  --help) cat <<'EOF'
-h,    --help, --usage                  print usage and exit
--version                               show version and build info
-m,    --model FNAME                    model path
-c,    --ctx-size N                     size of the prompt context
-ngl,  --gpu-layers, --n-gpu-layers N   number of layers to store in VRAM
-np,   --parallel N                     number of parallel sequences to decode
--host HOST                             ip address to listen
--port PORT                             port to listen
EOF
  exit 0;;
esac
echo launched > "$(dirname "$0")/launched"
exit 1
"""


def test_an_older_build_without_a_flag_is_refused_before_launch(tmp_path: Path,
                                                                tiny_model_path) -> None:
    exe = tmp_path / "llama-server"
    exe.write_text(OLD_SERVER)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    tool = llama_bin.probe(exe)
    assert (tool.version, tool.commit) == ("4000", "abc1234")
    srv = LlamaServer(tool, tiny_model_path, Settings(n_ctx=256, kv_unified=True,
                                                      mmap=False))
    with pytest.raises(llama_bin.UnknownFlags) as info:
        srv.start()
    assert info.value.flags == ("-kvu", "-lm")
    assert "version: 4000 (abc1234)" in str(info.value)
    assert not (tmp_path / "launched").exists()  # never started with the model


def test_find_tool_prefers_the_chosen_folder(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "llama.cpp"
    (folder / "build" / "bin").mkdir(parents=True)
    exe = folder / "build" / "bin" / "llama-server"
    exe.write_text(OLD_SERVER)
    exe.chmod(0o755)
    on_path = tmp_path / "path"
    on_path.mkdir()
    (on_path / "llama-server").write_text(OLD_SERVER)
    (on_path / "llama-server").chmod(0o755)
    monkeypatch.setenv("PATH", str(on_path))
    assert llama_bin.find_tool("llama-server", folder) == exe
    assert llama_bin.find_tool("llama-server", None) == on_path / "llama-server"
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(llama_bin.ToolError, match="releases"):
        llama_bin.require_tool("llama-server", None)


def test_log_lines_and_devices() -> None:
    assert strip_prefix("0.01.230.074 I load_tensors:   CPU_Mapped model buffer size =   1 MiB") \
        == "load_tensors:   CPU_Mapped model buffer size =   1 MiB"
    log = ServerLog()
    for line in ("0.0.0.1 I load_tensors: offloaded 0/19 layers to GPU",  # --fit's trial
                 "0.0.0.2 I load_tensors:          CPU model buffer size =     0.00 MiB",
                 "0.0.0.3 I load_tensors: offloaded 19/19 layers to GPU",
                 "0.0.0.4 I load_tensors:        CUDA0 model buffer size =   100.00 MiB",
                 "0.0.0.5 I load_tensors:   CPU_Mapped model buffer size =    10.00 MiB",
                 "0.0.0.6 I llama_context:  CUDA_Host  output buffer size =     1.00 MiB",
                 "0.0.0.7 I llama_kv_cache:      CUDA0 KV buffer size =    12.00 MiB",
                 "0.0.0.8 I sched_reserve:      CUDA0 compute buffer size =    20.00 MiB",
                 "0.0.0.9 I sched_reserve:  CUDA_Host compute buffer size =     2.00 MiB"):
        log.add(line)
    got = measured_devices(log.memory(), ["CUDA0"])
    mib = 2**20
    assert got == {"CUDA0": {"weights": 100 * mib, "kv": 12 * mib, "compute": 20 * mib,
                             "output": 0},
                   "CPU": {"weights": 10 * mib, "kv": 0, "compute": 2 * mib, "output": mib}}
    devs = llama_bin.parse_devices(
        "Available devices:\n  CUDA0: NVIDIA GeForce RTX 4090 (24563 MiB, 23000 MiB free)\n"
        "  Vulkan1: AMD Radeon (8192 MiB, 8000 MiB free)\n")
    assert [(d.name, d.backend, d.total_mib, d.free_mib) for d in devs] == [
        ("CUDA0", "CUDA", 24563, 23000), ("Vulkan1", "Vulkan", 8192, 8000)]
    assert llama_bin.parse_version("version: 6895 (4341dc8bc)\nbuilt with cc")[:2] == (
        "6895", "4341dc8bc")


def test_close_stops_the_process_group(server_tool, tiny_model_path) -> None:
    srv = LlamaServer(server_tool, tiny_model_path, Settings(n_ctx=256))
    with srv:
        pid = srv.pid
        assert os.getpgid(pid) == pid
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert srv.returncode == 0  # SIGTERM: llama-server cleaned up and exited by itself
    assert threading.active_count() < 50
