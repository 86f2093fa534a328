"""The numbers llama.cpp can take, and the checks every number from outside goes through.

A value kvgui accepts but llama.cpp cannot hold is worse than a refusal: ``-c 4294971392``
reaches llama.cpp's uint32 ``n_ctx`` as 4096, ``-np 300`` is refused by llama_context only at
launch. So each setting has one range here, from the C type llama.cpp stores it in and the
limits it enforces itself (sources in the bundled llama.cpp), and the command-line flags,
presets, imports and the settings file are all checked against it.

Numbers typed as text are read the way llama.cpp's common/arg.cpp reads them (``std::stoi``),
but whole: ``std::stoi("4_096")`` is 4 and ``std::stoi("٤٠٩٦")`` fails, so kvgui refuses both
rather than guess which the user meant.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
# src/llama-cparams.h: llama_context refuses more sequences ("n_seq_max must be <= 256")
LLAMA_MAX_SEQ = 256
# ggml/include/ggml.h: the CPU backend's thread pool holds at most this many threads
GGML_MAX_N_THREADS = 512
# src/llama.cpp llama_max_devices(): the length of llama_model_params.tensor_split
LLAMA_MAX_DEVICES = 16
# src/llama-hparams.h
LLAMA_MAX_LAYERS = 512
LLAMA_MAX_EXPERTS = 1024
# src/llama.cpp llama_max_tensor_buft_overrides(): common/arg.cpp pads the overrides to this
# many with the NULL terminator; a list already this long gets no terminator and
# common_model_params_to_llama's GGML_ASSERT aborts, so at most one fewer are usable
LLAMA_MAX_TENSOR_BUFT_OVERRIDES = 4096


class LimitError(ValueError):
    """A number outside what llama.cpp can take; the message is one line naming the setting."""


@dataclass(frozen=True)
class Limit:
    low: int
    high: int
    why: str  # what the bound is, in llama.cpp's terms

    def check(self, name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise LimitError(f"{name} must be a whole number, not {_show(value)}")
        if value < self.low:
            raise LimitError(f"{name} must be at least {self.low}, not {value}")
        if value > self.high:
            raise LimitError(f"{name} = {value} is above {self.high}, {self.why}")
        return value


_INT32 = "the largest value llama.cpp's int32 settings hold"
# Settings field (or flag value) -> its range. n_gpu_layers: kvgui's -1 means "all".
LIMITS: dict[str, Limit] = {
    "n_ctx": Limit(1, INT32_MAX, _INT32 + " (common_params.n_ctx)"),
    "n_batch": Limit(1, INT32_MAX, _INT32 + " (common_params.n_batch)"),
    "n_ubatch": Limit(1, INT32_MAX, _INT32 + " (common_params.n_ubatch)"),
    "n_parallel": Limit(1, LLAMA_MAX_SEQ, "llama.cpp's most parallel sequences (LLAMA_MAX_SEQ)"),
    "n_gpu_layers": Limit(-1, INT32_MAX, _INT32 + " (llama_model_params.n_gpu_layers)"),
    "n_threads": Limit(1, GGML_MAX_N_THREADS, "ggml's most threads (GGML_MAX_N_THREADS)"),
    "port": Limit(0, 65535, "the largest TCP port"),
    "main_gpu": Limit(0, LLAMA_MAX_DEVICES - 1, "llama.cpp's most devices (llama_max_devices)"),
    # -1: --cpu-moe (every layer); N adds N overrides, one per layer
    "n_cpu_moe": Limit(-1, LLAMA_MAX_TENSOR_BUFT_OVERRIDES - 1,
                       "llama.cpp's most tensor overrides (llama_max_tensor_buft_overrides)"),
}


def check(name: str, value: Any) -> int:
    """``value`` if it is a whole number in ``name``'s range, else a LimitError."""
    return LIMITS[name].check(name, value)


# What std::stoi reads whole: optional space, a sign, ASCII digits. Python's int() also takes
# Unicode digits, underscores and surrounding space, none of which llama.cpp would read so.
_C_INT = re.compile(r"[ \t]*([+-]?[0-9]+)[ \t]*")
_LEADING_INT = re.compile(r"[ \t]*[+-]?[0-9]+")


def parse_int(text: str, what: str) -> int:
    """A whole number written as llama.cpp's argument parser reads one (ASCII, no ``_``).

    ``what`` names the flag in the message. The range is not checked here: pass the result
    to ``check`` (or to Settings, which does).
    """
    m = _C_INT.fullmatch(text)
    if m is None:
        hint = ""
        prefix = _LEADING_INT.match(text)
        if prefix is not None:
            hint = f" (llama.cpp would read {int(prefix.group())} and ignore the rest)"
        elif text.strip() and all(c.isdigit() or c in "+-_ " for c in text.strip()):
            hint = " (only the digits 0-9: llama.cpp does not read other scripts' digits)"
        raise LimitError(f"{what}: expected a whole number, got {_show(text)}{hint}")
    return int(m.group(1))


def parse_checked(text: str, name: str, what: str) -> int:
    """``parse_int`` then ``check`` against ``name``'s range; errors name ``what`` (a flag)."""
    value = parse_int(text, what)
    try:
        return check(name, value)
    except LimitError as exc:
        raise LimitError(f"{what}: {exc}") from None


def check_tensor_split(split: Sequence[Any], name: str = "tensor_split") -> tuple[float, ...]:
    """Proportions per GPU: at most llama_max_devices() of them, each finite and >= 0."""
    if len(split) > LLAMA_MAX_DEVICES:
        raise LimitError(f"{name} has {len(split)} entries; llama.cpp takes at most "
                         f"{LLAMA_MAX_DEVICES} (llama_max_devices)")
    out = []
    for x in split:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            raise LimitError(f"{name} must hold numbers, not {_show(x)}")
        f = float(x)
        if not math.isfinite(f) or f < 0:
            raise LimitError(f"{name} entries must be finite and not negative, not {f!r}")
        out.append(f)
    return tuple(out)


def check_override_tensor(value: Any, name: str = "override_tensor") -> tuple[
        tuple[str, str], ...]:
    """-ot entries as (pattern, buffer type) string pairs that a command line can carry.

    arg.cpp's parse_tensor_buffer_overrides splits the value at every ',' and each entry at
    its first '=', so a pattern holds neither (a regex like ``{1,2}`` cannot be written in an
    -ot), and a buffer type name is never empty. Whether the pattern is a regex llama.cpp
    compiles and the buffer type one of its devices' is for the estimate to say (findings:
    it depends on the devices)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise LimitError(f"{name} must be a list of (pattern, buffer type) pairs, "
                         f"not {_show(value)}")
    out = []
    for entry in value:
        if isinstance(entry, (str, bytes)) or not isinstance(entry, (tuple, list)) \
                or len(entry) != 2 or not all(isinstance(x, str) for x in entry):
            raise LimitError(f"{name}: {_show(entry)} is not a (pattern, buffer type) pair")
        pattern, buft = entry
        if "," in pattern or "=" in pattern:
            raise LimitError(f"{name}: the pattern {pattern!r} holds a ',' or '=', which "
                             "llama.cpp's -ot reads as separators")
        if not buft or "," in buft:
            raise LimitError(f"{name}: {buft!r} is not a buffer type name")
        out.append((pattern, buft))
    return tuple(out)


def check_override_count(n_override_tensor: int, n_cpu_moe: int) -> None:
    """All overrides together (each -ot entry, one per --n-cpu-moe layer, one for
    --cpu-moe) within llama_max_tensor_buft_overrides() less its terminator."""
    total = n_override_tensor + (1 if n_cpu_moe < 0 else n_cpu_moe)
    if total > LLAMA_MAX_TENSOR_BUFT_OVERRIDES - 1:
        raise LimitError(f"{total} tensor overrides (-ot entries and --n-cpu-moe layers) are "
                         f"more than llama.cpp's {LLAMA_MAX_TENSOR_BUFT_OVERRIDES - 1}")


_ENDPOINT = re.compile(r"([^:,\s]+):([0-9]+)")


def check_rpc_servers(value: Any, name: str = "rpc_servers") -> tuple[str, ...]:
    """--rpc endpoints as ggml-rpc's parse_endpoint reads them: the host up to the first ':'
    (so no IPv6 literal), then a port std::stoi reads whole, within TCP's range; a list
    joined by ',' on the command line. The same endpoint twice is one server, registered
    once (ggml-rpc's reg_map, ggml-backend-reg's register_backend), so it is kept once here
    too, at its first place."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise LimitError(f"{name} must be a list of host:port strings, not {_show(value)}")
    out: list[str] = []
    for entry in value:
        m = _ENDPOINT.fullmatch(entry) if isinstance(entry, str) else None
        if m is None or not 0 < int(m.group(2)) <= 65535:
            raise LimitError(f"{name}: {_show(entry)} is not host:port (a port 1-65535)")
        if entry not in out:
            out.append(entry)
    if len(out) > LLAMA_MAX_DEVICES:
        raise LimitError(f"{name}: {len(out)} servers; llama.cpp takes at most "
                         f"{LLAMA_MAX_DEVICES} devices (llama_max_devices)")
    return tuple(out)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
