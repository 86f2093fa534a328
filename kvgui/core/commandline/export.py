"""The Settings as a llama-cli / llama-server argument list, or as llama-cpp-python code.

Flags are spelled as the bundled llama.cpp's common/arg.cpp spells them, and only flags the
target program registers are emitted (arg.cpp filters options per tool with set_examples: an
option of another tool is an "invalid argument" error). ``-c`` and ``-ngl`` are always passed:
with them set, llama.cpp's ``--fit`` (on by default) can change neither (common/fit.cpp keeps a
user-set n_ctx and aborts fitting when n_gpu_layers is not the default), so the process uses
exactly these numbers. llama-server always gets ``-np``: its default is "auto", which means
4 slots with a unified KV cache (tools/server/server.cpp), not kvgui's 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kvgui.core.commandline.arg_table import arg_table, split_for_tool
from kvgui.core.commandline.llama_params import (
    LLAMA_CPP_PYTHON_DEFAULTS,
    llama_cpp_python_kwargs,
    llama_params,
    load_mode_arg,
)
from kvgui.core.config.settings import (
    ALL_LAYERS,
    ALL_MOE_LAYERS,
    AUTO_THREADS,
    FFN_EXPS_REGEX,
    FlashAttn,
    Settings,
    SplitMode,
)

LLAMA_CLI = "llama-cli"
LLAMA_SERVER = "llama-server"
DEFAULT_HOST = "127.0.0.1"  # common.h hostnames default
DEFAULT_PORT = 8080  # common.h port default
DEFAULT_PROMPT = "Hello! Who are you?"

_DEFAULTS = Settings()


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def tensor_split_arg(split: Sequence[float]) -> str:
    """``-ts`` value: proportions, comma-separated ("3,1")."""
    return ",".join(_num(x) for x in split)


def ngl_arg(n_gpu_layers: int) -> str:
    """``-ngl`` value: kvgui's -1 is llama.cpp's ``all`` (arg.cpp maps it to -2, every layer)."""
    return "all" if n_gpu_layers == ALL_LAYERS else str(n_gpu_layers)


_CHANGE_FLAGS = {"type_k": "-ctk", "type_v": "-ctv", "flash_attn": "-fa", "n_ctx": "-c",
                 "n_gpu_layers": "-ngl", "n_batch": "-b", "n_ubatch": "-ub", "n_parallel": "-np"}


def change_flags(changes: Mapping[str, Any]) -> list[str]:
    """A Settings change (a refusal's fix) as the llama.cpp flags that make it: -fa auto."""
    out: list[str] = []
    for name, value in changes.items():
        if name == "repack":
            out += [] if value else ["-nr"]
            continue
        flag = _CHANGE_FLAGS.get(name)
        if flag is None:
            continue
        text = ngl_arg(value) if name == "n_gpu_layers" else str(getattr(value, "value", value))
        out += [flag, text]
    return out


def _settings_args(s: Settings, *, server: bool, full: bool) -> list[str]:
    d = _DEFAULTS
    args = ["-c", str(s.n_ctx), "-ngl", ngl_arg(s.n_gpu_layers)]
    if full or s.type_k != d.type_k:
        args += ["-ctk", s.type_k]
    if full or s.type_v != d.type_v:
        args += ["-ctv", s.type_v]
    if full or s.flash_attn != d.flash_attn:
        args += ["-fa", s.flash_attn.value]
    if full or s.n_batch != d.n_batch:
        args += ["-b", str(s.n_batch)]
    if full or s.n_ubatch != d.n_ubatch:
        args += ["-ub", str(s.n_ubatch)]
    if server or full or s.n_parallel != d.n_parallel:
        args += ["-np", str(s.n_parallel)]
    if s.swa_full:
        args.append("--swa-full")  # there is no negative form; off is the default
    if not s.kv_offload:
        args.append("-nkvo")
    elif full:
        args.append("-kvo")
    if server:  # -kvu is registered for llama-server, not for llama-cli
        if s.kv_unified:
            args.append("-kvu")
        elif full:
            args.append("-no-kvu")
    if (mode := load_mode_arg(s)) is not None:
        args += ["-lm", mode]  # this llama.cpp has --load-mode instead of --no-mmap/--mlock
    if s.tensor_split:
        args += ["-ts", tensor_split_arg(s.tensor_split)]
    args += tensor_override_args(s)
    if full or s.split_mode is not SplitMode.LAYER:
        args += ["-sm", s.split_mode.value]
    if full or s.main_gpu != d.main_gpu:
        args += ["-mg", str(s.main_gpu)]
    if s.n_threads != AUTO_THREADS:  # "-t -1" would mean every logical CPU, not the default
        args += ["-t", str(s.n_threads)]
    if not s.repack:
        args.append("-nr")
    elif full:
        args.append("--repack")
    return args


def tensor_override_args(s: Settings) -> list[str]:
    """--rpc, -ot, --cpu-moe / --n-cpu-moe, in this order: arg.cpp looks an -ot buffer type up
    among the devices registered when it reads the -ot (an RPC server's only after its
    --rpc), and appends the overrides in the order given, which is Settings' order (the -ot
    entries first, then the experts of --n-cpu-moe: the first match wins)."""
    args: list[str] = []
    if s.rpc_servers:
        args += ["--rpc", ",".join(s.rpc_servers)]
    if s.override_tensor:
        args += ["-ot", ",".join(f"{pattern}={buft}" for pattern, buft in s.override_tensor)]
    if s.n_cpu_moe == ALL_MOE_LAYERS:
        args.append("--cpu-moe")
    elif s.n_cpu_moe:
        args += ["--n-cpu-moe", str(s.n_cpu_moe)]
    return args


def llama_cli_args(
    settings: Settings,
    model_path: str,
    *,
    system_prompt: str | None = None,
    full: bool = False,
    program: str = LLAMA_CLI,
    extra_args: Sequence[str] = (),
    model_args: Sequence[str] | None = None,
) -> list[str]:
    """argv for llama-cli: program, -m, -c, -ngl, then non-default settings (all if ``full``).

    The settings' kept flags (``Settings.extra_args``) that llama-cli accepts, then
    ``extra_args``, go last, unchanged. ``model_args`` replaces ``-m model_path``
    (``-hf repo:quant`` for a Hub model).
    """
    model = list(model_args) if model_args else ["-m", str(model_path)]
    args = [program, *model, *_settings_args(settings, server=False, full=full)]
    if system_prompt:
        args += ["-sys", system_prompt]
    return args + kept_args(settings, LLAMA_CLI) + list(extra_args)


def llama_server_args(
    settings: Settings,
    model_path: str,
    host: str | None = None,
    port: int | None = None,
    *,
    full: bool = False,
    program: str = LLAMA_SERVER,
    extra_args: Sequence[str] = (),
    model_args: Sequence[str] | None = None,
) -> list[str]:
    """argv for llama-server; ``-np`` always, ``--host``/``--port`` when given (or ``full``;
    then they replace a kept --host/--port), the kept flags llama-server accepts last.
    ``model_args`` replaces ``-m model_path`` (``-hf repo:quant`` for a Hub model)."""
    model = list(model_args) if model_args else ["-m", str(model_path)]
    args = [program, *model, *_settings_args(settings, server=True, full=full)]
    kept = kept_args(settings, LLAMA_SERVER)
    if host is not None or full:
        kept = _without(kept, "--host")
    if port is not None or full:
        kept = _without(kept, "--port")
    if host is not None or full:
        args += ["--host", host if host is not None else DEFAULT_HOST]
    if port is not None or full:
        args += ["--port", str(port if port is not None else DEFAULT_PORT)]
    return args + kept + list(extra_args)


def kept_args(settings: Settings, tool: str) -> list[str]:
    """The settings' kept flags that ``tool`` accepts (in their order, values attached)."""
    return split_for_tool(tool, settings.extra_args)[0]


def _without(args: list[str], flag: str) -> list[str]:
    out: list[str] = []
    for group in arg_table().groups(args):
        if group[0].split("=", 1)[0] != flag:
            out.extend(group)
    return out


def export_notes(
    settings: Settings, target: str, *, system_prompt: str | None = None
) -> list[str]:
    """What ``target`` (llama-cli, llama-server, python) cannot take from these settings."""
    notes = []
    if settings.extra_args and target in (LLAMA_CLI, LLAMA_SERVER):
        dropped = split_for_tool(target, settings.extra_args)[1]
        if dropped:
            notes.append(f"not options of {target}, left out: {' '.join(dropped)}")
        table = arg_table()
        unknown = [g[0] for g in table.groups(settings.extra_args)
                   if table.spec(g[0]) is None and g[0].startswith("-")]
        if unknown:
            notes.append("not options of the bundled llama.cpp (kept as given; a newer or "
                         f"older build may differ): {' '.join(unknown)}")
    elif settings.extra_args and target == "python":
        notes.append("llama.cpp flags kept from the import are not part of the Python code: "
                     + " ".join(settings.extra_args))
    if target == LLAMA_CLI and settings.kv_unified and settings.n_parallel > 1:
        notes.append("llama-cli has no -kvu (--kv-unified); it was left out")
    if target == LLAMA_SERVER and system_prompt:
        notes.append("llama-server has no -sys; send the system prompt with each request")
    if target == "python":
        if settings.n_parallel > 1 or settings.kv_unified:
            notes.append(
                "llama-cpp-python decodes one sequence: -np and -kvu have no equivalent there"
            )
        if not settings.repack:
            notes.append("llama-cpp-python has no keyword for -nr (use_extra_bufts=False): "
                         "kvgui's own worker sets it on the model params")
        if settings.flash_attn is FlashAttn.AUTO:
            notes.append(
                "llama-cpp-python 0.3.36 takes flash_attn as True/False only, not 'auto'"
            )
    return notes


def _py_str(text: str) -> str:
    return repr(str(text))


# Written in every snippet: the keywords whose llama-cpp-python default is not llama-cli's,
# or that a reader looks for first; the others only when they differ from its default.
_SNIPPET_ALWAYS = ("n_ctx", "n_gpu_layers", "type_k", "type_v", "flash_attn", "n_batch",
                   "n_ubatch", "swa_full")
_SNIPPET_COMMENTS = {
    "type_k": lambda s: f"{s.type_k} (ggml type id)",
    "type_v": lambda s: f"{s.type_v} (ggml type id)",
    "n_gpu_layers": lambda s: "all layers" if s.n_gpu_layers == ALL_LAYERS else "",
    "flash_attn": lambda s: "llama.cpp: -fa auto" if s.flash_attn is FlashAttn.AUTO else "",
    "split_mode": lambda s: f"-sm {s.split_mode.value}",
}


# The part of a snippet that sets what Llama() has no keyword for: RPC servers registered as
# arg.cpp's add_rpc_devices does, and llama_model_params.tensor_buft_overrides (-ot,
# --n-cpu-moe) as a NULL-terminated array with each device's buffer type, written on the
# struct as llama-cpp-python creates its model (kvgui's own worker does the same:
# kvgui.runtime.llama_structs).
_SNIPPET_STRUCTS = '''\
import ctypes
import pathlib

import llama_cpp
import llama_cpp._internals
from llama_cpp._ctypes_extensions import load_shared_library

_lib = pathlib.Path(llama_cpp.__file__).parent / "lib"
_base, _ggml = load_shared_library("ggml-base", _lib), load_shared_library("ggml", _lib)
_vp = ctypes.c_void_p
for _f, _res, _args in (
        (_base.ggml_backend_dev_buffer_type, _vp, [_vp]),
        (_base.ggml_backend_buft_name, ctypes.c_char_p, [_vp]),
        (_base.ggml_backend_reg_get_proc_address, _vp, [_vp, ctypes.c_char_p]),
        (_ggml.ggml_backend_dev_count, ctypes.c_size_t, []),
        (_ggml.ggml_backend_dev_get, _vp, [ctypes.c_size_t]),
        (_ggml.ggml_backend_reg_by_name, _vp, [ctypes.c_char_p]),
        (_ggml.ggml_backend_register, None, [_vp])):
    _f.restype, _f.argtypes = _res, _args

if RPC_SERVERS:  # llama-cli's --rpc
    if not llama_cpp.llama_supports_rpc():
        raise SystemExit("this llama-cpp-python has no RPC backend: reinstall it with "
                         "CMAKE_ARGS=-DGGML_RPC=on, or use llama-cli / llama-server --rpc")
    _reg = _ggml.ggml_backend_reg_by_name(b"RPC")
    _add = ctypes.CFUNCTYPE(_vp, ctypes.c_char_p)(
        _base.ggml_backend_reg_get_proc_address(_reg, b"ggml_backend_rpc_add_server"))
    for _endpoint in RPC_SERVERS:
        _ggml.ggml_backend_register(_add(_endpoint.encode()))


class _BuftOverride(ctypes.Structure):  # llama.h llama_model_tensor_buft_override
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", _vp)]


_bufts = {}
for _i in range(_ggml.ggml_backend_dev_count()):
    _buft = _base.ggml_backend_dev_buffer_type(_ggml.ggml_backend_dev_get(_i))
    if _buft:
        _bufts[_base.ggml_backend_buft_name(_buft).decode()] = _buft
_overrides = (_BuftOverride * (len(TENSOR_OVERRIDES) + 1))()  # NULL-terminated
for _i, (_pattern, _name) in enumerate(TENSOR_OVERRIDES):
    _overrides[_i].pattern, _overrides[_i].buft = _pattern.encode(), _bufts[_name]


class _Model(llama_cpp._internals.LlamaModel):
    def __init__(self, *, path_model, params, verbose=True):
        if TENSOR_OVERRIDES:
            params.tensor_buft_overrides = ctypes.cast(_overrides, _vp)
        super().__init__(path_model=path_model, params=params, verbose=verbose)


llama_cpp._internals.LlamaModel = _Model

'''


def _snippet_model_params(s: Settings) -> list[str]:
    """The snippet's lines for RPC servers and tensor overrides, or none when unset."""
    if not (s.rpc_servers or s.override_tensor or s.n_cpu_moe):
        return []
    lines = [f"RPC_SERVERS = {list(s.rpc_servers)!r}"]
    what = [f"-ot {','.join(f'{p}={b}' for p, b in s.override_tensor)}"] \
        if s.override_tensor else []
    overrides = repr([tuple(o) for o in s.override_tensor])
    if s.n_cpu_moe == ALL_MOE_LAYERS:
        what.append("--cpu-moe")
        overrides += f" + [({FFN_EXPS_REGEX!r}, 'CPU')]"
    elif s.n_cpu_moe:
        what.append(f"--n-cpu-moe {s.n_cpu_moe}")
        overrides += (f" + [(rf'blk\\.{{il}}{FFN_EXPS_REGEX}', 'CPU') "
                      f"for il in range({s.n_cpu_moe})]")
    if what:
        lines.append(f"# {'; '.join(what)} (the first matching pattern wins)")
    lines += [f"TENSOR_OVERRIDES = {overrides}", ""]
    return lines + _SNIPPET_STRUCTS.splitlines() + [""]


def python_snippet(
    settings: Settings,
    model_path: str,
    *,
    flash_attn_resolved: bool | None = None,
    system_prompt: str | None = None,
    prompt: str = DEFAULT_PROMPT,
    max_tokens: int = 128,
    full: bool = False,
) -> str:
    """A llama-cpp-python script that loads the model with these settings and chats once.

    The ``Llama()`` keywords are generated from the one translation
    (``llama_params.llama_cpp_python_kwargs``). llama-cpp-python's own defaults differ from
    llama-cli's (n_batch 512, swa_full on, flash attention off), so those are always written
    out; the rest when they differ from its defaults (all with ``full``). The thread count is
    written only when the Settings name one: llama.cpp's choice depends on the machine.
    """
    s = settings
    kwargs = llama_cpp_python_kwargs(llama_params(s), flash_attn_resolved=flash_attn_resolved)
    if s.n_threads == AUTO_THREADS:
        del kwargs["n_threads"], kwargs["n_threads_batch"]
    lines = ["from llama_cpp import Llama", ""]
    lines += _snippet_model_params(s)
    lines += [
        "llm = Llama(",
        f"    model_path={_py_str(model_path)},",
    ]
    for name, value in kwargs.items():
        default = LLAMA_CPP_PYTHON_DEFAULTS[name]
        if name not in _SNIPPET_ALWAYS and not full and value == default:
            continue
        if name == "tensor_split" and value is None:
            continue
        comment = _SNIPPET_COMMENTS.get(name, lambda _s: "")(s)
        lines.append(f"    {name}={value!r},{'  # ' + comment if comment else ''}")
    lines.append(")")
    for note in export_notes(s, "python"):
        if "one sequence" in note or "-nr" in note:
            lines.append(f"# {note}")
    lines += ["", "messages = ["]
    if system_prompt:
        lines.append(f'    {{"role": "system", "content": {_py_str(system_prompt)}}},')
    lines += [
        f'    {{"role": "user", "content": {_py_str(prompt)}}},',
        "]",
        f"reply = llm.create_chat_completion(messages=messages, max_tokens={max_tokens})",
        'print(reply["choices"][0]["message"]["content"])',
        "",
    ]
    return "\n".join(lines)
