"""``kvgui measure``: each KV cache type's quality loss and speed, on your model and text.

Runs the model over the text once per K/V type pair in a worker process (same tokens, same
windows), against the f16 cache as the reference: PPL, KL and top-1 agreement (also by
position in the window), prompt and generation speed (warm-up, repeats, median and spread),
and with ``--retrieval`` a fact hidden at several depths of the whole context, asked for at
the end. ``--sweep`` walks the K-first ladder of pairs (mixed pairs included) to the cheapest
one within ``--max-kl``/``--min-top1`` in the fewest runs. Results are cached per model file +
settings + text, so asking again answers at once (``--no-cache`` measures again). Progress
goes to stderr: a progress bar on a terminal, plain lines otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
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
from kvgui.core.quality.advice import (
    DEFAULT_KL,
    KL,
    TOP1,
    QualityThreshold,
    cheapest_within,
)
from kvgui.core.quality.results import (
    DEFAULT_PAIRS,
    DEFAULT_SPEED_REPEATS,
    DEFAULT_WINDOW,
    REFERENCE_PAIR,
    MeasureRun,
    PairResult,
    format_speed,
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
    g.add_argument("--sweep", action="store_true",
                   help="instead of --types: measure the ladder f16, f16/q8_0, q8_0, q8_0/q5_0, "
                   "q8_0/q4_0, q5_0, q5_0/q4_0, q4_0 by bisection, to the cheapest pair within "
                   "the threshold (3 to 6 runs)")
    g.add_argument("--max-kl", type=float, default=None, metavar="X",
                   help=f"quality threshold: mean KL vs f16 at most X (default {DEFAULT_KL})")
    g.add_argument("--min-top1", type=float, default=None, metavar="PCT",
                   help="quality threshold instead: top-1 agreement with f16 at least PCT %%")
    g.add_argument("--ctx", dest="window", type=int, default=None, metavar="N",
                   help=f"evaluation window in tokens; the second half of each is scored "
                   f"(default {DEFAULT_WINDOW}, at most the context)")
    g.add_argument("--long", action="store_true",
                   help="long context: one window of the whole context (-c), every position "
                   "scored, KL and top-1 by position; the default text is then the long sample")
    g.add_argument("--chunks", dest="max_windows", type=int, default=None, metavar="N",
                   help="evaluate at most N windows (default: as many as the text holds)")
    g.add_argument("--retrieval", action="store_true",
                   help="retrieval test: a fact hidden at 10%%, 50%% and 90%% of a filler that "
                   "fills the context (-c), asked for at the end; pass/fail per type")
    g.add_argument("--seed", type=int, default=1, metavar="N",
                   help="seed of the retrieval test's secrets (default 1)")
    g.add_argument("--speed-repeats", type=int, default=DEFAULT_SPEED_REPEATS, metavar="N",
                   help=f"timed repeats of each speed test after a warm-up (default "
                   f"{DEFAULT_SPEED_REPEATS}; 0: no speed test)")
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


def threshold_from_args(args: argparse.Namespace) -> QualityThreshold:
    if args.max_kl is not None and args.min_top1 is not None:
        raise UsageError("give --max-kl or --min-top1, not both")
    try:
        if args.min_top1 is not None:
            return QualityThreshold(TOP1, args.min_top1 / 100)
        return QualityThreshold(KL, args.max_kl if args.max_kl is not None else DEFAULT_KL)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


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
        Retrieval,
        cached_run,
        default_text,
        read_text_file,
        run_measure,
    )

    model = open_model(args.model, need_file=True)
    args.model = model.path or args.model  # a Hub model: its file in the Hub cache
    settings = settings_from_args(args, model)
    threshold = threshold_from_args(args)
    if args.sweep and args.types:
        raise UsageError("give --sweep or --types, not both")
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
        text, name = default_text(args.long)
    n_ctx_seq = settings.n_ctx if settings.kv_unified else settings.n_ctx // settings.n_parallel
    if args.long:
        if args.window is not None:
            raise UsageError("--long evaluates one window of the whole context: give -c, "
                             "not --ctx")
        window, score_from, max_windows = n_ctx_seq, 0, args.max_windows or 1
    else:
        window = args.window if args.window is not None else min(DEFAULT_WINDOW, n_ctx_seq)
        score_from, max_windows = None, args.max_windows
    req = MeasureRequest(
        model=args.model, settings=settings, pairs=_pairs(args), text=text, text_name=name,
        window=window, max_windows=max_windows, repeat_reference=args.noise_floor,
        n_threads=None if args.n_threads == -1 else args.n_threads,
        score_from=score_from, speed_repeats=args.speed_repeats,
        retrieval=Retrieval(seed=args.seed) if args.retrieval else None,
        sweep=threshold if args.sweep else None,
    )
    if problems := req.problems():
        raise UsageError("; ".join(problems))

    run_: MeasureRun | None = None
    cached = False
    if not args.no_cache and not args.sweep and (hit := cached_run(req)) is not None:
        wanted = {REFERENCE_PAIR, *req.pairs}
        have = {r.pair for r in hit.results if not args.retrieval or r.retrieval}
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
            progress.close()
            if exc.partial is not None and exc.partial.results:
                save_cached(exc.partial)
            print(f"kvgui measure: {exc}", file=sys.stderr)
            return exit_status.LLAMA_FAILED
        finally:
            progress.close()
        save_cached(run_)

    rec = recommend(run_.results, budget) if budget is not None else None
    pick = cheapest_within(run_.results, threshold)
    if args.json:
        data = run_.to_dict()
        data["cached"] = cached
        data["kv_budget"] = budget
        data["recommended"] = rec.label if rec else None
        data["threshold"] = {**threshold.to_dict(), "text": threshold.text}
        data["cheapest_within_threshold"] = pick.label if pick else None
        print(json.dumps(json_safe(data), indent=2))
    else:
        print(render(run_, cached=cached))
        if pick is not None:
            print(f"Cheapest within {threshold.text}: {pick.label}")
        if budget is not None:
            print(f"KV budget {format_bytes(budget)}: "
                  + (f"recommended {rec.label}" if rec else "no measured type fits"))
    return 0


def _only(run_: MeasureRun, wanted: set[tuple[str, str]]) -> MeasureRun:
    from dataclasses import replace

    return replace(run_, results=tuple(r for r in run_.results if r.pair in wanted),
                   failures=tuple(f for f in run_.failures if (f.type_k, f.type_v) in wanted))


class _Progress:
    """A progress bar (tqdm) with the phase and ETA on a terminal; otherwise plain lines on
    stderr: one per phase of each type (at most one every 5 s within a phase) and one per
    finished type, so a log shows where a long run is."""

    PLAIN_EVERY_S = 5.0

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._bar: Any = None
        self._last: tuple[str, str] = ("", "")
        self._last_t = 0.0

    def show(self, p: object) -> None:
        if not self.enabled:
            return
        from kvgui.runtime.measure import Progress, format_eta

        assert isinstance(p, Progress)
        if self.tty:
            if self._bar is None:
                from tqdm import tqdm

                self._bar = tqdm(total=1000, file=sys.stderr, leave=False, unit="‰",
                                 bar_format="{l_bar}{bar}| {desc}", dynamic_ncols=True)
            self._bar.n = round(p.fraction * 1000)
            self._bar.set_description_str(p.message, refresh=False)
            self._bar.refresh()
            return
        now = time.monotonic()
        key = (p.pair, p.stage)
        if key != self._last or now - self._last_t >= self.PLAIN_EVERY_S:
            self._last, self._last_t = key, now
            eta = format_eta(p.eta_s)
            line = f"measure: {p.fraction:4.0%} {p.message}" if p.stage not in (
                "start", "plan", "load") else f"measure: {p.message}"
            if eta and eta not in line:
                line += f" · {eta}"
            print(line, file=sys.stderr, flush=True)

    def result(self, r: PairResult) -> None:
        if not self.enabled:
            return
        line = f"measured {r.label}: PPL {r.ppl:.4f}, KL {r.kl_mean:.6f}, top-1 " \
               f"{r.top1_agreement:.1%}"
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def render(run_: MeasureRun, *, cached: bool = False) -> str:
    e, s = run_.evaluation, run_.settings
    ref = run_.reference
    threads = f", {e.n_threads} threads" if e.n_threads else ""
    lines = [
        f"{run_.model.path}",
        f"{e.tokens} tokens scored per type: {e.windows} windows of {e.window} tokens from "
        f"{run_.text.name} ({e.text_tokens} tokens); context {s.n_ctx}, flash attention "
        f"{s.flash_attn.value}{threads}; KL vs f16 "
        f"({'exact' if e.kl_method == 'full' else e.kl_method})"
        + (f"; {e.sweep}" if e.sweep else "") + ("; cached" if cached else ""),
    ]
    if e.speed_repeats:
        lines.append(f"speed: median (slowest–fastest) of {e.speed_repeats} repeats after a "
                     "warm-up")
    lines += [
        "",
        f"{'type':<12}{'PPL':>10}{'ΔPPL':>9}{'KL mean':>11}{'KL p99':>10}{'top-1':>8}"
        f"{'PP t/s':>18}{'TG t/s':>16}{'KV cache':>12}{'retrieval':>11}",
    ]
    front = {r.label for r in pareto_front(run_.results)}
    for r in run_.results:
        d = (r.ppl / ref.ppl - 1) if ref and ref.ppl else math.nan
        dppl = "ref" if r.pair == REFERENCE_PAIR else _fmt(d, "+.2%")
        kv = format_bytes(r.kv_bytes) if r.kv_bytes is not None else "n/a"
        mark = "*" if r.label in front else " "
        found = f"{r.retrieval_passed}/{len(r.retrieval)}" if r.retrieval else "-"
        lines.append(
            f"{r.label + mark:<12}{_fmt(r.ppl, '.4f'):>10}{dppl:>9}{_fmt(r.kl_mean, '.6f'):>11}"
            f"{_fmt(r.kl_p99, '.5f'):>10}{_fmt(r.top1_agreement, '.1%'):>8}"
            f"{format_speed(r.pp_tokens_per_s, r.pp_spread, '.0f'):>18}"
            f"{format_speed(r.tg_tokens_per_s, r.tg_spread, '.1f'):>16}{kv:>12}{found:>11}"
        )
    for f in run_.failures:
        lines.append(f"{f.label:<12}failed: {f.error}")
    lines.append("* on the Pareto front: no other type has both less KV memory and less KL")
    lines += _profile_lines(run_)
    lines += _retrieval_lines(run_)
    return "\n".join(lines)


def _profile_lines(run_: MeasureRun) -> list[str]:
    rows = [r for r in run_.results if r.profile and r.pair != REFERENCE_PAIR]
    if not rows or len(rows[0].profile) < 2:
        return []
    bins = rows[0].profile
    head = "".join(f"{f'{b.start}-{b.end}':>13}" for b in bins)
    out = ["", "KL by position in the window (top-1 agreement below)", f"{'type':<12}{head}"]
    for r in rows:
        out.append(f"{r.label:<12}" + "".join(f"{b.kl_mean:>13.5f}" for b in r.profile))
        out.append(f"{'':<12}" + "".join(f"{b.top1_agreement:>13.1%}" for b in r.profile))
    return out


def _retrieval_lines(run_: MeasureRun) -> list[str]:
    rows = [r for r in run_.results if r.retrieval]
    if not rows:
        return []
    n = rows[0].retrieval[0].context_tokens
    out = ["", f"Retrieval: a secret number at each depth of a {n}-token prompt, asked for at "
               "the end (greedy answer)"]
    for r in rows:
        probes = "  ".join(f"{p.depth:.0%} {'found' if p.passed else 'missed'} "
                           f"({p.answer!r})" for p in r.retrieval)
        out.append(f"{r.label:<12}{r.retrieval_passed}/{len(r.retrieval)}  {probes}")
    return out
