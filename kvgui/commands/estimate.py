"""``kvgui estimate``: what llama.cpp will allocate, per device, and whether it fits."""

from __future__ import annotations

import argparse
import json
import sys

from kvgui.cli import UsageError
from kvgui.commands import exit_status
from kvgui.commands.common import (
    add_model_arg,
    add_settings_args,
    open_model,
    plan,
    settings_from_args,
)
from kvgui.core.commandline.export import change_flags
from kvgui.core.memory.estimate import PARTS, Estimate, Verdict, estimate
from kvgui.core.sizes import format_bytes


def add_parser(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("estimate", help=help_text, description=help_text)
    add_model_arg(p, required=False)
    add_settings_args(p)
    _add_budget_args(p)
    p.add_argument("--from-command", metavar="COMMAND",
                   help="estimate a pasted llama-cli / llama-server command line instead")
    p.add_argument("--json", action="store_true", help="print one JSON object (sizes in bytes)")
    p.add_argument("--list-models", action="store_true",
                   help="list the built-in catalog models MODEL may name instead of a file")


def _add_budget_args(p: argparse.ArgumentParser) -> None:
    from kvgui.core.devices.budget import add_budget_args

    add_budget_args(p)


def run(args: argparse.Namespace) -> int:

    if args.list_models:
        from kvgui.commands.common import catalog_listing

        print(catalog_listing())
        return 0
    if args.from_command:
        from kvgui.core.commandline.parse import CommandParseError, parse_command

        try:
            parsed = parse_command(args.from_command)
        except CommandParseError as exc:
            raise UsageError(str(exc)) from None
        path = parsed.model_path or args.model
        if not path:
            raise UsageError("the command has no -m MODEL, and no MODEL was given")
        model = open_model(path, catalog=True)
        settings = parsed.settings
        if parsed.ctx_from_model:  # no -c (or -c 0): llama.cpp uses the trained context
            settings = settings.replace(n_ctx=model.n_ctx_train or settings.n_ctx)
        unknown = list(parsed.unknown)
        for warning in parsed.warnings:
            print(f"kvgui estimate: note: {warning}", file=sys.stderr)
    else:
        if not args.model:
            raise UsageError("give a MODEL (a .gguf file) or --from-command")
        model = open_model(args.model, catalog=True)
        settings = settings_from_args(args, model)
        unknown = []
    devices = plan(args).devices()
    est = estimate(model, settings, devices)
    if args.json:
        data = est.to_json()
        if unknown:
            data["unknown_flags"] = unknown
        json.dump(data, sys.stdout, indent=2)
        print()
    else:
        print(render(est))
        if unknown:
            print(f"kept but not estimated: {' '.join(unknown)}")
    return exit_status.for_verdict(est.verdict)


def render(est: Estimate) -> str:
    m, s = est.model, est.settings
    lines = [f"{m.name}  ({m.arch}, {m.file_type}, {format_bytes(m.file_bytes)} file, "
             f"{m.n_layer} layers)"]
    padded = f" (llama.cpp pads {s.n_ctx} to {est.n_ctx})" if est.n_ctx != s.n_ctx else ""
    gpu_layers = f"{est.n_gpu_layers}/{len(m.layers) + 1} layers on GPU" \
        if any(d.is_gpu for d in est.devices) else "CPU only"
    lines.append(f"context {est.n_ctx}{padded}; K {s.type_k}, V {s.type_v}; flash attention "
                 f"{'on' if est.flash_attn else 'off'}; {gpu_layers}")
    for note in m.notes:
        lines.append(f"  · {note}")
    lines.append("")
    cols = list(est.devices)
    width = max(14, *(len(d.name) + 2 for d in cols))
    header = f"{'':<12}" + "".join(f"{d.name:>{width}}" for d in cols)
    if len(cols) > 1:
        header += f"{'all':>{width}}"
    lines.append(header)

    def row(label: str, values: list[int | None], total: int | None = None) -> str:
        cells = "".join(f"{format_bytes(v) if v is not None else '—':>{width}}" for v in values)
        if len(cols) > 1:
            cells += f"{format_bytes(total) if total is not None else '':>{width}}"
        return f"{label:<12}{cells}"

    if est.refused:
        # llama.cpp would not create this context: no memory figures to show for it
        lines.append(row("weights", [d.weights for d in cols], est.weights))
    else:
        for key, label in PARTS:
            values = [getattr(d, key) for d in cols]
            if key == "state" and not any(values):
                continue  # no recurrent layers
            lines.append(row(label, values, sum(values)))
        lines.append(row("total", [d.total for d in cols], est.total))
        if any(d.budget is not None for d in cols):
            lines.append(row("budget", [d.budget for d in cols]))
            lines.append(row("headroom", [d.headroom for d in cols]))
    lines.append("")
    for f in est.refusals:
        fix = change_flags(f.fix)
        lines.append(f"refused: {f.message}" + (f" (fix: {' '.join(fix)})" if fix else ""))
    for w in est.warnings:
        lines.append(f"warning: {w}")
    for n in est.notes:
        lines.append(f"note: {n}")
    verdict = est.verdict
    if verdict is Verdict.FITS:
        lines.append("fits: yes")
    elif verdict is Verdict.OVER:
        over = [d for d in cols if d.fits is False]
        lines.append("fits: NO — " + "; ".join(
            f"{d.name} over by {format_bytes(-(d.headroom or 0))}" for d in over))
    elif verdict is Verdict.REFUSED:
        lines.append("fits: NO — llama.cpp would refuse these settings")
    else:
        lines.append("fits: unknown (no memory budget; pass --vram SIZE or --gpu INDEX)")
    return "\n".join(lines)
