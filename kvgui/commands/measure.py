"""``kvgui measure``: each KV cache type's quality loss and speed, on your model and text.

Runs the model over the text once per K/V type pair in a worker process (same tokens, same
windows), against the f16 cache as the reference. Results are cached per model file +
settings + text, so asking again answers at once (``--no-cache`` measures again).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from kvgui.cli import UsageError
from kvgui.commands import exit_status
from kvgui.commands.common import (
    add_model_arg,
    add_settings_args,
    open_model,
    plan,
    settings_from_args,
)
from kvgui.core.quality.results import (
    DEFAULT_PAIRS,
    DEFAULT_WINDOW,
    REFERENCE_PAIR,
    MeasureRun,
    PairResult,
    json_safe,
    pareto_front,
    parse_pairs,
    recommend,
    save_cached,
)
from kvgui.core.sizes import format_bytes, parse_size


def add_parser(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("measure", help=help_text, description=help_text + ". The f16 cache "
                       "is the reference every other type is compared with.")
    add_model_arg(p)
    add_settings_args(p)
    from kvgui.core.devices.budget import add_budget_args

    add_budget_args(p)
    g = p.add_argument_group("measurement")
    g.add_argument("--text", metavar="FILE",
                   help="text to evaluate (default: a public-domain sample shipped with kvgui)")
    g.add_argument("--types", metavar="LIST",
                   help="K/V types to measure, comma-separated; 'q8_0' means K and V q8_0, "
                   "'q8_0/q4_0' K q8_0 and V q4_0 (default f16,q8_0,q4_0, or f16 and -ctk/-ctv "
                   "when those are given)")
    g.add_argument("--ctx", dest="window", type=int, default=None, metavar="N",
                   help=f"evaluation window in tokens; the second half of each is scored "
                   f"(default {DEFAULT_WINDOW}, at most the context)")
    g.add_argument("--chunks", dest="max_windows", type=int, default=None, metavar="N",
                   help="evaluate at most N windows (default: as many as the text holds)")
    g.add_argument("--noise-floor", action="store_true",
                   help="run f16 twice, so its KL row is a measured run-to-run difference")
    g.add_argument("--kv-budget", metavar="SIZE",
                   help="recommend the most faithful type whose measured KV cache fits SIZE")
    g.add_argument("--no-cache", action="store_true", help="measure again even if cached")
    p.add_argument("--json", action="store_true", help="print one JSON object")


def _pairs(args: argparse.Namespace) -> tuple[tuple[str, str], ...]:
    if args.types:
        try:
            return parse_pairs(args.types)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if (args.type_k, args.type_v) != REFERENCE_PAIR:
        return (REFERENCE_PAIR, (args.type_k, args.type_v))
    return DEFAULT_PAIRS


def kv_budget_of_plan(model: Any, settings: Any, args: argparse.Namespace) -> int | None:
    """What the KV cache may take on the planned main device once everything else is
    placed (the window's measure budget, by the same plan)."""
    from kvgui.core.memory.estimate import estimate
    from kvgui.core.memory.fit import kv_room

    return kv_room(estimate(model, settings, plan(args).devices()))


def run(args: argparse.Namespace) -> int:
    from kvgui.runtime.measure import (
        MeasureCancelled,
        MeasureError,
        MeasureRequest,
        cached_run,
        read_text_file,
        run_measure,
        sample_text,
    )

    model = open_model(args.model, need_file=True)
    args.model = model.path or args.model  # a Hub model: its file in the Hub cache
    settings = settings_from_args(args, model)
    budget = None
    if args.kv_budget:
        try:
            budget = parse_size(args.kv_budget)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif any(getattr(args, f, None) for f in ("gpu", "gpu_model", "vram")):
        budget = kv_budget_of_plan(model, settings, args)
    if args.text:
        try:
            text, name = read_text_file(args.text), args.text
        except OSError as exc:
            raise UsageError(f"{args.text}: {exc.strerror or exc}") from None
    else:
        text, name = sample_text(), "sample (public domain)"
    n_ctx_seq = settings.n_ctx if settings.kv_unified else settings.n_ctx // settings.n_parallel
    window = args.window if args.window is not None else min(DEFAULT_WINDOW, n_ctx_seq)
    req = MeasureRequest(
        model=args.model, settings=settings, pairs=_pairs(args), text=text, text_name=name,
        window=window, max_windows=args.max_windows,
        n_threads=None if args.n_threads == -1 else args.n_threads,
        repeat_reference=args.noise_floor,
    )
    if problems := req.problems():
        raise UsageError("; ".join(problems))

    run_: MeasureRun | None = None
    cached = False
    if not args.no_cache and (hit := cached_run(req)) is not None:
        wanted = {REFERENCE_PAIR, *req.pairs}
        have = {r.pair for r in hit.results}
        if wanted <= have and (hit.evaluation.reference_repeated or not args.noise_floor):
            run_ = _only(hit, wanted)
            cached = True
    if run_ is None:
        progress = _Progress(enabled=not args.json or sys.stderr.isatty())
        try:
            run_ = run_measure(req, on_progress=progress.show, on_result=progress.result)
        except MeasureCancelled:
            raise KeyboardInterrupt from None
        except MeasureError as exc:
            progress.clear()
            if exc.partial is not None and exc.partial.results:
                save_cached(exc.partial)
            print(f"kvgui measure: {exc}", file=sys.stderr)
            return exit_status.LLAMA_FAILED
        finally:
            progress.clear()
        save_cached(run_)

    rec = recommend(run_.results, budget) if budget is not None else None
    if args.json:
        data = run_.to_dict()
        data["cached"] = cached
        data["kv_budget"] = budget
        data["recommended"] = rec.label if rec else None
        print(json.dumps(json_safe(data), indent=2))
    else:
        print(render(run_, cached=cached))
        if budget is not None:
            print(f"KV budget {format_bytes(budget)}: "
                  + (f"recommended {rec.label}" if rec else "no measured type fits"))
    return 0


def _only(run_: MeasureRun, wanted: set[tuple[str, str]]) -> MeasureRun:
    from dataclasses import replace

    return replace(run_, results=tuple(r for r in run_.results if r.pair in wanted),
                   failures=tuple(f for f in run_.failures if (f.type_k, f.type_v) in wanted))


class _Progress:
    """One updating line on a terminal; a line per finished type otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._shown = False

    def show(self, p: object) -> None:
        if not (self.enabled and self.tty):
            return
        msg = getattr(p, "message", "")
        frac = getattr(p, "fraction", 0.0)
        sys.stderr.write(f"\r\033[K{frac:5.0%}  {msg}")
        sys.stderr.flush()
        self._shown = True

    def result(self, r: PairResult) -> None:
        if self.enabled and not self.tty:
            print(f"measured {r.label}: PPL {r.ppl:.4f}, KL {r.kl_mean:.6f}", file=sys.stderr)

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._shown = False


def _fmt(x: float, spec: str) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def render(run_: MeasureRun, *, cached: bool = False) -> str:
    e, s = run_.evaluation, run_.settings
    ref = run_.reference
    lines = [
        f"{run_.model.path}",
        f"{e.tokens} tokens scored per type: {e.windows} windows of {e.window} tokens from "
        f"{run_.text.name} ({e.text_tokens} tokens); context {s.n_ctx}, flash attention "
        f"{s.flash_attn.value}; KL vs f16 ({'exact' if e.kl_method == 'full' else e.kl_method})"
        + ("; cached" if cached else ""),
        "",
        f"{'type':<12}{'PPL':>10}{'ΔPPL':>9}{'KL mean':>11}{'KL p99':>10}{'top-1':>8}"
        f"{'PP t/s':>10}{'TG t/s':>9}{'KV cache':>12}",
    ]
    front = {r.label for r in pareto_front(run_.results)}
    for r in run_.results:
        d = (r.ppl / ref.ppl - 1) if ref and ref.ppl else math.nan
        dppl = "ref" if r.pair == REFERENCE_PAIR else _fmt(d, "+.2%")
        kv = format_bytes(r.kv_bytes) if r.kv_bytes is not None else "n/a"
        mark = "*" if r.label in front else " "
        lines.append(
            f"{r.label + mark:<12}{_fmt(r.ppl, '.4f'):>10}{dppl:>9}{_fmt(r.kl_mean, '.6f'):>11}"
            f"{_fmt(r.kl_p99, '.5f'):>10}{_fmt(r.top1_agreement, '.1%'):>8}"
            f"{_fmt(r.pp_tokens_per_s, '.0f'):>10}{_fmt(r.tg_tokens_per_s, '.1f'):>9}{kv:>12}"
        )
    for f in run_.failures:
        lines.append(f"{f.label:<12}failed: {f.error}")
    lines.append("* on the Pareto front: no other type has both less KV memory and less KL")
    return "\n".join(lines)

