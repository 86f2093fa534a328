"""``kvgui fit REPO --quants``: every quant of a Hugging Face repo x K/V cache pairs.

Only the headers are read (kvgui.sources.quant_table), so a repo of twenty 40 GB quants is
planned in seconds, before anything is downloaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from kvgui.cli import UsageError
from kvgui.commands.common import plan, settings_from_args
from kvgui.core.sizes import format_bytes


def _tokens(n: int | None) -> str:
    if n is None:
        return "refused"
    if n == 0:
        return "no fit"
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def run_quants(args: argparse.Namespace) -> int:
    from kvgui.sources.hub import list_repo
    from kvgui.sources.hub_errors import HubError
    from kvgui.sources.modelref import parse_hub_ref
    from kvgui.sources.quant_table import TABLE_PAIRS, plan_rows, read_quants
    from kvgui.sources.resolve import HF_PREFIX, HubConfig

    cfg = HubConfig.from_env()
    ref = parse_hub_ref((args.model or "").removeprefix(HF_PREFIX), hub_hosts=cfg.hub_hosts)
    if ref is None:
        raise UsageError(f"--quants needs a Hugging Face repo (org/repo), not {args.model!r}")
    devices = plan(args).devices()
    if not any(d.budget is not None for d in devices):
        raise UsageError("no memory budget: pass --vram SIZE, --gpu INDEX or --gpu-model NAME")
    try:
        listing = list_repo(ref.repo, ref.revision, config=cfg)
    except HubError as exc:
        raise UsageError(str(exc)) from None
    groups = sorted((g for g in listing.quants if not g.projector),
                    key=lambda g: (g.size is None, g.size or 0))
    if not groups:
        raise UsageError(f"{ref.repo}: no GGUF models in the repo")
    rows = read_quants(listing, groups, config=cfg)
    first = next((r.opened.info for r in rows if r.opened is not None), None)
    settings = settings_from_args(args, first)
    plan_rows(rows, settings, devices, TABLE_PAIRS)
    projectors = [g for g in listing.quants if g.projector]
    result: dict[str, Any] = {
        "repo": listing.repo, "commit": listing.commit, "n_ctx": settings.n_ctx,
        "budget": [{"name": d.name, "budget": d.budget} for d in devices],
        "pairs": [{"type_k": k, "type_v": v} for k, v in TABLE_PAIRS],
        "quants": [r.to_json() for r in rows],
        "projectors": [{"file": g.first.path, "size": g.size} for g in projectors],
    }
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    budgets = ", ".join(f"{d.name} {format_bytes(d.budget)}" for d in devices
                        if d.budget is not None)
    print(f"{listing.repo} (commit {listing.commit[:12]}): {len(rows)} quants within {budgets}")
    print(f"at -c {settings.n_ctx}: ✓ fits, ✗ does not; then the longest context that fits")
    print()
    labels = [k if k == v else f"{k}/{v}" for k, v in TABLE_PAIRS]
    print(f"{'quant':<12}{'size':>11}  " + "".join(f"{lab:>14}" for lab in labels))
    for r in rows:
        size = format_bytes(r.group.size) if r.group.size is not None else "?"
        head = f"{r.group.label:<12}{size:>11}  "
        if r.error is not None:
            print(head + f"  {r.error}")
            continue
        cells = "".join(
            f"{('✓ ' if c.fits else '✗ ') + _tokens(c.max_ctx):>14}" for c in r.cells)
        print(head + cells + ("   (downloaded)" if r.opened and r.opened.local_path else ""))
    for g in projectors:
        size = format_bytes(g.size) if g.size is not None else "?"
        print(f"vision projector: {g.first.path} ({size})")
    return 0
