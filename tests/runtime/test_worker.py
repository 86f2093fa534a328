"""The llama.cpp worker, driven over its protocol with real llama.cpp and the tiny model."""

from __future__ import annotations

import json
import os
import time

import pytest

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.memory.estimate import estimate
from kvgui.core.model.info import load_model
from kvgui.runtime import worker
from kvgui.runtime.client import WorkerClient, WorkerError, measured_memory
from kvgui.runtime.llama_log import matches_logged, parse_llama_log
from kvgui.runtime.protocol import (
    EVENT_TYPES,
    ProtocolError,
    Sampling,
    decode,
    encode,
    message,
)

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def tiny(tiny_model_path) -> str:
    return str(tiny_model_path)


@pytest.fixture(scope="module")
def loaded(tiny: str):
    """One worker shared by the chat tests (each test starts a new conversation)."""
    client = WorkerClient()
    client.start()
    client.load(tiny, Settings(n_ctx=512))
    yield client
    client.close()


# -- protocol -------------------------------------------------------------------------------

def test_protocol_round_trip_and_errors() -> None:
    msg = message("token", text="héllo\n{")
    line = encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1 and line.isascii()
    assert decode(line) == msg
    for bad in (b"", b"not json", b"[1, 2]", b'{"no_type": 1}'):
        with pytest.raises(ProtocolError):
            decode(bad)
    with pytest.raises(ProtocolError):
        message("teleport")


def test_sampling_defaults_validation_and_coercion() -> None:
    s = Sampling()
    assert (s.temperature, s.top_p, s.top_k, s.min_p) == (0.8, 0.95, 40, 0.05)
    assert Sampling.from_dict(s.to_dict()) == s
    got = Sampling.from_dict({"temperature": "0.5", "top_k": 3.0, "junk": 1})
    assert got.temperature == 0.5 and got.top_k == 3 and isinstance(got.top_k, int)
    for bad in ({"max_tokens": 0}, {"top_p": 1.5}, {"temperature": -1}, {"top_k": -2}):
        with pytest.raises(ValueError):
            Sampling(**bad)


# -- loading --------------------------------------------------------------------------------

@pytest.mark.parametrize(("n_ctx", "type_k", "type_v", "fa"), [
    (512, "f16", "f16", "auto"),
    (1000, "q8_0", "q8_0", "on"),
    (300, "q4_0", "f16", "off"),
    (700, "q5_1", "iq4_nl", "on"),
    (256, "bf16", "f32", "off"),
])
def test_measured_kv_equals_estimate(tiny: str, n_ctx: int, type_k: str, type_v: str,
                                     fa: str) -> None:
    settings = Settings(n_ctx=n_ctx, type_k=type_k, type_v=type_v, flash_attn=FlashAttn(fa))
    est = estimate(load_model(tiny), settings)
    assert not est.errors
    with WorkerClient() as client:
        loaded = client.load(tiny, settings)
    mem = parse_llama_log(loaded["log"])
    assert mem.n_ctx == est.n_ctx == loaded["n_ctx"]
    assert mem.flash_attn == est.flash_attn
    assert [c.type_k for c in mem.kv_caches] == [type_k]
    assert matches_logged(est.kv_k, mem.kv_caches[0].k_mib)
    assert matches_logged(est.kv_v, mem.kv_caches[0].v_mib)
    # and to the byte, from llama.cpp's own memory breakdown of the live context
    measured = measured_memory(loaded)
    assert loaded["exact"], "the worker could not read llama.cpp's memory breakdown"
    assert (measured["kv"], measured["weights"], measured["compute"]) == (
        est.kv, est.weights, est.compute)


def test_parallel_batch_and_unified_reach_the_context(tiny: str) -> None:
    settings = Settings(n_ctx=1024, n_parallel=2, n_batch=256, n_ubatch=128, kv_unified=False,
                        flash_attn=FlashAttn.ON)
    with WorkerClient() as client:
        loaded = client.load(tiny, settings)
    mem = parse_llama_log(loaded["log"])
    assert (mem.n_seq_max, mem.n_batch, mem.n_ubatch, mem.kv_unified) == (2, 256, 128, False)
    assert loaded["n_seq_max"] == 2 and loaded["n_ctx_seq"] == 512
    assert mem.flash_attn_type == "enabled"
    assert mem.kv_caches[0].n_stream == 2


def test_progress_then_loaded(tiny: str) -> None:
    kinds: list[str] = []
    with WorkerClient(on_event=lambda m: kinds.append(m["type"])) as client:
        client.load(tiny, Settings(n_ctx=256))
    assert set(kinds) <= EVENT_TYPES
    assert kinds[0] == "started" and kinds[-1] == "loaded"
    assert kinds.index("progress") < kinds.index("loaded")
    assert "log" in kinds


def test_not_a_model_fails_with_llama_cpp_reason(tmp_path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(200))
    with WorkerClient() as client:
        with pytest.raises(WorkerError) as info:
            client.load(str(bad), Settings(n_ctx=256))
        assert info.value.fatal
        assert "gguf" in str(info.value).lower()
        assert not client.running


# -- chat -----------------------------------------------------------------------------------

def test_reply_streams_counts_and_repeats_with_a_seed(loaded: WorkerClient) -> None:
    loaded.reset()
    pieces: list[str] = []
    sampling = Sampling(max_tokens=12, seed=7)
    done = loaded.chat("hello world", sampling=sampling, on_token=pieces.append)
    assert done["reply"] == "".join(pieces) and done["reply"]
    assert done["stop_reason"] == "max_tokens" and done["tokens"] >= 12
    assert done["n_past"] >= done["prompt_tokens"] > 5
    assert done["n_ctx"] == 512
    assert done["ttft_s"] > 0 and done["tokens_per_s"] > 0 and done["prompt_tokens_per_s"] > 0
    second = loaded.chat("and again", sampling=sampling)
    assert second["prompt_tokens"] > done["n_past"]  # the history is part of the prompt
    loaded.reset()
    assert loaded.chat("hello world", sampling=sampling)["reply"] == done["reply"]


def test_stop_interrupts_and_keeps_the_model(loaded: WorkerClient) -> None:
    loaded.reset()
    pid = loaded.pid
    loaded.send("chat", text="tell me everything", system="be long",
                sampling=Sampling(max_tokens=-1, seed=1).to_dict())
    streamed: list[str] = []
    while True:
        msg = loaded.next_event(timeout=20)
        if msg["type"] == "token":
            streamed.append(msg["text"])
            if len(streamed) == 1:
                loaded.stop()
        if msg["type"] == "finished":
            break
    assert msg["stop_reason"] == "stopped"
    assert msg["tokens"] < 200  # unlimited otherwise: it runs to the end of the context
    # the partial reply is kept, as streamed (llama-cpp-python itself returns "" here)
    assert msg["reply"] == "".join(streamed) != ""
    assert loaded.pid == pid and loaded.running
    after = loaded.chat("short", sampling=Sampling(max_tokens=3, seed=1))
    assert after["stop_reason"] in ("max_tokens", "eos")
    loaded.stop()  # idle: a no-op that must not stop the next reply
    nxt = loaded.chat("next", sampling=Sampling(max_tokens=3, seed=1))
    assert nxt["stop_reason"] in ("max_tokens", "eos")


def test_context_full_stops_then_drops_oldest_turns(loaded: WorkerClient) -> None:
    long = "word " * 200
    loaded.reset()
    first = loaded.chat(long, sampling=Sampling(max_tokens=4, seed=1))
    assert first["dropped_turns"] == 0
    second = loaded.chat(long, sampling=Sampling(max_tokens=4, seed=1))
    assert second["dropped_turns"] == 0 and second["prompt_tokens"] > first["n_past"]
    third = loaded.chat(long, sampling=Sampling(max_tokens=4, seed=1))
    assert third["dropped_turns"] >= 1  # three long turns do not fit in 512 tokens
    assert third["prompt_tokens"] < second["prompt_tokens"] + 200

    # To the end of the context whatever the last tokens are: llama-cpp-python skips its own
    # limit while a reply ends inside a UTF-8 sequence, and then fails to decode past n_ctx.
    for seed in range(4):
        loaded.reset()
        full = loaded.chat("word " * 440, sampling=Sampling(max_tokens=-1, seed=seed))
        assert full["stop_reason"] == "context"
        assert full["n_ctx"] - 2 <= full["n_past"] <= full["n_ctx"]
    with pytest.raises(WorkerError) as info:
        loaded.chat("word " * 600, sampling=Sampling(max_tokens=4))
    assert not info.value.fatal and "does not fit in the context" in str(info.value)
    assert loaded.chat("still here", sampling=Sampling(max_tokens=2))["tokens"] >= 1


def test_bad_request_line_is_reported_not_fatal(loaded: WorkerClient) -> None:
    assert loaded._proc is not None and loaded._proc.stdin is not None
    loaded._proc.stdin.write(b"this is not json\n")
    loaded._proc.stdin.flush()
    msg = loaded.next_event(timeout=10)
    while msg["type"] == "log":
        msg = loaded.next_event(timeout=10)
    assert msg["type"] == "failed" and msg["stage"] == "request" and not msg["fatal"]
    loaded.send("chat", text="x", sampling={"max_tokens": 0})
    with pytest.raises(WorkerError, match="invalid sampling"):
        loaded._expect("finished", 10)
    assert json.loads(json.dumps(loaded.chat("ok", sampling=Sampling(max_tokens=2))))


def test_load_failures_are_named() -> None:
    oom = worker.load_failure("Failed to create llama_context", [
        "ggml_backend_cpu_buffer_type_alloc_buffer: failed to allocate buffer of size 5120000000",
        "llama_init_from_model: failed to initialize the context"])
    assert oom.startswith("out of memory:") and "lower -c" in oom
    assert worker.load_failure("std::bad_alloc", []).startswith("out of memory:")
    bad = worker.load_failure("Failed to load model from file: x.gguf",
                              ["gguf_init_from_file_impl: invalid magic characters: 'abcd'"])
    assert bad.startswith("not a GGUF model")
    assert worker.load_failure("boom", ["all fine"]) == "llama.cpp could not load the model: boom"


# -- GGUFs without a chat template ------------------------------------------------------------

def test_a_gguf_without_a_template_is_told_and_offered_its_architecture_format(
        tmp_path) -> None:
    """llama-cpp-python falls back to llama-2's format for any template-less GGUF (a Gemma
    base model chatted with in llama-2's format answers mostly nothing): the worker says the
    file has no template, which format the architecture uses, and takes the choice."""
    from kvgui.testing.tiny_model import write_tiny_model

    path = write_tiny_model(tmp_path / "base-gemma2.gguf", arch="gemma2", n_layer=4, n_swa=128,
                            chat_template=None)
    with WorkerClient() as client:
        loaded = client.load(str(path), Settings(n_ctx=512))
        assert loaded["chat_template"] is False
        assert loaded["architecture"] == "gemma2"
        assert loaded["chat_format"] == "llama-2"  # what llama-cpp-python would use silently
        assert loaded["usual_format"] == "gemma" and loaded["formats"][0] == "gemma"
        client.send("chat", text="hi", sampling=Sampling(max_tokens=2, seed=1).to_dict(),
                    chat_format="gemma")
        chat = client._expect("finished", 30)
        assert chat["chat_format"] == "gemma" and chat["mode"] == "chat"
        # completion mode: no template; the model continues the text, turn after turn
        client.send("chat", text="Once upon a time", mode="completion",
                    sampling=Sampling(max_tokens=3, seed=1).to_dict())
        first = client._expect("finished", 30)
        client.send("chat", text=" and then", mode="completion",
                    sampling=Sampling(max_tokens=3, seed=1).to_dict())
        second = client._expect("finished", 30)
    assert first["mode"] == "completion" and first["dropped_turns"] == 0
    assert first["prompt_tokens"] < chat["prompt_tokens"] + 10  # no template around the text
    assert second["prompt_tokens"] > first["prompt_tokens"]  # the text so far, continued


def test_token_events_carry_the_context_used(loaded: WorkerClient) -> None:
    loaded.reset()
    loaded.send("chat", text="count", sampling=Sampling(max_tokens=12, seed=2).to_dict())
    pasts = []
    while (msg := loaded.next_event(timeout=20))["type"] != "finished":
        if msg["type"] == "token":
            pasts.append(msg["n_past"])
    assert pasts and pasts == sorted(pasts) and 0 < pasts[-1] <= msg["n_past"]


# -- hostile chat templates (issue 18, case 5) ----------------------------------------------

def test_a_template_that_runs_forever_is_stopped_and_the_model_stays(tmp_path) -> None:
    """Nested range(100000) loops ran past 120 s with Stop ignored: now Stop ends the render
    at once with a message that it is the template's, and the next turn still works."""
    from kvgui.testing.tiny_model import write_tiny_model

    spin = ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
            "{% for m in messages %}{{ m.content }}{% endfor %}")
    path = write_tiny_model(tmp_path / "spin.gguf", chat_template=spin)
    with WorkerClient() as client:
        loaded = client.load(str(path), Settings(n_ctx=512))
        assert loaded["template_error"] is None
        client.send("chat", text="hi", sampling=Sampling(max_tokens=2, seed=1).to_dict())
        time.sleep(0.5)
        t0 = time.monotonic()
        client.send("stop")
        failed = client._expect("failed", 30)
        assert time.monotonic() - t0 < 5
        assert failed["stage"] == "template" and "was stopped" in failed["message"]
        client.send("chat", text="hi", mode="completion",
                    sampling=Sampling(max_tokens=2, seed=1).to_dict())
        assert client._expect("finished", 30)["mode"] == "completion"


def test_a_template_with_a_syntax_error_still_loads_and_says_where(tmp_path) -> None:
    from kvgui.testing.tiny_model import write_tiny_model

    path = write_tiny_model(tmp_path / "broken.gguf",
                            chat_template="{% for m in messages %}\n{{ m.content }\n{% endfor %}")
    with WorkerClient() as client:
        loaded = client.load(str(path), Settings(n_ctx=512))
        assert "syntax error (line 2" in loaded["template_error"]
        assert loaded["chat_format"] != "chat_template.default"  # the arch's format instead
        client.send("chat", text="hi", sampling=Sampling(max_tokens=2, seed=1).to_dict())
        assert client._expect("finished", 30)["chat_format"] == loaded["chat_format"]
        client.send("chat", text="hi", chat_format="chat_template.default",
                    sampling=Sampling(max_tokens=2, seed=1).to_dict())
        failed = client._expect("failed", 30)
        assert failed["stage"] == "template" and "line 2" in failed["message"]


def test_a_stopped_worker_is_ended_instead_of_waited_for(tiny: str) -> None:
    """A SIGSTOPped worker made the CLI wait with no timeout (issue 18, case 11)."""
    import signal

    from kvgui.runtime.childproc import StoppedWatch

    client = WorkerClient()
    client._stopped = StoppedWatch(0.5)
    with client:
        client.load(tiny, Settings(n_ctx=256))
        assert client.pid is not None
        os.kill(client.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(WorkerError, match="was stopped"):
            client.chat("hi", sampling=Sampling(max_tokens=4, seed=1))
        assert time.monotonic() - t0 < 5


def test_tensor_overrides_reach_llama_cpp(tiny: str) -> None:
    """-ot reaches llama_model_params.tensor_buft_overrides: llama.cpp warns about CPU
    overrides with mmap, fails the load on a pattern std::regex rejects (as the estimate's
    OT_BAD_REGEX says), and an RPC server is refused by a build without RPC."""
    with WorkerClient() as client:
        loaded = client.load(tiny, Settings(n_ctx=256, override_tensor=(("ffn_", "CPU"),)))
    assert "tensor overrides to CPU are used with mmap enabled" in loaded["log"]
    with WorkerClient() as client, pytest.raises(WorkerError):
        client.load(tiny, Settings(n_ctx=256, override_tensor=(("(?i)ffn", "CPU"),)))
    import llama_cpp

    if not llama_cpp.llama_supports_rpc():
        with WorkerClient() as client, pytest.raises(WorkerError, match="without RPC support"):
            client.load(tiny, Settings(n_ctx=256, rpc_servers=("127.0.0.1:1",)))
