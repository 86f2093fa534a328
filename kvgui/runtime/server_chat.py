"""Chat with a running llama-server over its HTTP API, as the worker chats in-process.

Streaming ``POST /v1/chat/completions`` (chat mode: the GGUF's template, applied by the
server) or ``POST /completion`` (completion mode: the model continues the text), read as
server-sent events with httpx. The conversation is kept here (HTTP is stateless; the server's
prompt cache reuses the common prefix). Every turn ends in the same ``finished`` dict as the
worker's (``kvgui.runtime.protocol``): reply, tokens, prompt_tokens, n_past, n_ctx, ttft_s,
tokens_per_s, prompt_tokens_per_s, stop_reason, dropped_turns, mode, chat_format. Stop closes
the stream (llama-server cancels the task when its client goes) and keeps what was streamed.

Speeds are llama-server's own ``timings`` of the reply (prompt and generation), so they are
the same figures ``llama-server`` reports for a direct request; ``ttft_s`` is measured here,
from the request to the first piece of text.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from kvgui.runtime.local_http import local_client, read_props
from kvgui.runtime.protocol import Sampling

log = logging.getLogger(__name__)

CHAT, COMPLETION = "chat", "completion"
CONNECT_TIMEOUT_S = 5.0


class ServerChatError(RuntimeError):
    """The server refused or failed a turn; ``fatal``: it is gone (connection lost)."""

    def __init__(self, message: str, *, fatal: bool = False, kind: str = "") -> None:
        super().__init__(message)
        self.fatal = fatal
        self.kind = kind


@dataclass
class ServerConversation:
    system: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)
    mode: str = CHAT

    def messages(self, user: str) -> list[dict[str, str]]:
        out: list[dict[str, str]] = []
        if self.system:
            out.append({"role": "system", "content": self.system})
        for question, answer in self.turns:
            out += [{"role": "user", "content": question},
                    {"role": "assistant", "content": answer}]
        out.append({"role": "user", "content": user})
        return out

    def prompt(self, user: str) -> str:
        return "".join(q + a for q, a in self.turns) + user


def _sampling_fields(s: Sampling) -> dict[str, Any]:
    return {"temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k,
            "min_p": s.min_p, "seed": s.seed if s.seed >= 0 else -1,
            "repeat_penalty": 1.0}  # llama-cli's default (as the worker)


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, Any]]:
    """("data", obj) / ("error", obj) per server-sent event; "[DONE]" ends the stream."""
    for line in lines:
        if not line:
            continue
        field_name, _, value = line.partition(":")
        value = value.strip()
        if field_name == "data":
            if value == "[DONE]":
                return
            yield "data", json.loads(value)
        elif field_name == "error":
            yield "error", json.loads(value) if value.startswith("{") else {"message": value}


class ServerChat:
    """One conversation with the llama-server at ``url`` (``http://127.0.0.1:PORT``)."""

    def __init__(self, url: str, *, n_ctx: int | None = None,
                 client: httpx.Client | None = None) -> None:
        self.url = url.rstrip("/")
        self.client = client or local_client(httpx.Timeout(None, connect=CONNECT_TIMEOUT_S))
        self.conversation = ServerConversation()
        self.n_ctx = n_ctx
        self.chat_format = "server"  # the GGUF's template, as llama-server applies it

    def close(self) -> None:
        self.client.close()

    def reset(self, system: str | None = None) -> None:
        self.conversation = ServerConversation(system=system or None)

    def props(self) -> dict[str, Any]:
        data = read_props(self.client, self.url, CONNECT_TIMEOUT_S)
        self.use_props(data)
        return data

    def use_props(self, data: dict[str, Any]) -> None:
        """Take the context per slot from a ``/props`` answer read elsewhere (the window
        reads it on its health poller's thread, off the GUI thread)."""
        settings = data.get("default_generation_settings") or {}
        if self.n_ctx is None and settings.get("n_ctx"):
            self.n_ctx = int(settings["n_ctx"])

    def turn(self, text: str, *, system: str | None = None, sampling: Sampling | None = None,
             mode: str = CHAT, on_piece: Callable[[str, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
        """One reply, streamed: ``on_piece(text, n_past)`` per piece. A message too long for
        the context drops the oldest turns first (as the worker does)."""
        sampling = sampling or Sampling()
        if mode not in (CHAT, COMPLETION):
            raise ServerChatError(f"unknown mode {mode!r} (chat or completion)")
        conv = self.conversation
        if mode != conv.mode:
            self.reset(conv.system)
            self.conversation.mode = mode
            conv = self.conversation
        if system is not None:
            conv.system = system or None
        dropped = 0
        while True:
            try:
                done = self._stream(text, sampling, on_piece, should_stop)
                break
            except ServerChatError as exc:
                if exc.kind != "exceed_context_size_error":
                    raise
                if not conv.turns:
                    raise ServerChatError(
                        f"the message does not fit in the context ({exc}); raise -c or "
                        "shorten the message or system prompt") from None
                conv.turns.pop(0)
                dropped += 1
        conv.turns.append((text, done["reply"]))
        done["dropped_turns"] = dropped
        return done

    def _request(self, text: str, sampling: Sampling) -> tuple[str, dict[str, Any]]:
        conv = self.conversation
        fields = _sampling_fields(sampling)
        if conv.mode == COMPLETION:
            body = {"prompt": conv.prompt(text), "stream": True, "cache_prompt": True,
                    "n_predict": sampling.max_tokens, **fields}
            return "/completion", body
        body = {"messages": conv.messages(text), "stream": True, "cache_prompt": True,
                "max_tokens": sampling.max_tokens if sampling.max_tokens > 0 else -1,
                **fields}
        return "/v1/chat/completions", body

    def _stream(self, text: str, sampling: Sampling,
                on_piece: Callable[[str, int], None] | None,
                should_stop: Callable[[], bool] | None) -> dict[str, Any]:
        path, body = self._request(text, sampling)
        pieces: list[str] = []
        t0 = time.perf_counter()
        t_first: float | None = None
        timings: dict[str, Any] = {}
        finish: str | None = None
        stopped = False
        n_chunks = 0
        try:
            with self.client.stream("POST", self.url + path, json=body) as r:
                if r.status_code != 200:
                    r.read()
                    raise _http_error(r)
                for kind, obj in sse_events(r.iter_lines()):
                    if kind == "error" or "error" in obj:
                        err = obj.get("error", obj)
                        raise ServerChatError(str(err.get("message", err)),
                                              kind=str(err.get("type", "")))
                    piece, chunk_finish = _piece(obj, self.conversation.mode)
                    timings = obj.get("timings") or timings
                    finish = chunk_finish or finish
                    if piece:
                        n_chunks += 1
                        if t_first is None:
                            t_first = time.perf_counter()
                        pieces.append(piece)
                        if on_piece is not None:
                            on_piece(piece, n_chunks)
                    if should_stop is not None and should_stop():
                        stopped = True
                        break  # closing the response cancels the task in llama-server
        except httpx.HTTPError as exc:
            raise ServerChatError(f"lost llama-server ({type(exc).__name__}: {exc})",
                                  fatal=True) from None
        return self._summary("".join(pieces), finish, stopped, timings, sampling, t0,
                             t_first, n_chunks)

    def _summary(self, reply: str, finish: str | None, stopped: bool,
                 timings: dict[str, Any], sampling: Sampling, t0: float,
                 t_first: float | None, n_chunks: int) -> dict[str, Any]:
        predicted = int(timings.get("predicted_n") or n_chunks)
        prompt_n = int(timings.get("prompt_n") or 0)
        cache_n = int(timings.get("cache_n") or 0)
        if stopped:
            reason = "stopped"
        elif finish in ("stop", "eos", "word"):
            reason = "eos"
        elif sampling.max_tokens > 0 and predicted >= sampling.max_tokens:
            reason = "max_tokens"
        else:
            reason = "context"
        tg = timings.get("predicted_per_second")
        pp = timings.get("prompt_per_second")
        return {
            "reply": reply,
            "tokens": predicted,
            "prompt_tokens": prompt_n + cache_n,
            "n_past": prompt_n + cache_n + predicted,
            "n_ctx": self.n_ctx,
            "ttft_s": None if t_first is None else t_first - t0,
            "tokens_per_s": float(tg) if tg else None,
            "prompt_tokens_per_s": float(pp) if pp else None,
            "stop_reason": reason,
            "dropped_turns": 0,
            "mode": self.conversation.mode,
            "chat_format": self.chat_format,
            "timings": timings,
        }


def _piece(obj: dict[str, Any], mode: str) -> tuple[str, str | None]:
    """(text, finish reason) of one streamed chunk of either endpoint."""
    if mode == COMPLETION:
        finish = str(obj.get("stop_type")) if obj.get("stop") else None
        return str(obj.get("content") or ""), finish
    choices = obj.get("choices") or [{}]
    delta = choices[0].get("delta") or {}
    return str(delta.get("content") or ""), choices[0].get("finish_reason")


def _http_error(r: httpx.Response) -> ServerChatError:
    try:
        err = r.json().get("error", {})
    except ValueError:
        err = {"message": r.text[:200]}
    if not isinstance(err, dict):
        err = {"message": str(err)}
    return ServerChatError(f"llama-server answered {r.status_code}: {err.get('message', '')}",
                           kind=str(err.get("type", "")))
