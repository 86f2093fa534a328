"""The message protocol between kvgui (GUI or CLI) and its llama.cpp worker process.

Why a separate process: llama.cpp aborts its whole process on a failed GGML_ASSERT, and an
out-of-memory load can take the process down with it; the window must survive both.

Transport: JSON lines, UTF-8. The caller writes requests to the worker's stdin; the worker
writes events to its stdout (a private copy of fd 1: anything llama.cpp or Python prints
goes to stderr, so stray output can never corrupt the stream). stderr is free text (kept by
callers as the "last lines" shown when the worker dies). Every message is one JSON object
with a ``"type"`` key; unknown keys are ignored, so either side may add fields.

Requests (caller -> worker)
---------------------------
``load``      ``{"model": path, "settings": Settings.to_dict()}`` - once, first.
``chat``      ``{"text": str, "system": str | null, "sampling": Sampling.to_dict(),
              "mode": "chat" | "completion", "chat_format": str | null}`` - one turn.
              ``system`` replaces the system prompt (null keeps it). The worker keeps the
              conversation: the user text and the (possibly partial) reply are appended.
              ``mode`` "completion": no template, the model continues the text so far (for
              base models); a change of mode starts a new conversation. ``chat_format``: a
              llama-cpp-python chat format to use from now on (null: the GGUF's template).
``stop``      interrupt the running reply; the model stays loaded (a no-op when idle).
``reset``     ``{"system": str | null}`` - new conversation (history and KV cache cleared).
``shutdown``  free the model and exit 0. EOF on stdin means the same (the caller died).

Events (worker -> caller)
-------------------------
``started``   ``{"pid", "protocol", "llama_cpp_version"}`` - the process is up.
``progress``  ``{"fraction": 0..1}`` - llama.cpp's model-load progress callback.
``log``       ``{"level": int, "text": str}`` - one line of llama.cpp's log (llama_log_set).
``loaded``    ``{"log": str, "n_ctx", "n_ctx_seq", "n_seq_max", "n_ctx_train", "n_layer",
              "load_s", "chat_format", "chat_template", "architecture", "usual_format",
              "formats", "gpu_offload"}`` - the model is ready. ``chat_template``: the GGUF
              has one (false: llama-cpp-python falls back to llama-2's format whatever the
              model is; ``usual_format`` is the architecture's, ``formats`` the choices). ``log`` is
              what llama.cpp logged during the load (INFO and above): the measured figures
              (buffers per device, KV K/V, compute, padded n_ctx) are parsed from it by
              ``kvgui.runtime.llama_log.parse_llama_log``.
``token``     ``{"text": str, "n_past": int}`` - the next piece of the streamed reply: the
              first token at once, then whatever was generated in each 20 ms (one or more
              tokens); ``n_past``: tokens in the context so far.
``finished``  ``{"reply", "tokens", "prompt_tokens", "n_past", "n_ctx", "ttft_s",
              "tokens_per_s", "prompt_tokens_per_s", "stop_reason", "dropped_turns"}``.
              ``stop_reason``: "eos" (the model ended its turn), "max_tokens", "context" (the
              reply reached the end of the context window), "stopped" (a stop request).
              ``n_past``: tokens in the context now (context usage = n_past / n_ctx).
              ``dropped_turns``: oldest user/assistant pairs dropped so the prompt fits.
              Also ``"mode"`` and ``"chat_format"`` (what this reply was made with). A
              stopped reply is the text streamed until the stop.
``failed``    ``{"message": str, "fatal": bool, "stage": "load" | "chat" | "request"}``.
              fatal: the worker exits after sending it (a load failure); otherwise the
              model stays loaded (e.g. one message longer than the whole context).

Context full: when the conversation no longer fits n_ctx, the oldest turns are dropped (the
system prompt is kept) and ``dropped_turns`` says how many; a reply that reaches the end of
the context stops with stop_reason "context"; a single message too long for the context is
refused with a non-fatal ``failed``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

PROTOCOL_VERSION = 1

REQUEST_TYPES = frozenset({"load", "chat", "stop", "reset", "shutdown"})
EVENT_TYPES = frozenset(
    {"started", "progress", "log", "loaded", "token", "finished", "failed"}
)
STOP_REASONS = ("eos", "max_tokens", "context", "stopped")

Message = dict[str, Any]


class ProtocolError(ValueError):
    """A line that is not a protocol message."""


@dataclass(frozen=True)
class Sampling:
    """Sampling for one reply; defaults are llama-cli's (common/common.h), except max_tokens.

    max_tokens -1 means "until the end of the context" (llama-cli's -n -1); the default
    caps a reply so a model that never emits end-of-turn cannot run for minutes.
    seed -1 means random.
    """

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    max_tokens: int = 1024
    seed: int = -1

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {self.temperature}")
        if not 0 <= self.top_p <= 1 or not 0 <= self.min_p <= 1:
            raise ValueError("top_p and min_p must be between 0 and 1")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, not {self.top_k}")
        if self.max_tokens == 0 or self.max_tokens < -1:
            raise ValueError(f"max_tokens must be -1 (no limit) or >= 1, not {self.max_tokens}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Sampling:
        known = {f.name: f.type for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in (data or {}).items():
            if key in known:
                kwargs[key] = float(value) if known[key] == "float" else int(value)
        return cls(**kwargs)


def message(kind: str, **payload: Any) -> Message:
    """A request or event dict; the kind must be one the protocol defines."""
    if kind not in REQUEST_TYPES and kind not in EVENT_TYPES:
        raise ProtocolError(f"unknown message type {kind!r}")
    return {"type": kind, **payload}


def encode(msg: Message) -> bytes:
    """One JSON line. ensure_ascii keeps every line pure ASCII (no partial UTF-8 on pipes)."""
    return json.dumps(msg, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"


def decode(line: bytes | str) -> Message:
    """Parse one line into a message, or raise ProtocolError saying what is wrong."""
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.strip()
    if not text:
        raise ProtocolError("empty line")
    try:
        msg = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {text[:80]!r} ({exc.msg})") from None
    if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
        raise ProtocolError(f"not a protocol message: {text[:80]!r}")
    return msg
