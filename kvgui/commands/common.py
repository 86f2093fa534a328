"""Flags shared by the subcommands, spelled as llama.cpp's common/arg.cpp spells them.

Users paste these between kvgui and llama-cli, so ``-c``, ``-ctk``, ``-fa on`` and friends
mean here exactly what they mean there.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from kvgui.cli import UsageError
from kvgui.core.commandline.parse import (
    CommandParseError,
    override_values,
    parse_override_tensor,
)
from kvgui.core.config import limits
from kvgui.core.config.settings import ALL_LAYERS, ALL_MOE_LAYERS, FlashAttn, Settings, SplitMode
from kvgui.core.gguf.ggml_types import CACHE_TYPE_NAMES
from kvgui.core.gguf.reader import GGUFError
from kvgui.core.model.info import ModelInfo, load_model

_DEFAULTS = Settings()


class _ModelPositional(argparse.Action):
    """MODEL that does not undo ``-hf`` (an absent optional positional writes its default)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        if values is not None:
            setattr(namespace, self.dest, values)
        elif getattr(namespace, self.dest, None) is None:
            setattr(namespace, self.dest, self.default)


def add_model_arg(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("model", metavar="MODEL", nargs="?", action=_ModelPositional,
                        help="a .gguf file (any part of a split model), or a Hugging Face model "
                        "as llama.cpp's -hf names it (org/repo[:QUANT]) or its URL")
    parser.add_argument("-hf", "-hfr", "--hf-repo", dest="model", metavar="REPO[:QUANT]",
                        help="a Hugging Face model, as llama.cpp's -hf takes it")


def _limited(name: str, flag: str, minimum: int | None = None):  # type: ignore[no-untyped-def]
    """A flag's whole number read as llama.cpp reads it (ASCII digits) and within the range
    llama.cpp's C type and limits allow (kvgui.core.config.limits), as a one-line error."""

    def parse(text: str) -> int:
        try:
            value = limits.parse_int(text, flag)
            if minimum is not None and value < minimum:
                raise limits.LimitError(f"{flag}: must be at least {minimum}, not {value}")
            if not (name == "n_ctx" and value == 0):
                limits.check(name, value)
        except limits.LimitError as exc:
            raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{flag}: ")) from None
        return value

    return parse


def _threads(text: str) -> int:
    """-t: a number of threads within ggml's limit, or -1 (llama.cpp's own choice)."""
    if text.strip() == "-1":
        return -1
    return int(_limited("n_threads", "-t")(text))


def _gpu_layers(text: str) -> int:
    if text in ("all", "-1"):
        return ALL_LAYERS
    if text == "auto":
        raise argparse.ArgumentTypeError(
            "-ngl auto lets llama.cpp pick at launch; kvgui needs a number or 'all' "
            "(use `kvgui fit` to find the largest that fits)")
    try:
        value = limits.parse_int(text, "-ngl")
    except limits.LimitError:
        raise argparse.ArgumentTypeError(f"expected a number or 'all', not {text!r}") from None
    if value < 0:
        return ALL_LAYERS  # llama.cpp: <= -2 means all
    try:
        return limits.check("n_gpu_layers", value)
    except limits.LimitError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_settings_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("llama.cpp settings (as llama-cli spells them)")
    g.add_argument("-c", "--ctx-size", dest="n_ctx", type=_limited("n_ctx", "-c", 0),
                   default=_DEFAULTS.n_ctx,
                   metavar="N", help=f"context size in tokens (default {_DEFAULTS.n_ctx}; "
                   "0 = the model's trained context)")
    g.add_argument("-ctk", "--cache-type-k", dest="type_k", choices=CACHE_TYPE_NAMES,
                   default=_DEFAULTS.type_k, metavar="TYPE",
                   help=f"K cache type: {', '.join(CACHE_TYPE_NAMES)} (default f16)")
    g.add_argument("-ctv", "--cache-type-v", dest="type_v", choices=CACHE_TYPE_NAMES,
                   default=_DEFAULTS.type_v, metavar="TYPE", help="V cache type (default f16)")
    g.add_argument("-fa", "--flash-attn", dest="flash_attn", default="auto",
                   choices=["on", "off", "auto"], help="flash attention (default auto)")
    g.add_argument("-ngl", "--gpu-layers", "--n-gpu-layers", dest="n_gpu_layers",
                   type=_gpu_layers, default=ALL_LAYERS, metavar="N",
                   help="layers on the GPU: a number or 'all' (default all)")
    g.add_argument("-b", "--batch-size", dest="n_batch", type=_limited("n_batch", "-b"),
                   default=_DEFAULTS.n_batch, metavar="N", help="logical batch (default 2048)")
    g.add_argument("-ub", "--ubatch-size", dest="n_ubatch", type=_limited("n_ubatch", "-ub"),
                   default=_DEFAULTS.n_ubatch, metavar="N", help="physical batch (default 512)")
    g.add_argument("-np", "--parallel", dest="n_parallel",
                   type=_limited("n_parallel", "-np"),
                   default=_DEFAULTS.n_parallel, metavar="N",
                   help="parallel sequences (default 1)")
    g.add_argument("--swa-full", dest="swa_full", action="store_true",
                   help="full-size cache for sliding-window layers")
    g.add_argument("-kvu", "--kv-unified", dest="kv_unified", action="store_true",
                   help="one KV buffer shared by all sequences")
    g.add_argument("-nkvo", "--no-kv-offload", dest="no_kv_offload", action="store_true",
                   help="keep the KV cache in system RAM")
    g.add_argument("-lm", "--load-mode", dest="load_mode", default=None,
                   choices=["auto", "none", "mmap", "mlock", "mmap+mlock", "dio"],
                   help="how llama.cpp loads the weights (none = read into memory)")
    g.add_argument("--no-mmap", dest="no_mmap", action="store_true",
                   help="older spelling of -lm none")
    g.add_argument("-ts", "--tensor-split", dest="tensor_split", default=None, metavar="N0,N1",
                   help="share of the layers per GPU, e.g. 3,1")
    g.add_argument("-sm", "--split-mode", dest="split_mode", default=_DEFAULTS.split_mode.value,
                   choices=[m.value for m in SplitMode],
                   help="how the model is split across GPUs (default layer)")
    g.add_argument("-mg", "--main-gpu", dest="main_gpu", type=_limited("main_gpu", "-mg", 0),
                   default=_DEFAULTS.main_gpu, metavar="INDEX",
                   help="the GPU for the whole model with -sm none (default 0)")
    g.add_argument("-t", "--threads", dest="n_threads", type=_threads, default=_DEFAULTS.n_threads,
                   metavar="N", help="CPU threads (default: llama.cpp's choice, the physical "
                   "cores)")
    g.add_argument("-nr", "--no-repack", dest="no_repack", action="store_true",
                   help="no repacked weight buffers for the CPU (AMX, …)")
    g.add_argument("-ot", "--override-tensor", dest="tensor_overrides", action=_Override,
                   kind="ot", metavar="PATTERN=BUFT,…",
                   help="weights whose name the regex PATTERN matches go to the buffer type "
                   "BUFT (CPU, CUDA0, RPC0[host:port] …); the first match wins")
    g.add_argument("-cmoe", "--cpu-moe", dest="tensor_overrides", action=_Override,
                   kind="cpu-moe", nargs=0, help="keep every layer's MoE experts on the CPU")
    g.add_argument("-ncmoe", "--n-cpu-moe", dest="tensor_overrides", action=_Override,
                   kind="moe", metavar="N",
                   help="keep the MoE experts of the first N layers on the CPU")
    g.add_argument("--rpc", dest="rpc_servers", action="append", metavar="HOST:PORT,…",
                   type=_rpc_servers,
                   help="llama.cpp RPC servers (ggml-rpc-server) as devices, before the GPUs")


def _rpc_servers(text: str) -> tuple[str, ...]:
    """--rpc: host:port endpoints, comma-separated, as ggml-rpc reads them."""
    try:
        return limits.check_rpc_servers(text.split(","), "--rpc")
    except limits.LimitError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("--rpc: ")) from None


class _Override(argparse.Action):
    """-ot, --cpu-moe and --n-cpu-moe into one list in the order given: llama.cpp appends
    them to one list and takes the first match (parse.override_values)."""

    def __init__(self, *args: Any, kind: str, **kwargs: Any) -> None:
        kwargs.setdefault("default", [])
        super().__init__(*args, **kwargs)
        self.kind = kind

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        events = list(getattr(namespace, self.dest, None) or [])
        flag = option_string or "-ot"
        try:
            if self.kind == "ot":
                events += [("ot", o) for o in parse_override_tensor(flag, str(values))]
            elif self.kind == "cpu-moe":
                events.append(("moe", ALL_MOE_LAYERS))
            else:
                n = limits.parse_int(str(values), flag)
                if n < 0:
                    raise limits.LimitError(f"{flag}: a number of layers is 0 or more, not {n}")
                events.append(("moe", limits.parse_checked(str(values), "n_cpu_moe", flag)))
        except (CommandParseError, limits.LimitError) as exc:
            raise argparse.ArgumentError(self, str(exc).removeprefix(f"{flag}: ")) from None
        setattr(namespace, self.dest, events)


def settings_from_args(args: argparse.Namespace, model: ModelInfo | None = None) -> Settings:
    """Settings from parsed flags; -c 0 becomes the model's trained context, as in llama.cpp."""
    n_ctx = args.n_ctx
    if n_ctx == 0:
        if model is None or not model.n_ctx_train:
            raise UsageError("-c 0 needs a model that declares its trained context")
        n_ctx = model.n_ctx_train
    split: tuple[float, ...] = ()
    if getattr(args, "tensor_split", None):
        try:
            split = tuple(float(x) for x in args.tensor_split.replace("/", ",").split(","))
        except ValueError:
            raise UsageError(f"-ts expects numbers like 3,1, not {args.tensor_split!r}") from None
    try:
        return Settings(
            n_ctx=n_ctx, type_k=args.type_k, type_v=args.type_v,
            flash_attn=FlashAttn(args.flash_attn), n_gpu_layers=args.n_gpu_layers,
            n_batch=args.n_batch, n_ubatch=args.n_ubatch, n_parallel=args.n_parallel,
            kv_offload=not getattr(args, "no_kv_offload", False),
            swa_full=args.swa_full, kv_unified=getattr(args, "kv_unified", False),
            mmap=not (getattr(args, "no_mmap", False)
                      or getattr(args, "load_mode", None) in ("none", "dio")),
            tensor_split=split,
            split_mode=SplitMode(getattr(args, "split_mode", _DEFAULTS.split_mode.value)),
            main_gpu=getattr(args, "main_gpu", _DEFAULTS.main_gpu),
            n_threads=getattr(args, "n_threads", _DEFAULTS.n_threads),
            mlock=getattr(args, "load_mode", None) in ("mlock", "mmap+mlock"),
            repack=not getattr(args, "no_repack", False),
            **override_values(getattr(args, "tensor_overrides", None) or []),
            rpc_servers=tuple(e for value in getattr(args, "rpc_servers", None) or []
                              for e in value),
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def open_model(path: str | None, *, catalog: bool = False, need_file: bool = False) -> ModelInfo:
    """The model at ``path`` -- a file, a Hub reference (its header, read remotely), or with
    ``catalog`` a catalog model by name, to plan before downloading -- or a one-line
    UsageError naming what is wrong with it. ``need_file``: the command runs llama.cpp on the
    model, so a Hub model must be downloaded (its path is then ``ModelInfo.path``)."""
    if not path:
        raise UsageError("give a MODEL: a .gguf file, or a Hub model (org/repo[:QUANT], -hf)")
    if not Path(path).exists():
        from kvgui.sources.modelref import parse_hub_ref

        if parse_hub_ref(path.removeprefix("hf:"), hub_hosts=_hub_hosts()) is not None:
            return _open_hub_model(path, need_file)
        entry = _catalog_entry(path) if catalog else None
        if entry is None:
            hint = " (nor a catalog model: see `kvgui estimate --list-models`)" if catalog \
                else ""
            raise UsageError(f"{path}: no such file{hint}")
        metadata, tensors, file_bytes = entry.header()
        return ModelInfo.from_header(metadata, tensors, path=None, file_bytes=file_bytes)
    try:
        return load_model(path)
    except GGUFError as exc:
        raise UsageError(str(exc)) from None
    except MemoryError:
        raise UsageError(f"{path}: header too large to read") from None


def _hub_hosts() -> tuple[str, ...]:
    import os
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "")).hostname
    return (host,) if host else ()


def _open_hub_model(text: str, need_file: bool) -> ModelInfo:
    from kvgui.sources.hub_errors import HubError
    from kvgui.sources.resolve import open_reference

    try:
        opened = open_reference(text)
    except (HubError, GGUFError) as exc:
        raise UsageError(str(exc)) from None
    if need_file and opened.local_path is None:
        raise UsageError(f"{text}: only its header has been read; download it first "
                         f"(kvgui download {text})")
    return opened.info


def _catalog_entry(text: str):  # type: ignore[no-untyped-def]
    """A catalog entry named like ``"Llama-3.1-8B-Instruct Q4_K_M"`` (case and quant optional)."""
    from kvgui.core.model.catalog import load_catalog

    wanted = text.strip().lower()
    entries = load_catalog()
    for e in entries:
        if wanted in (e.label.lower(), e.label.lower().replace(" ", "-")):
            return e
    return next((e for e in entries if e.name.lower() == wanted), None)


def catalog_listing() -> str:
    from kvgui.core.model.catalog import load_catalog
    from kvgui.core.sizes import format_bytes

    return "\n".join(f"{e.label:<40} {e.arch:<10} {format_bytes(e.file_bytes):>10}"
                     for e in load_catalog())


def plan(args: argparse.Namespace, *, bandwidth: bool = False) -> Any:
    """The BudgetPlan of the hardware flags, with the installed llama.cpp's CPU backend (its
    extra buffer types, and whether its kernels survive a decode: see runtime.cpu_kernels).
    ``bandwidth``: with the host RAM's bandwidth (probed once, then cached: membw.py)."""
    from kvgui.core.devices.budget import plan_from_args
    from kvgui.runtime.llama_backend import probe_host_cpu

    host_bw = 0.0
    if bandwidth:
        from kvgui.core.devices.hardware.membw import host_bandwidth

        found = host_bandwidth()
        host_bw = found.bytes_per_s if found else 0.0
    return plan_from_args(args, host=probe_host_cpu(), host_bandwidth=host_bw)
