"""A pasted llama-cli / llama-server command line, read back into Settings.

It reads what llama.cpp's common/arg.cpp reads: short and long forms, ``--long_name`` with
underscores, the last of a repeated flag winning, ``LLAMA_ARG_*`` environment assignments in
front of the command (the command line overrides them), and also forms that arg.cpp of this
version rejects but people paste: ``--flag=value``, the older bare ``-fa`` and ``--no-mmap``.
Flags it does not model are kept, in order, in ``unknown``, never dropped.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from kvgui.core.commandline.shellquote import ShellSyntaxError, guess_shell, split_command
from kvgui.core.config import limits
from kvgui.core.config.settings import (
    ALL_LAYERS,
    ALL_MOE_LAYERS,
    FlashAttn,
    Settings,
    SplitMode,
    n_cpu_moe_overrides,
)
from kvgui.core.gguf.ggml_types import CACHE_TYPE_NAMES


class CommandParseError(ValueError):
    """A command kvgui cannot read (bad value, missing value, bad quoting): one line."""


# Longer than any command a shell passes: Windows caps a command line at 32767 characters and
# Linux one argument at 128 KiB (MAX_ARG_STRLEN); reading more would only freeze the caller.
MAX_COMMAND_CHARS = 256 * 1024


@dataclass
class ParsedCommand:
    """What a command line sets.

    program: the tool as typed, reduced to its name ("llama-server" for
        ``C:\\llama\\llama-server.exe``); None when the text starts with a flag.
    model_path: ``-m`` as written (not resolved), or None.
    settings: ``base`` (default: Settings()) with everything the command sets applied,
        including llama-server's defaults where they differ (no ``-np`` = 4 slots, unified).
    given: names of the Settings fields the command set explicitly.
    ctx_from_model: no ``-c`` (or ``-c 0``): llama.cpp takes the model's training context;
        ``settings.n_ctx`` then still holds the base value, for the caller to replace.
    extras: recognised values that are not Settings: system_prompt, prompt, host, port,
        fit ("on"/"off"), load_mode, env (the VAR=value assignments, all of them).
    unknown: every token kvgui does not model, in order, values next to their flags.
    warnings: one line each, for values whose effect kvgui cannot reproduce exactly.
    """

    program: str | None
    model_path: str | None
    settings: Settings
    given: frozenset[str] = frozenset()
    ctx_from_model: bool = False
    extras: dict[str, Any] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# canonical key -> (names, takes a value, LLAMA_ARG_ environment variable)
_OPTIONS: dict[str, tuple[tuple[str, ...], bool, str | None]] = {
    "model": (("-m", "--model"), True, "LLAMA_ARG_MODEL"),
    "n_ctx": (("-c", "--ctx-size"), True, "LLAMA_ARG_CTX_SIZE"),
    "ngl": (("-ngl", "--gpu-layers", "--n-gpu-layers"), True, "LLAMA_ARG_N_GPU_LAYERS"),
    "type_k": (("-ctk", "--cache-type-k"), True, "LLAMA_ARG_CACHE_TYPE_K"),
    "type_v": (("-ctv", "--cache-type-v"), True, "LLAMA_ARG_CACHE_TYPE_V"),
    "flash_attn": (("-fa", "--flash-attn"), True, "LLAMA_ARG_FLASH_ATTN"),
    "n_batch": (("-b", "--batch-size"), True, "LLAMA_ARG_BATCH"),
    "n_ubatch": (("-ub", "--ubatch-size"), True, "LLAMA_ARG_UBATCH"),
    "n_parallel": (("-np", "--parallel"), True, "LLAMA_ARG_N_PARALLEL"),
    "tensor_split": (("-ts", "--tensor-split"), True, "LLAMA_ARG_TENSOR_SPLIT"),
    "load_mode": (("-lm", "--load-mode"), True, "LLAMA_ARG_LOAD_MODE"),
    "fit": (("-fit", "--fit"), True, "LLAMA_ARG_FIT"),
    "system_prompt": (("-sys", "--system-prompt"), True, None),
    "prompt": (("-p", "--prompt"), True, None),
    "host": (("--host",), True, "LLAMA_ARG_HOST"),
    "port": (("--port",), True, "LLAMA_ARG_PORT"),
    "swa_full": (("--swa-full",), False, "LLAMA_ARG_SWA_FULL"),
    "kv_unified": (("-kvu", "--kv-unified"), False, "LLAMA_ARG_KV_UNIFIED"),
    "no_kv_unified": (("-no-kvu", "--no-kv-unified"), False, None),
    "kv_offload": (("-kvo", "--kv-offload"), False, "LLAMA_ARG_KV_OFFLOAD"),
    "no_kv_offload": (("-nkvo", "--no-kv-offload"), False, None),
    "split_mode": (("-sm", "--split-mode"), True, "LLAMA_ARG_SPLIT_MODE"),
    "main_gpu": (("-mg", "--main-gpu"), True, "LLAMA_ARG_MAIN_GPU"),
    "n_threads": (("-t", "--threads"), True, "LLAMA_ARG_THREADS"),
    "mlock": (("--mlock",), False, "LLAMA_ARG_MLOCK"),  # older llama.cpp
    "repack": (("--repack",), False, "LLAMA_ARG_REPACK"),
    "no_repack": (("-nr", "--no-repack"), False, None),
    "mmap": (("--mmap",), False, "LLAMA_ARG_MMAP"),  # older llama.cpp
    "no_mmap": (("--no-mmap",), False, "LLAMA_ARG_NO_MMAP"),  # older llama.cpp
    # in arg.cpp's registration order: the environment is read in that order
    "rpc": (("--rpc",), True, "LLAMA_ARG_RPC"),
    "override_tensor": (("-ot", "--override-tensor"), True, "LLAMA_ARG_OVERRIDE_TENSOR"),
    "cpu_moe": (("-cmoe", "--cpu-moe"), False, "LLAMA_ARG_CPU_MOE"),
    "n_cpu_moe": (("-ncmoe", "--n-cpu-moe"), True, "LLAMA_ARG_N_CPU_MOE"),
}
# recognised, but passed on as given rather than modelled (Settings.extra_args)
_PASSED_ON = frozenset({"host", "port"})
_BY_NAME = {name: key for key, (names, _, _) in _OPTIONS.items() for name in names}
_BY_ENV = {env: key for key, (_, _, env) in _OPTIONS.items() if env}

# Flags kvgui keeps but does not model that change where memory goes.
_MEMORY_FLAGS = frozenset({
    "-ncffn", "--n-cpu-ffn", "-dev", "--device",
    "--kv-unified-per-slot", "-md", "--model-draft", "-mm", "--mmproj", "-fitt",
    "--fit-target", "-fitc", "--fit-ctx", "--no-host",
})

_TRUTHY = {"on", "enabled", "true", "1"}  # arg.cpp is_truthy / is_falsey / is_autoy
_FALSEY = {"off", "disabled", "false", "0"}
_AUTOY = {"auto", "-1"}
_ENV_ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)", re.DOTALL)
_SERVER_NAMES = {"llama-server", "server"}


def _program_name(token: str) -> str:
    name = token.replace("\\", "/").rstrip("/").split("/")[-1]
    if name.lower().endswith(".exe"):
        name = name[:-4]
    return name


def _looks_like_flag(token: str) -> bool:
    return token.startswith("-") and len(token) > 1 and not re.fullmatch(r"-[0-9.]+", token)


def _canonical(token: str) -> str:
    """arg.cpp replaces '_' by '-' in arguments that start with '--'."""
    return token.replace("_", "-") if token.startswith("--") else token


class _Reader:
    def __init__(self, base: Settings) -> None:
        self.values: dict[str, Any] = {}
        self.extras: dict[str, Any] = {}
        self.warnings: list[str] = []
        self.model_path: str | None = None
        self.ctx_zero = False
        self.ngl_auto = False
        self.base = base
        # the tensor overrides in llama.cpp's order: ("ot", (pattern, buft)) per -ot entry,
        # ("moe", N) per --n-cpu-moe N (ALL_MOE_LAYERS: --cpu-moe); each flag appends
        self.overrides: list[tuple[str, Any]] = []
        self.rpc: list[str] = []

    def _int(self, flag: str, value: str, limit: str | None = None) -> int:
        """A whole number as llama.cpp reads it (ASCII digits), within ``limit``'s range."""
        try:
            n = limits.parse_int(value, flag)
            return n if limit is None else limits.parse_checked(value, limit, flag)
        except limits.LimitError as exc:
            raise CommandParseError(str(exc)) from None

    def apply(self, key: str, flag: str, value: str | None) -> None:
        v = value if value is not None else ""
        if key == "model":
            self.model_path = v
        elif key == "n_ctx":
            n = self._int(flag, v)
            if n < 0:
                raise CommandParseError(f"{flag}: context size cannot be negative ({n})")
            if n:
                self._int(flag, v, "n_ctx")
            self.ctx_zero = n == 0
            if n:
                self.values["n_ctx"] = n
            else:
                self.values.pop("n_ctx", None)
        elif key == "ngl":
            self._gpu_layers(flag, v.strip().lower())
        elif key in ("type_k", "type_v"):
            t = v.strip().lower()
            if t not in CACHE_TYPE_NAMES:
                raise CommandParseError(
                    f"{flag}: {v!r} is not a KV cache type ({', '.join(CACHE_TYPE_NAMES)})"
                )
            self.values[key] = t
        elif key == "flash_attn":
            self.values["flash_attn"] = _flash_attn(flag, value)
        elif key in ("n_batch", "n_ubatch", "n_parallel"):
            n = self._int(flag, v)
            if key == "n_parallel" and n == -1:  # llama-server: -1 = auto
                self.values.pop("n_parallel", None)
                return
            self.values[key] = self._int(flag, v, key)
        elif key == "tensor_split":
            try:
                split = tuple(float(x) for x in re.split(r"[,/]+", v.strip()) if x)
            except ValueError:
                raise CommandParseError(
                    f"{flag}: expected proportions like 3,1, got {v!r}"
                ) from None
            try:
                split = limits.check_tensor_split(split, flag)
            except limits.LimitError as exc:
                raise CommandParseError(str(exc)) from None
            self.values["tensor_split"] = () if not any(split) else split
        elif key == "load_mode":
            mode = v.strip().lower()
            if mode not in ("auto", "none", "mmap", "mlock", "mmap+mlock", "dio"):
                raise CommandParseError(f"{flag}: unknown load mode {v!r}")
            self.values["mmap"] = mode in ("auto", "mmap", "mmap+mlock")
            self.values["mlock"] = mode in ("mlock", "mmap+mlock")
            self.extras["load_mode"] = mode
        elif key == "split_mode":
            mode = v.strip().lower()
            if mode not in {m.value for m in SplitMode}:
                raise CommandParseError(f"{flag}: expected none, layer, row or tensor, got {v!r}")
            self.values["split_mode"] = SplitMode(mode)
            if mode != SplitMode.LAYER.value:
                self.warnings.append(
                    f"{flag} {mode} changes where llama.cpp puts memory; kvgui's estimate "
                    "splits by layer")
        elif key == "main_gpu":
            n = self._int(flag, v)
            if n < 0:
                raise CommandParseError(f"{flag}: a device index is 0 or more, got {n}")
            self.values["main_gpu"] = n
        elif key == "n_threads":
            n = self._int(flag, v)  # arg.cpp: 0 or less means every logical CPU
            self.values["n_threads"] = n if n > 0 else (os.cpu_count() or 1)
        elif key == "mlock":
            self.values["mlock"] = True
        elif key in ("repack", "no_repack"):
            self.values["repack"] = key == "repack"
        elif key == "fit":
            word = v.strip().lower()
            if word not in _TRUTHY | _FALSEY:
                raise CommandParseError(f"{flag}: expected on or off, got {v!r}")
            self.extras["fit"] = "on" if word in _TRUTHY else "off"
        elif key == "port":
            self.extras["port"] = self._int(flag, v, "port")
        elif key in ("system_prompt", "prompt", "host"):
            self.extras[key] = v
        elif key == "swa_full":
            self.values["swa_full"] = True
        elif key in ("kv_unified", "no_kv_unified"):
            self.values["kv_unified"] = key == "kv_unified"
        elif key in ("kv_offload", "no_kv_offload"):
            self.values["kv_offload"] = key == "kv_offload"
        elif key in ("mmap", "no_mmap"):
            self.values["mmap"] = key == "mmap"
            self.extras.pop("load_mode", None)
        elif key == "override_tensor":
            self.overrides += [("ot", o) for o in parse_override_tensor(flag, v)]
        elif key == "cpu_moe":
            self.overrides.append(("moe", ALL_MOE_LAYERS))
        elif key == "n_cpu_moe":
            n = self._int(flag, v)
            if n < 0:
                raise CommandParseError(f"{flag}: a number of layers is 0 or more, got {n} "
                                        "(llama.cpp: invalid value)")
            self.overrides.append(("moe", self._int(flag, v, "n_cpu_moe")))
        elif key == "rpc":
            # arg.cpp add_rpc_devices: every --rpc registers its servers, each once
            try:
                servers = limits.check_rpc_servers(v.split(","), flag)
            except limits.LimitError as exc:
                raise CommandParseError(str(exc)) from None
            self.rpc += [e for e in servers if e not in self.rpc]

    def override_values(self) -> dict[str, Any]:
        return override_values(self.overrides)

    def _gpu_layers(self, flag: str, v: str) -> None:
        if v == "auto":
            n = -1
        elif v == "all":
            n = -2
        else:
            n = self._int(flag, v)
            if not -limits.INT32_MAX - 1 <= n <= limits.INT32_MAX:  # std::stoi fails on it
                raise CommandParseError(f"{flag}: {n} is outside llama.cpp's int32 range")
        # arg.cpp: "auto" is -1, "all" (and any value <= -2) is every layer.
        self.ngl_auto = n == -1
        self.values["n_gpu_layers"] = ALL_LAYERS if n < 0 else n


def override_values(events: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """override_tensor and n_cpu_moe for overrides read in llama.cpp's order: ("ot",
    (pattern, buft)) per -ot entry, ("moe", N) per --n-cpu-moe N (ALL_MOE_LAYERS:
    --cpu-moe); empty when there are none.

    Settings applies override_tensor first, then n_cpu_moe. Every --n-cpu-moe and
    --cpu-moe overrides to the CPU, so they merge into the widest; where one came before an
    -ot entry to another buffer type, the order decides which wins, and those are written
    out as the -ot entries llama.cpp made of them (common.h llm_add_n_cpu_ffn_overrides), in
    their place."""
    if not events:
        return {}
    last_other = max((i for i, (kind, value) in enumerate(events)
                      if kind == "ot" and value[1] != "CPU"), default=-1)
    explicit: list[tuple[str, str]] = []
    n_cpu_moe = 0
    for i, (kind, value) in enumerate(events):
        if kind == "ot":
            explicit.append(value)
        elif i < last_other:
            explicit += n_cpu_moe_overrides(value)
        elif value == ALL_MOE_LAYERS or n_cpu_moe == ALL_MOE_LAYERS:
            n_cpu_moe = ALL_MOE_LAYERS
        else:
            n_cpu_moe = max(n_cpu_moe, value)
    return {"override_tensor": tuple(explicit), "n_cpu_moe": n_cpu_moe}


def parse_override_tensor(flag: str, value: str) -> list[tuple[str, str]]:
    """An -ot value's (pattern, buffer type) entries, as arg.cpp's
    parse_tensor_buffer_overrides splits it (at every ',', each entry at its first '=')."""
    out = []
    for entry in value.split(","):
        pattern, eq, buft = entry.partition("=")
        if not eq:
            raise CommandParseError(
                f"{flag}: {entry!r} is not PATTERN=BUFFER_TYPE (llama.cpp: invalid value)")
        if not buft:
            raise CommandParseError(f"{flag}: {entry!r} names no buffer type")
        out.append((pattern, buft))
    return out


def _flash_attn(flag: str, value: str | None) -> FlashAttn:
    if value is None:
        return FlashAttn.ON  # the older bare switch
    word = value.strip().lower()
    if word in _TRUTHY:
        return FlashAttn.ON
    if word in _FALSEY:
        return FlashAttn.OFF
    if word in _AUTOY:
        return FlashAttn.AUTO
    raise CommandParseError(f"{flag}: expected on, off or auto, got {value!r}")


_NEGATION = {"kv_unified": "no_kv_unified", "kv_offload": "no_kv_offload", "mmap": "no_mmap",
             "repack": "no_repack"}


def _apply_env(reader: _Reader, name: str, value: str) -> None:
    """An LLAMA_ARG_* variable, as arg.cpp reads it: a switch takes a true/false word."""
    key = _BY_ENV.get(name)
    if key is None:
        return
    if _OPTIONS[key][1]:
        reader.apply(key, name, value)
        return
    word = value.strip().lower()
    if word in _TRUTHY:
        reader.apply(key, name, None)
    elif word in _FALSEY and key in _NEGATION:
        reader.apply(_NEGATION[key], name, None)


def parse_args(argv: Sequence[str], *, base: Settings | None = None) -> ParsedCommand:
    """Read an argument list (``argv[0]`` may be the program, env assignments before it)."""
    base = base or Settings()
    reader = _Reader(base)
    tokens = list(argv)
    env: dict[str, str] = {}
    first = 0
    while first < len(tokens) and (m := _ENV_ASSIGN.fullmatch(tokens[first])) \
            and not tokens[first].startswith("-"):
        env[m.group(1)] = m.group(2)
        first += 1
    program = None
    if first < len(tokens) and not _looks_like_flag(tokens[first]):
        program = _program_name(tokens[first])
        first += 1
    tokens = tokens[first:]
    if env:
        reader.extras["env"] = dict(env)
    # arg.cpp reads the environment option by option in its registration order; only the
    # overrides' order can change a result (they append), so they go last, in that order
    overriding = ("rpc", "override_tensor", "cpu_moe", "n_cpu_moe")
    for name, value in env.items():
        if _BY_ENV.get(name) not in overriding:
            _apply_env(reader, name, value)
    for option in overriding:
        env_name = _OPTIONS[option][2]
        if env_name in env:
            _apply_env(reader, env_name, env[env_name])

    unknown: list[str] = []
    kept: list[str] = []  # what goes on to llama.cpp as given: the unknown flags, --host …
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        name, inline = token, None
        if _looks_like_flag(token) and "=" in token:
            name, inline = token.split("=", 1)
        key = _BY_NAME.get(_canonical(name)) if _looks_like_flag(name) else None
        if key is None:
            unknown.append(token)
            kept.append(token)
            if _canonical(name) in _MEMORY_FLAGS:
                reader.warnings.append(
                    f"{name} changes where llama.cpp puts memory; kvgui's estimate ignores it"
                )
            # an unknown flag keeps the value that follows it
            if (
                _looks_like_flag(token)
                and inline is None
                and i < len(tokens)
                and not _looks_like_flag(tokens[i])
            ):
                unknown.append(tokens[i])
                kept.append(tokens[i])
                i += 1
            continue
        takes_value = _OPTIONS[key][1]
        if key == "flash_attn" and inline is None:
            # a value if one follows (current llama.cpp), else the older bare switch
            nxt = tokens[i].strip().lower() if i < len(tokens) else None
            if nxt is not None and nxt in _TRUTHY | _FALSEY | _AUTOY:
                inline = tokens[i]
                i += 1
            reader.apply(key, name, inline)
            continue
        if takes_value and inline is None:
            if i >= len(tokens):
                raise CommandParseError(f"{name} needs a value")
            inline = tokens[i]
            i += 1
        elif not takes_value and inline is not None and inline.strip().lower() in _FALSEY:
            continue  # --swa-full=false: leave it off
        reader.apply(key, name, inline)
        if key in _PASSED_ON:
            kept += [name, inline or ""]

    values = dict(reader.values)
    values.update(reader.override_values())
    if reader.rpc:
        values["rpc_servers"] = tuple(reader.rpc)
    if kept:
        values["extra_args"] = tuple(kept)
    given = set(values)
    warnings = reader.warnings
    fit_on = reader.extras.get("fit", "on") == "on"
    if program in _SERVER_NAMES and "n_parallel" not in values:
        # tools/server/server.cpp: n_parallel auto -> 4 slots, kv_unified forced on
        values["n_parallel"] = 4
        values["kv_unified"] = True
        warnings.append("no -np: llama-server uses 4 slots with a unified KV cache")
    ctx_from_model = "n_ctx" not in values
    if ctx_from_model:
        how = "-c 0" if reader.ctx_zero else "no -c"
        shrink = "" if reader.ctx_zero or not fit_on else " (--fit may then shrink it)"
        warnings.append(f"{how}: llama.cpp uses the model's training context{shrink}")
    if fit_on and (reader.ngl_auto or "n_gpu_layers" not in values):
        how = "-ngl auto" if reader.ngl_auto else "no -ngl"
        warnings.append(f"{how}: all layers on the GPU, unless --fit offloads fewer")
    try:
        settings = base.replace(**values)
    except ValueError as exc:
        raise CommandParseError(str(exc)) from None
    return ParsedCommand(
        program=program,
        model_path=reader.model_path,
        settings=settings,
        given=frozenset(given),
        ctx_from_model=ctx_from_model,
        extras=reader.extras,
        unknown=unknown,
        warnings=warnings,
    )


def parse_command(
    text: str, shell: str | None = None, *, base: Settings | None = None
) -> ParsedCommand:
    """Read a pasted command line; ``shell`` (posix, powershell, cmd) is guessed when None."""
    if not text.strip():
        raise CommandParseError("the command is empty")
    if len(text) > MAX_COMMAND_CHARS:
        raise CommandParseError(f"the text is {len(text)} characters long; kvgui reads a "
                                f"command of up to {MAX_COMMAND_CHARS} (paste a single command)")
    try:
        argv = split_command(text, shell or guess_shell(text))
    except ShellSyntaxError as exc:
        raise CommandParseError(str(exc)) from None
    return parse_args(argv, base=base)
