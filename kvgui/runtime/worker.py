"""The llama.cpp worker process: ``python -m kvgui.runtime.worker``.

It loads one model with exactly the kvgui Settings and chats over the JSON-lines protocol
of ``kvgui.runtime.protocol`` (read that docstring for the messages). It runs in its own
process because llama.cpp aborts the process on a failed GGML_ASSERT and an out-of-memory
load can kill it: the caller only sees the pipe close and reports the last log lines.

Every Settings field is passed explicitly, from the one translation
(``kvgui.core.commandline.llama_params``): ``Llama()`` gets the keywords it takes, and since it
cannot say flash-attention "auto", n_seq_max, kv_unified, YaRN's "from the model" or the
load-progress callback, every translated field is also written on the params structs just
before llama.cpp sees them (``_explicit_params``).
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import io
import os
import queue
import random
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from kvgui.core.commandline.llama_params import llama_cpp_python_kwargs, llama_params
from kvgui.core.config.settings import Settings
from kvgui.core.model.chat_formats import format_choices, usual_format
from kvgui.runtime import chat_template
from kvgui.runtime.llama_structs import pointer_model_fields, scalar_model_fields, set_fields
from kvgui.runtime.protocol import (
    PROTOCOL_VERSION,
    Message,
    ProtocolError,
    Sampling,
    decode,
    encode,
    message,
)

_KEEPALIVE: list[Any] = []
MODES = ("chat", "completion")

# Token events carry every piece produced within this interval: a fast model (thousands of
# tokens/s on a small model) would otherwise spend its time on JSON and pipe wake-ups, and a
# window cannot show more than a frame's worth anyway. The first piece is never held back.
TOKEN_EVENT_INTERVAL_S = 0.02

# ggml.h enum ggml_log_level (llama-cpp-python's _logger.py comments predate DEBUG = 1)
GGML_LOG_DEBUG, GGML_LOG_INFO, GGML_LOG_CONT = 1, 2, 5


class Channel:
    """The event stream: a private copy of fd 1; fd 1 itself is pointed at stderr.

    llama.cpp and Python's print may write to stdout at any time; with fd 1 redirected
    they cannot interleave garbage into the JSON lines.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    @classmethod
    def take_stdout(cls) -> Channel:
        sys.stdout.flush()
        private = os.dup(1)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        return cls(os.fdopen(private, "wb", buffering=0))

    def send(self, kind: str, **payload: Any) -> None:
        data = encode(message(kind, **payload))
        with self._lock:
            try:
                self._stream.write(data)
            except (BrokenPipeError, OSError):
                os._exit(0)  # the caller is gone: nobody left to serve


class LogCapture:
    """llama_log_set callback: forwards each complete log line and records the load log.

    Debug lines (one per tensor, thousands for a large model) are neither forwarded nor
    recorded: the figures kvgui reads are logged at INFO.
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._partial = ""
        self._level = GGML_LOG_INFO
        self.recording = True
        self.lines: list[str] = []
        import llama_cpp

        @llama_cpp.llama_log_callback
        def _callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
            self.feed(level, text.decode("utf-8", "replace"))

        self._callback = _callback  # keep the ctypes thunk alive for the process lifetime
        llama_cpp.llama_log_set(self._callback, ctypes.c_void_p(0))

    def feed(self, level: int, text: str) -> None:
        if level != GGML_LOG_CONT:
            self._level = level
        self._partial += text
        while "\n" in self._partial:
            line, self._partial = self._partial.split("\n", 1)
            if self._level <= GGML_LOG_DEBUG:
                continue
            if self.recording:
                self.lines.append(line)
            self._channel.send("log", level=self._level, text=line)

    def tail(self, n: int = 8) -> str:
        return "\n".join(line for line in self.lines[-n:] if line.strip())

    def take_text(self) -> str:
        """The recorded log so far (one line per entry) and stop recording."""
        self.recording = False
        text = "\n".join(self.lines)
        self.lines = []
        return text + ("\n" if text else "")


class Requests:
    """Reads requests on a thread so Stop arrives while the main thread generates.

    ``stops`` counts stop (and shutdown) requests; a chat request remembers the count at
    arrival, so a Stop sent right after a chat always reaches that chat and never a later one.
    """

    def __init__(self, stream: BinaryIO, channel: Channel) -> None:
        self._stream = stream
        self._channel = channel
        self.queue: queue.Queue[Message] = queue.Queue()
        self.stops = 0
        self.shutdown = False
        self._thread = threading.Thread(target=self._run, name="kvgui-requests", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        for line in iter(self._stream.readline, b""):
            if not line.strip():
                continue
            try:
                msg = decode(line)
            except ProtocolError as exc:
                self._channel.send("failed", message=str(exc), fatal=False, stage="request")
                continue
            kind = msg["type"]
            if kind == "stop":
                self.stops += 1
                continue
            if kind == "shutdown":
                self.shutdown = True
                self.stops += 1
            msg["_stops"] = self.stops
            self.queue.put(msg)
        # stdin closed: finish what was asked, then exit. A caller that died is noticed
        # sooner: the next event write fails (EPIPE) or the parent watch fires.
        self.queue.put({"type": "shutdown", "_stops": self.stops})


def _watch_parent() -> None:
    """Exit when the parent dies even if stdin stays open (e.g. inherited by a grandchild)."""
    parent = os.getppid()

    def run() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=run, name="kvgui-parent-watch", daemon=True).start()


def llama_kwargs(model_path: str, settings: Settings) -> dict[str, Any]:
    """``Llama()`` constructor arguments for the Settings (what the constructor can take)."""
    return {"model_path": model_path, **llama_cpp_python_kwargs(llama_params(settings)),
            "verbose": True}  # False would point fds 1/2 at /dev/null during the load


def explicit_fields(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The struct fields written over what ``Llama()`` made of its keywords: all of them but
    the pointers (tensor_split comes from the constructor's own array; the tensor overrides'
    array is made in the child, ``load``)."""
    params = llama_params(settings)
    return scalar_model_fields(params), dict(params.context)


@contextlib.contextmanager
def _explicit_params(model_set: dict[str, Any], context_set: dict[str, Any]) -> Iterator[None]:
    """While a Llama is constructed, write these fields into its params structs."""
    import llama_cpp._internals as internals

    base_model, base_context = internals.LlamaModel, internals.LlamaContext

    class _Model(base_model):  # type: ignore[misc,valid-type]
        def __init__(self, *, path_model: str, params: Any, verbose: bool = True) -> None:
            set_fields(params, model_set)
            super().__init__(path_model=path_model, params=params, verbose=verbose)

    class _Context(base_context):  # type: ignore[misc,valid-type]
        def __init__(self, *, model: Any, params: Any, verbose: bool = True) -> None:
            set_fields(params, context_set)
            super().__init__(model=model, params=params, verbose=verbose)

    setattr(internals, "LlamaModel", _Model)  # noqa: B010 - the class attribute, on purpose
    setattr(internals, "LlamaContext", _Context)  # noqa: B010
    try:
        yield
    finally:
        setattr(internals, "LlamaModel", base_model)  # noqa: B010
        setattr(internals, "LlamaContext", base_context)  # noqa: B010


def load(model_path: str, settings: Settings, channel: Channel, requests: Requests) -> Any:
    """Construct the Llama with progress events; raises what llama-cpp-python raises."""
    import llama_cpp

    last = [-1.0]

    @llama_cpp.llama_progress_callback
    def on_progress(fraction: float, user_data: ctypes.c_void_p) -> bool:
        if fraction - last[0] >= 0.01 or fraction >= 1.0:
            last[0] = fraction
            channel.send("progress", fraction=round(float(fraction), 4))
        return not requests.shutdown  # False aborts the load

    chat_template.install()  # the GGUF's template, rendered under a budget (see the module)
    model_set, context_set = explicit_fields(settings)
    model_set["progress_callback"] = on_progress
    # the RPC servers registered and the -ot / --n-cpu-moe array made (Llama() takes
    # neither); tensor_split's array is the constructor's own, from its keyword
    pointers = pointer_model_fields(llama_cpp.llama_cpp, llama_params(settings), _KEEPALIVE)
    pointers.pop("tensor_split", None)
    model_set.update(pointers)
    # verbose=True prints the metadata and chat template through Python's sys.stderr: drop
    # that, so stderr carries only what matters when the process dies (ggml's abort line).
    with _explicit_params(model_set, context_set), \
            contextlib.redirect_stderr(io.StringIO()):
        llm = llama_cpp.Llama(**llama_kwargs(model_path, settings))
    llm.verbose = False  # no per-reply prints on stderr; timings come from llama_perf_context
    _KEEPALIVE.append(on_progress)  # llama.cpp holds the pointer: never garbage-collect it
    return llm


@dataclass
class TurnStats:
    """Filled by the instrumented ``generate``: exact token counts and sample times."""

    prompt_tokens: int = 0
    sampled: int = 0
    t_first: float | None = None
    t_last: float | None = None
    stopped: bool = False
    context_full: bool = False
    streamed: list[str] = field(default_factory=list)  # the text sent as token events

    @property
    def ended_early(self) -> bool:
        """The reply was cut by the worker (Stop, the end of the context): llama-cpp-python
        then returns an empty or partial completion, so the streamed text is the reply."""
        return self.stopped or self.context_full


@dataclass
class Conversation:
    system: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)
    mode: str = "chat"  # "chat" (the chat template) or "completion" (the model continues)

    def prompt(self, user: str) -> str:
        """Completion mode: the text so far, continued by the new text."""
        return "".join(q + a for q, a in self.turns) + user

    def messages(self, user: str) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        if self.system:
            out.append({"role": "system", "content": self.system})
        for question, answer in self.turns:
            out.append({"role": "user", "content": question})
            out.append({"role": "assistant", "content": answer})
        out.append({"role": "user", "content": user})
        return out


class Chat:
    """One loaded model and its conversation."""

    def __init__(self, llm: Any, channel: Channel, requests: Requests) -> None:
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.llm = llm
        self.channel = channel
        self.requests = requests
        self.conversation = Conversation()
        self.n_ctx = int(llama_cpp.llama_n_ctx_seq(llm.ctx))
        # The chat is one sequence: with -np N (no unified KV) it owns n_ctx / N cells, not
        # the n_ctx llama-cpp-python checks prompts and max_tokens against.
        llm._n_ctx = min(int(llm._n_ctx), self.n_ctx)
        self._stats = TurnStats()
        self._stop_mark = 0
        self._wrap_generate()

    def _wrap_generate(self) -> None:
        """Stream, count and time each token, and honour Stop, inside llama-cpp-python's loop.

        The reply is asked for with stream=False and streamed from here: llama-cpp-python's
        own streaming re-decodes all pending tokens after every token while they are not
        valid UTF-8, which stalls for seconds on byte-level output; here an incremental
        decoder makes every token O(1). The text equals the final reply's (same bytes,
        invalid sequences ignored), which stays the authority (e.g. after a stop string).
        """
        original = self.llm.generate
        vocab = self.llm._model.vocab
        is_eog = self._llama_cpp.llama_vocab_is_eog
        to_piece = self._llama_cpp.llama_token_to_piece
        buf = ctypes.create_string_buffer(256)
        pieces: dict[int, bytes | None] = {}  # token -> its bytes, None for end-of-generation

        def piece(token: int) -> bytes | None:
            """Cached: two ctypes calls per token would cost a few % on a small model."""
            if token in pieces:
                return pieces[token]
            if is_eog(vocab, token):
                pieces[token] = None
                return None
            n = to_piece(vocab, token, buf, len(buf), 0, False)
            if n < 0:  # the piece is longer than the buffer: -n bytes
                big = ctypes.create_string_buffer(-n)
                n = to_piece(vocab, token, big, len(big), 0, False)
                data = big.raw[:n]
            else:
                data = buf.raw[:n]
            pieces[token] = data
            return data

        def generate(tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            stats = self._stats
            stats.prompt_tokens = len(tokens)
            decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
            pending: list[str] = []
            sent_at = 0.0  # the first piece goes out at once: it is the time to first token
            streamed = stats.streamed
            try:
                for token in original(tokens, *args, **kwargs):
                    now = time.perf_counter()
                    if stats.t_first is None:
                        stats.t_first = now
                    stats.t_last = now
                    stats.sampled += 1
                    if self.requests.stops > self._stop_mark:
                        stats.stopped = True
                        return
                    data = piece(token)
                    if data:
                        text = decoder.decode(data)
                        if text:
                            pending.append(text)
                            streamed.append(text)
                            if now - sent_at >= TOKEN_EVENT_INTERVAL_S:
                                self.channel.send("token", text="".join(pending),
                                                  n_past=int(self.llm.n_tokens))
                                pending.clear()
                                sent_at = now
                    yield token
                    # llama-cpp-python evaluates the token just yielded before sampling the
                    # next; with the context full that decode fails ("llama_decode returned
                    # 1"). Its own max_tokens check is skipped while the reply ends inside a
                    # UTF-8 sequence, so the end of the context is enforced here.
                    if self.llm.n_tokens >= self.n_ctx:
                        stats.context_full = True
                        return
            finally:
                tail = decoder.decode(b"", final=True)
                pending.append(tail)
                streamed.append(tail)
                if any(pending):
                    self.channel.send("token", text="".join(pending),
                                      n_past=int(self.llm.n_tokens))

        self.llm.generate = generate

    def reset(self, system: str | None) -> None:
        self.conversation = Conversation(system=system or None)
        self.llm.reset()

    def turn(self, request: Message) -> None:
        t0 = time.perf_counter()
        self._stop_mark = int(request.get("_stops", self.requests.stops))
        try:
            sampling = Sampling.from_dict(request.get("sampling"))
        except (TypeError, ValueError) as exc:
            self.channel.send("failed", message=f"invalid sampling: {exc}", fatal=False,
                              stage="request")
            return
        mode = str(request.get("mode") or "chat")
        if mode not in MODES:
            self.channel.send("failed", message=f"unknown mode {mode!r} (chat or completion)",
                              fatal=False, stage="request")
            return
        if mode != self.conversation.mode:  # one history per mode
            self.reset(self.conversation.system)
            self.conversation.mode = mode
        if fmt := request.get("chat_format"):
            self.llm.chat_format = str(fmt)  # the template picker; the GGUF's otherwise
        if request.get("system") is not None:
            self.conversation.system = str(request["system"]) or None
        text = str(request.get("text", ""))
        dropped = 0
        stops = self._stop_mark
        render_budget = chat_template.RenderBudget(
            should_stop=lambda: self.requests.stops > stops)
        while True:
            self._stats = TurnStats()
            self._llama_cpp.llama_perf_context_reset(self.llm.ctx)
            try:
                with chat_template.budget(render_budget):
                    reply, finish = self._stream(text, sampling)
                break
            except chat_template.TemplateFailure as exc:
                self.llm.reset()
                self.channel.send("failed", message=str(exc), fatal=False, stage="template")
                return
            except ValueError as exc:
                if not str(exc).startswith("Requested tokens"):
                    self._turn_failed(exc)
                    return
                if not self.conversation.turns:
                    self.channel.send(
                        "failed", fatal=False, stage="chat",
                        message=f"the message does not fit in the context ({exc}); raise -c "
                        "or shorten the message or system prompt")
                    return
                self.conversation.turns.pop(0)  # context full: drop the oldest turn
                dropped += 1
            except Exception as exc:  # e.g. llama_decode failing: the model stays loaded
                self._turn_failed(exc)
                return
        self.conversation.turns.append((text, reply))
        self.channel.send("finished", **self._summary(reply, finish, sampling, t0, dropped))

    def _turn_failed(self, exc: Exception) -> None:
        self.llm.reset()  # the KV cache may hold half a batch: the next turn starts clean
        self.channel.send("failed", message=f"llama.cpp could not answer: {exc}", fatal=False,
                          stage="chat")

    def _stream(self, text: str, sampling: Sampling) -> tuple[str, str | None]:
        """One reply through the chat template (or, in completion mode, a continuation of
        the text); tokens are sent by ``generate``."""
        seed = sampling.seed if sampling.seed >= 0 else random.randrange(2**31)
        common = {
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "top_k": sampling.top_k,
            "min_p": sampling.min_p,
            "max_tokens": sampling.max_tokens if sampling.max_tokens > 0 else None,
            "seed": seed,
            "repeat_penalty": 1.0,  # llama-cli's default; the chat handler's own is 1.1
        }
        if self.conversation.mode == "completion":
            done = self.llm.create_completion(prompt=self.conversation.prompt(text),
                                              stream=False, **common)
            choice = done["choices"][0]
            content = str(choice.get("text") or "")
        else:
            result = self.llm.create_chat_completion(
                messages=self.conversation.messages(text), stream=False, **common)
            choice = result["choices"][0]
            content = str(choice["message"].get("content") or "")
        if self._stats.ended_early:
            return "".join(self._stats.streamed), choice.get("finish_reason")
        return content, choice.get("finish_reason")

    def _summary(self, reply: str, finish: str | None, sampling: Sampling, t0: float,
                 dropped: int) -> dict[str, Any]:
        stats = self._stats
        perf = self._llama_cpp.llama_perf_context(self.llm.ctx)
        n_past = int(self.llm.n_tokens)
        if stats.stopped:
            reason = "stopped"
        elif stats.context_full:
            reason = "context"
        elif finish == "stop":
            reason = "eos"
        elif sampling.max_tokens > 0 and stats.sampled >= sampling.max_tokens:
            reason = "max_tokens"
        else:
            reason = "context"
        tokens = stats.sampled - (1 if reason in ("eos", "stopped") else 0)
        gen_s = (stats.t_last - stats.t_first) if stats.t_first and stats.t_last else 0.0
        return {
            "reply": reply,
            "tokens": max(tokens, 0),
            "prompt_tokens": stats.prompt_tokens,
            "n_past": n_past,
            "n_ctx": self.n_ctx,
            "ttft_s": (stats.t_first - t0) if stats.t_first else None,
            "tokens_per_s": (stats.sampled - 1) / gen_s if gen_s > 0 else None,
            "prompt_tokens_per_s": (perf.n_p_eval / perf.t_p_eval_ms * 1000.0
                                    if perf.t_p_eval_ms > 0 else None),
            "stop_reason": reason,
            "dropped_turns": dropped,
            "mode": self.conversation.mode,
            "chat_format": str(self.llm.chat_format),
        }


_OOM_MARKS = ("failed to allocate", "insufficient memory", "out of memory", "bad_alloc",
              "unable to allocate")


def load_failure(error: str, log_lines: list[str]) -> str:
    """One line saying why the load failed: out of memory, not a model, or llama.cpp's words."""
    recent = [line.lower() for line in log_lines[-30:]] + [error.lower()]
    if any(mark in line for line in recent for mark in _OOM_MARKS):
        return ("out of memory: llama.cpp could not allocate its buffers - lower -c, use a "
                f"smaller cache type or fewer GPU layers ({error})")
    if "does not exist" in error:
        return f"no such model file ({error})"
    if any("gguf_init_from_file" in line or "invalid magic" in line for line in recent):
        return f"not a GGUF model llama.cpp can read ({error})"
    return f"llama.cpp could not load the model: {error}"


def _template_info(llm: Any) -> dict[str, Any]:
    """Whether the GGUF brings a chat template, and the formats to offer (its arch's first)."""
    meta = dict(getattr(llm, "metadata", {}) or {})
    arch = meta.get("general.architecture")
    pre = meta.get("tokenizer.ggml.pre")
    source = meta.get("tokenizer.chat_template")
    error = chat_template.Template(str(source)).error if source else None
    formats = format_choices(arch, pre)
    if error is not None and str(llm.chat_format) == "chat_template.default":
        # a template that cannot compile would fail every turn: chat in the architecture's
        # usual format instead, and say so (the window shows the error; Template picks)
        llm.chat_format = formats[0] if formats else "llama-2"
    return {"chat_template": bool(source),
            "template_error": None if error is None else str(error),
            "architecture": arch,
            "usual_format": usual_format(arch, pre),
            "formats": formats}


def _exact_buffers(llm: Any) -> list[dict[str, Any]] | None:
    """llama.cpp's own memory breakdown in bytes (as the dry run reads it), or None."""
    try:
        from llama_cpp import llama_cpp as lc

        from kvgui.runtime.dryrun import _load_ggml, _memory_breakdown

        return _memory_breakdown(lc, _load_ggml(lc), llm.ctx)
    except Exception:  # another C++ ABI or build: the logged figures still stand
        return None


def _serve(channel: Channel, requests: Requests, log: LogCapture) -> int:
    first = requests.queue.get()
    if first["type"] != "load":
        channel.send("failed", message=f"expected a load request, got {first['type']!r}",
                     fatal=True, stage="request")
        return 2
    model_path = str(first.get("model", ""))
    try:
        settings = Settings.from_dict(dict(first.get("settings") or {}))
    except (TypeError, ValueError) as exc:
        channel.send("failed", message=f"invalid settings: {exc}", fatal=True, stage="load")
        return 2
    t0 = time.perf_counter()
    try:
        llm = load(model_path, settings, channel, requests)
    except Exception as exc:  # llama-cpp-python raises ValueError/RuntimeError on NULL
        if requests.shutdown:
            return 0
        tail = log.tail()
        channel.send("failed", message=load_failure(str(exc), log.lines) + (
            f"\n{tail}" if tail else ""), fatal=True, stage="load")
        return 1
    import llama_cpp

    chat = Chat(llm, channel, requests)
    template = _template_info(llm)  # first: it may change the chat format
    channel.send(
        "loaded",
        log=log.take_text(),
        load_s=time.perf_counter() - t0,
        n_ctx=int(llama_cpp.llama_n_ctx(llm.ctx)),
        n_ctx_seq=chat.n_ctx,
        n_seq_max=int(llama_cpp.llama_n_seq_max(llm.ctx)),
        n_ctx_train=int(llama_cpp.llama_model_n_ctx_train(llm.model)),
        n_layer=int(llama_cpp.llama_model_n_layer(llm.model)),
        chat_format=str(llm.chat_format),
        **template,
        gpu_offload=bool(llama_cpp.llama_supports_gpu_offload()),
        exact=_exact_buffers(llm),
    )
    while True:
        request = requests.queue.get()
        kind = request["type"]
        if kind == "shutdown":
            break
        if kind == "chat":
            chat.turn(request)
        elif kind == "reset":
            system = request.get("system")
            chat.reset(None if system is None else str(system))
        elif kind == "load":
            channel.send("failed", message="a model is already loaded; start a new worker",
                         fatal=False, stage="request")
        else:
            channel.send("failed", message=f"unknown request {kind!r}", fatal=False,
                         stage="request")
    llm.close()
    return 0


def main() -> int:
    channel = Channel.take_stdout()
    _watch_parent()
    requests = Requests(sys.stdin.buffer, channel)
    try:
        import llama_cpp
    except Exception as exc:  # not installed, or its shared library does not load
        from kvgui.core.install_hints import llama_cpp_hint

        channel.send("failed", message=llama_cpp_hint(exc), fatal=True, stage="start")
        return 1

    log = LogCapture(channel)
    channel.send("started", pid=os.getpid(), protocol=PROTOCOL_VERSION,
                 llama_cpp_version=getattr(llama_cpp, "__version__", "?"))
    requests.start()
    try:
        return _serve(channel, requests, log)
    except Exception as exc:  # a bug here must still reach the caller as one clear message
        channel.send("failed", message=f"worker error: {type(exc).__name__}: {exc}",
                     fatal=True, stage="chat")
        raise


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)  # skip interpreter teardown: llama.cpp's atexit/static destructors race
