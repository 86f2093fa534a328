"""``kvgui verify``: kvgui's estimate beside what the bundled llama.cpp itself would allocate.

llama.cpp is asked through a dry run (no weights read, no cache allocated; see
kvgui.runtime.dryrun), with exactly the settings the estimate used.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kvgui.commands import exit_status
from kvgui.commands.common import (
    add_model_arg,
    add_settings_args,
    open_model,
    plan,
    settings_from_args,
)
from kvgui.core.sizes import MiB as MIB
from kvgui.core.sizes import format_bytes
from kvgui.runtime.llama_log import LOGGED_PRECISION_BYTES

ROWS = (
    ("weights", "weights"),
    ("kv_k", "K cache"),
    ("kv_v", "V cache"),
    ("kv", "KV cache"),
    ("state", "recurrent state"),
    ("compute", "compute buffers"),
    ("output", "output buffer"),
    ("total", "total"),
)


def add_parser(sub: argparse._SubParsersAction, help_text: str) -> None:
    from kvgui.core.devices.budget import add_budget_args

    p = sub.add_parser("verify", help=help_text, description=help_text)
    add_model_arg(p)
    add_settings_args(p)
    add_budget_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (sizes in bytes)")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="give up on llama.cpp after S seconds (default 60)")


def run(args: argparse.Namespace) -> int:
    from kvgui.core.devices.device_budget import DeviceBudget, cpu
    from kvgui.core.memory.estimate import estimate
    from kvgui.runtime.dryrun import DryRunError, dry_run
    from kvgui.runtime.verification import layout_note

    model = open_model(args.model, need_file=True)
    args.model = model.path or args.model  # a Hub model: its file in the Hub cache
    settings = settings_from_args(args, model)
    planned = _planned_gpus(args)
    try:
        llama = dry_run(args.model, settings, timeout=args.timeout)
        error = None
    except DryRunError as exc:
        llama, error = None, exc
    # The estimate places memory on the devices this llama.cpp build sees.
    gpus = [DeviceBudget(d.name, None) for d in (llama.devices if llama else [])
            if d.type in ("gpu", "igpu")]
    est = estimate(model, settings, [*gpus, cpu()])
    est_mem = est.memory_json()
    data: dict[str, Any] = {
        "model": str(args.model),
        "settings": settings.to_dict(),
        "estimate": est_mem,
        "llama_cpp": llama.memory() if llama else None,
        "n_ctx": {"estimate": est.n_ctx, "llama_cpp": llama.n_ctx if llama else None},
        "flash_attn": {"estimate": est.flash_attn,
                       "llama_cpp": llama.flash_attn if llama else None},
        "exact": list(llama.exact_fields) if llama else [],
        "devices": [d.__dict__ for d in llama.devices] if llama else [],
        "buffers": [b.__dict__ for b in llama.exact or []] if llama else [],
        "estimate_errors": list(est.errors),
        "error": str(error) if error else None,
        "layout": {"verified": [d.name for d in est.devices],
                   "planned": planned,
                   "note": layout_note(planned, [d.name for d in gpus])},
    }
    if llama:
        data["difference"] = {k: est_mem.get(k, 0) - v for k, v in llama.memory().items()}
        data["kv_caches"] = [c.__dict__ for c in llama.kv_caches]
        data["wall_s"] = llama.stats.get("process_s")
    if args.json:
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        print(render(data, error.log_tail if error else ""))
    return exit_status.FITS if llama else exit_status.LLAMA_FAILED


def _planned_gpus(args: argparse.Namespace) -> list[str]:
    """The GPUs the hardware flags plan for (none given: none, the dry run's own)."""
    if not any(getattr(args, f, None) for f in ("gpu", "gpu_model", "vram")):
        return []
    return [g.name for g in plan(args).gpus]


def _cell(n: int | None) -> str:
    return "" if n is None else format_bytes(n)


def _diff(d: int, exact: bool) -> str:
    if d == 0:
        return "same"
    if not exact and abs(d) <= LOGGED_PRECISION_BYTES:
        return "same (to 0.01 MiB)"
    sign = "+" if d > 0 else "-"
    if abs(d) < MIB // 100:
        return f"{sign}{abs(d)} B"
    return f"{sign}{format_bytes(abs(d))} ({sign}{abs(d)} B)"


def render(data: dict[str, Any], log_tail: str = "") -> str:
    est, llama = data["estimate"], data["llama_cpp"]
    s = data["settings"]
    lines = [f"{data['model']}", data["layout"]["note"],
             f"settings: -c {s['n_ctx']} -ctk {s['type_k']} -ctv {s['type_v']} "
             f"-fa {s['flash_attn']} -ngl {'all' if s['n_gpu_layers'] < 0 else s['n_gpu_layers']}"
             f" -b {s['n_batch']} -ub {s['n_ubatch']} -np {s['n_parallel']}"]
    n_ctx, fa = data["n_ctx"], data["flash_attn"]
    if llama is None:
        lines.append(str(data["error"]))
        if log_tail:
            lines += ["  " + line for line in log_tail.splitlines()[-3:]]
    else:
        devs = ", ".join(f"{d['name']} ({d['description']})" for d in data["devices"])
        lines.append(f"llama.cpp devices: {devs or 'none reported'}")
        lines.append(f"n_ctx: estimate {n_ctx['estimate']}, llama.cpp {n_ctx['llama_cpp']}; "
                     f"flash attention: estimate {'on' if fa['estimate'] else 'off'}, "
                     f"llama.cpp {'on' if fa['llama_cpp'] else 'off'}")
    for err in data["estimate_errors"]:
        lines.append(f"estimate error: {err}")
    lines.append("")
    head = f"{'':18}{'estimate':>14}{'llama.cpp':>14}   difference"
    lines.append(head)
    for key, label in ROWS:
        e = est.get(key)
        ll = llama.get(key) if llama else None
        if not e and not ll:
            continue
        diff = "" if ll is None or e is None else _diff(e - ll, key in data["exact"])
        mark = "" if ll is None or key in data["exact"] else " ~"
        lines.append(f"{label:18}{_cell(e):>14}{_cell(ll):>14}{mark:2} {diff}")
    if llama:
        lines.append("")
        lines.append("~ llama.cpp logs this in MiB with 2 decimals; the others are exact bytes"
                     if data["exact"] else "~ llama.cpp's log gives MiB with 2 decimals")
        for c in data.get("kv_caches", []):
            role = f"{c['role']} " if c["role"] else ""
            lines.append(f"  {role}KV cache: {c['cells']} cells x {c['layers']} layers, "
                         f"K {c['type_k']} {c['k_mib']:.2f} MiB, V {c['type_v']} "
                         f"{c['v_mib']:.2f} MiB")
        if data.get("wall_s") is not None:
            lines.append(f"llama.cpp dry run took {data['wall_s']:.2f} s")
    return "\n".join(lines)
