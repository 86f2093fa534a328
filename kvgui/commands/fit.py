"""``kvgui fit``: per K/V cache type, the largest context that fits; and the largest -ngl."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kvgui.cli import UsageError
from kvgui.commands.common import add_model_arg, add_settings_args, open_model, settings_from_args
from kvgui.core.memory.fit import COMMON_CACHE_PAIRS, MAX_CONTEXT, max_context, max_gpu_layers
from kvgui.core.sizes import format_bytes


def add_parser(sub: argparse._SubParsersAction, help_text: str) -> None:
    from kvgui.core.devices.budget import add_budget_args

    p = sub.add_parser("fit", help=help_text, description=help_text)
    add_model_arg(p)
    add_settings_args(p)
    add_budget_args(p)
    p.add_argument("--quants", action="store_true",
                   help="MODEL is a Hugging Face repo: plan every quant in it (reads only the "
                   "headers), per K/V pair")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from kvgui.core.devices.budget import devices_from_args
    from kvgui.core.memory.estimate import estimate

    if args.quants:
        from kvgui.commands.fit_quants import run_quants

        return run_quants(args)
    model = open_model(args.model, catalog=True)
    settings = settings_from_args(args, model)
    devices = devices_from_args(args)
    if not any(d.budget is not None for d in devices):
        raise UsageError("no memory budget: pass --vram SIZE, --gpu INDEX or --gpu-model NAME")
    rows: list[dict[str, Any]] = []
    for tk, tv in COMMON_CACHE_PAIRS:
        s = settings.replace(type_k=tk, type_v=tv)
        est = estimate(model, s, devices)
        if est.errors:
            rows.append({"type_k": tk, "type_v": tv, "max_ctx": None, "error": est.errors[0]})
            continue
        n = max_context(model, s, devices)
        limited = n >= MAX_CONTEXT
        at = estimate(model, s.replace(n_ctx=max(n, 256)), devices)
        rows.append({"type_k": tk, "type_v": tv, "max_ctx": n, "kv_at_max": at.kv,
                     "beyond_trained": bool(model.n_ctx_train and n > model.n_ctx_train),
                     "unbounded": limited})
    ngl = max_gpu_layers(model, settings, devices)
    result = {
        "model": model.name, "n_ctx_train": model.n_ctx_train,
        "budget": [{"name": d.name, "budget": d.budget} for d in devices],
        "types": rows,
        "max_gpu_layers": {"n_ctx": settings.n_ctx, "type_k": settings.type_k,
                           "type_v": settings.type_v,
                           "n_gpu_layers": ngl, "all": ngl == -1,
                           "of": len(model.layers) + 1},
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    budgets = ", ".join(f"{d.name} {format_bytes(d.budget)}" for d in devices
                        if d.budget is not None)
    print(f"{model.name}: largest context per KV cache type within {budgets}")
    print(f"(trained context {model.n_ctx_train})")
    print()
    print(f"{'K/V':<16}{'max context':>14}{'KV cache there':>18}")
    for r in rows:
        label = r["type_k"] if r["type_k"] == r["type_v"] else f"{r['type_k']}/{r['type_v']}"
        if r["max_ctx"] is None:
            print(f"{label:<16}{'refused':>14}  {r['error']}")
            continue
        note = "  (beyond trained context)" if r["beyond_trained"] else ""
        if r["max_ctx"] == 0:
            print(f"{label:<16}{'does not fit':>14}")
        else:
            print(f"{label:<16}{r['max_ctx']:>14}{format_bytes(r['kv_at_max']):>18}{note}")
    print()
    if ngl == -1:
        print(f"at -c {settings.n_ctx}: all {len(model.layers) + 1} layers fit on the GPU "
              "(-ngl all)")
    else:
        print(f"at -c {settings.n_ctx} ({settings.type_k}/{settings.type_v}): "
              f"-ngl {ngl} of {len(model.layers) + 1} layers fit")
    return 0
