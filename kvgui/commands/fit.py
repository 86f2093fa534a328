"""``kvgui fit``: per K/V cache type, the largest context that fits; and the largest -ngl."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kvgui.cli import UsageError
from kvgui.commands import exit_status
from kvgui.commands.common import add_model_arg, add_settings_args, open_model, settings_from_args
from kvgui.commands.common import plan as common_plan
from kvgui.core.commandline.export import change_flags
from kvgui.core.memory.fit import COMMON_CACHE_PAIRS, MAX_CONTEXT, max_context, max_gpu_layers
from kvgui.core.sizes import format_bytes, format_tokens


def add_parser(sub: argparse._SubParsersAction, help_text: str) -> None:
    from kvgui.core.devices.budget import add_budget_args

    p = sub.add_parser("fit", help=help_text, description=help_text)
    add_model_arg(p)
    add_settings_args(p)
    add_budget_args(p)
    p.add_argument("--quants", action="store_true",
                   help="MODEL is a Hugging Face repo: plan every quant in it (reads only the "
                   "headers), per K/V pair")
    p.add_argument("--no-plan", dest="plan", action="store_false",
                   help="skip the planner (the fastest placement: -ngl, --n-cpu-moe, -nkvo, "
                   "with a predicted decode speed)")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    from kvgui.core.memory.estimate import estimate
    from kvgui.core.memory.memo import ModelMemo

    if args.quants:
        from kvgui.commands.fit_quants import run_quants

        return run_quants(args)
    model = open_model(args.model, catalog=True)
    settings = settings_from_args(args, model)
    plan = common_plan(args, bandwidth=args.plan)
    settings = settings.replace(rpc_servers=plan.rpc_servers)
    devices = plan.devices()
    if not any(d.budget is not None for d in devices):
        raise UsageError("no memory budget: pass --vram SIZE, --gpu INDEX or --gpu-model NAME")
    memo = ModelMemo(model)
    trained = model.n_ctx_train
    rows: list[dict[str, Any]] = []
    for tk, tv in COMMON_CACHE_PAIRS:
        s = settings.replace(type_k=tk, type_v=tv)
        est = estimate(model, s, devices, memo)
        if est.refused:
            f = est.refusals[0]
            rows.append({"type_k": tk, "type_v": tv, "max_ctx": None, "refused": True,
                         "error": f.message, "code": f.code.value,
                         "fix": change_flags(f.fix)})
            continue
        n = max_context(model, s, devices, memo=memo)
        beyond = bool(trained and n >= trained)
        shown = trained if beyond else n
        at = estimate(model, s.replace(n_ctx=max(shown, 256)), devices, memo)
        rows.append({"type_k": tk, "type_v": tv, "max_ctx": n, "max_ctx_shown": shown,
                     "kv_at_shown": at.kv, "beyond_trained": beyond,
                     "unbounded": n >= MAX_CONTEXT})
    ngl = max_gpu_layers(model, settings, devices, memo) if plan.gpus else 0
    result: dict[str, Any] = {
        "model": model.name, "n_ctx_train": trained,
        "budget": [{"name": d.name, "total": d.total, "reserved": d.reserved,
                    "budget": d.budget, "is_gpu": d.is_gpu} for d in plan.views],
        "types": rows,
        "max_gpu_layers": {"n_ctx": settings.n_ctx, "type_k": settings.type_k,
                           "type_v": settings.type_v, "gpus": len(plan.gpus),
                           "n_gpu_layers": ngl, "all": ngl == -1,
                           "of": len(model.layers) + 1},
    }
    planned = None
    if args.plan:
        from kvgui.core.memory.planner import plan as run_planner

        pairs = list(COMMON_CACHE_PAIRS)
        if (settings.type_k, settings.type_v) not in pairs:
            pairs.append((settings.type_k, settings.type_v))
        planned = run_planner(model, settings, devices, pairs=pairs, memo=memo)
        result["plan"] = {**planned.to_json(), "commands": {
            name: _flags(c.settings) for name, c in (("fastest", planned.fastest),
                                                      ("longest", planned.longest)) if c}}
    fitting = [r for r in rows if r.get("max_ctx")]
    # the status is of the settings given (-ngl, --n-cpu-moe…); the plan is advice beside it
    status = exit_status.FITS if fitting else (
        exit_status.REFUSED if all(r.get("refused") for r in rows) else exit_status.OVER)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return status
    print(f"{model.name}: the longest context per KV cache type that fits")
    for d in plan.views:
        if d.budget is None:
            continue
        reserve = f" ({format_bytes(d.total or 0)} less {format_bytes(d.reserved)} reserve)" \
            if d.reserved else ""
        print(f"  {d.name}: {format_bytes(d.budget)} budget{reserve}")
    print(f"  trained context: {format_tokens(trained) if trained else 'unknown'}"
          + (f" ({trained:,} tokens)" if trained else ""))
    print()
    print(f"{'K/V':<16}{'fits up to':>20}{'KV cache there':>18}")
    for r in rows:
        label = r["type_k"] if r["type_k"] == r["type_v"] else f"{r['type_k']}/{r['type_v']}"
        if r["max_ctx"] is None:
            fix = f" (fix: {' '.join(r['fix'])})" if r["fix"] else ""
            print(f"{label:<16}{'refused':>20}  {r['error']}{fix}")
        elif r["max_ctx"] == 0:
            print(f"{label:<16}{'does not fit':>20}")
        else:
            text = f"≥ {format_tokens(trained)} (trained)" if r["beyond_trained"] \
                else f"{format_tokens(r['max_ctx'])} ({r['max_ctx']:,})"
            print(f"{label:<16}{text:>20}{format_bytes(r['kv_at_shown']):>18}")
    if any(r.get("beyond_trained") for r in rows):
        print("(≥ trained: more would fit, but the model was not trained past it; --json has "
              "the raw figure)")
    print()
    if not plan.gpus:
        print(f"CPU only: every layer runs from RAM at -c {settings.n_ctx}")
    elif ngl == -1:
        print(f"at -c {settings.n_ctx}: all {len(model.layers) + 1} layers fit on the GPU "
              "(-ngl all)")
    else:
        print(f"at -c {settings.n_ctx} ({settings.type_k}/{settings.type_v}): "
              f"-ngl {ngl} of {len(model.layers) + 1} layers fit")
    if planned is not None:
        _print_plan(model, planned)
    return status


def _flags(s: Any) -> list[str]:
    from kvgui.core.commandline.export import llama_cli_args

    return llama_cli_args(s, "model.gguf")[3:]


def _label(pair: tuple[str, str]) -> str:
    return pair[0] if pair[0] == pair[1] else f"{pair[0]}/{pair[1]}"


def _print_plan(model: Any, planned: Any) -> None:
    from kvgui.core.commandline.shellquote import render

    n = len(model.layers)
    print()
    print("Plan: the fastest way to run it (decode speed predicted from the bytes each device "
          "reads per token over its memory bandwidth; the range is the kernels' efficiency)")
    for title, c in ((f"fastest at -c {planned.n_ctx}", planned.fastest),
                     ("longest context", planned.longest)):
        if c is None:
            print(f"  {title}: nothing fits")
            continue
        where = f"{c.cpu_layers} of {n + 1} layers on the CPU" if c.cpu_layers else \
            "every layer on the GPU"
        if c.cpu_expert_layers:
            where += f", experts of {c.cpu_expert_layers} layers on the CPU"
        ctx = f" {format_tokens(c.n_ctx)} ({c.n_ctx:,})," if title.startswith("longest") else ""
        print(f"  {title}:{ctx} {_label(c.pair)}, {c.placement.describe(n)}: {c.speed.text} "
              f"— {where}")
        print(f"      {render(_flags(c.settings))}")
    print(f"  per K/V pair at -c {planned.n_ctx}:")
    for pair, c in planned.by_pair:
        if c is None:
            print(f"    {_label(pair):<14}does not fit")
            continue
        mem = " + ".join(format_bytes(r) for r in c.required)
        print(f"    {_label(pair):<14}{c.placement.describe(n):<28}{c.speed.text:>18}   {mem}")
    if planned.fastest is not None:
        for a in planned.fastest.speed.assumptions:
            print(f"  · {a}")
