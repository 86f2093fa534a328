"""``kvgui chat``: talk to the model through llama.cpp with exactly these settings.

The same worker process as the window's chat (kvgui.runtime.worker), so what works here
works there. With ``-p`` one turn is streamed to stdout (or, with ``--json``, one object with
the reply, speeds and measured vs estimated memory); without it, an interactive session.
"""

from __future__ import annotations

import argparse
import json
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
from kvgui.core.errors import SettingsRefused
from kvgui.runtime.protocol import Message, Sampling

_S = Sampling()


def add_parser(sub: argparse._SubParsersAction, help_text: str) -> None:
    from kvgui.core.devices.budget import add_budget_args

    p = sub.add_parser("chat", help=help_text, description=help_text)
    add_model_arg(p)
    add_settings_args(p)
    add_budget_args(p)
    g = p.add_argument_group("chat")
    g.add_argument("-p", "--prompt", metavar="TEXT",
                   help="one message; the reply is streamed and kvgui exits "
                   "(without -p: interactive, /reset starts over, /exit or Ctrl-D quits)")
    g.add_argument("-n", "--n-predict", dest="max_tokens", type=int, default=_S.max_tokens,
                   metavar="N", help=f"most tokens per reply, -1 = until the context is full "
                   f"(default {_S.max_tokens})")
    g.add_argument("--sys", "--system-prompt", dest="system", metavar="TEXT",
                   help="system prompt")
    g.add_argument("--temp", dest="temperature", type=float, default=_S.temperature,
                   metavar="T", help=f"temperature (default {_S.temperature})")
    g.add_argument("--top-p", type=float, default=_S.top_p, metavar="P",
                   help=f"top-p (default {_S.top_p})")
    g.add_argument("--top-k", type=int, default=_S.top_k, metavar="K",
                   help=f"top-k, 0 = off (default {_S.top_k})")
    g.add_argument("--min-p", type=float, default=_S.min_p, metavar="P",
                   help=f"min-p (default {_S.min_p})")
    g.add_argument("-s", "--seed", type=int, default=_S.seed, metavar="N",
                   help="sampling seed, -1 = random (default -1)")
    g.add_argument("--json", action="store_true",
                   help="with -p: print one JSON object at the end (sizes in bytes)")


def _sampling(args: argparse.Namespace) -> Sampling:
    try:
        return Sampling(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                        min_p=args.min_p, max_tokens=args.max_tokens, seed=args.seed)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _progress(msg: Message) -> None:
    if msg["type"] == "progress" and sys.stderr.isatty():
        print(f"\rloading {100 * float(msg['fraction']):3.0f}%", end="", file=sys.stderr,
              flush=True)


def _stats_line(done: Message) -> str:
    def rate(value: Any) -> str:
        return "-" if value is None else f"{float(value):.1f}"

    ttft = done.get("ttft_s")
    extra = {"context": "; the context is full, the oldest turns go next",
             "stopped": "; stopped"}.get(str(done.get("stop_reason")), "")
    if done.get("dropped_turns"):
        extra += f"; {done['dropped_turns']} oldest turn(s) dropped to fit"
    return (f"[{done.get('tokens')} tokens, {rate(done.get('tokens_per_s'))} t/s, prompt "
            f"{rate(done.get('prompt_tokens_per_s'))} t/s, first token "
            f"{'-' if ttft is None else f'{1000 * float(ttft):.0f} ms'}, context "
            f"{done.get('n_past')}/{done.get('n_ctx')}{extra}]")


def run(args: argparse.Namespace) -> int:
    from kvgui.core.memory.estimate import estimate
    from kvgui.runtime.client import (
        WorkerClient,
        WorkerError,
        estimate_devices,
        estimated_memory,
        measured_memory,
    )

    model = open_model(args.model, need_file=True)
    args.model = model.path or args.model  # a Hub model: its file in the Hub cache
    settings = settings_from_args(args, model)
    sampling = _sampling(args)
    if args.json and args.prompt is None:
        raise UsageError("--json needs -p TEXT (one turn)")
    from kvgui.core.memory.estimate import Verdict

    planned = estimate(model, settings, plan(args).devices())
    if planned.refused:
        raise SettingsRefused("; ".join(planned.errors))
    if planned.verdict is Verdict.OVER:
        over = "; ".join(f"{d.name} over by {-(d.headroom or 0) / 2**30:.2f} GiB"
                         for d in planned.devices if d.fits is False)
        print(f"kvgui chat: warning: does not fit the budget ({over}); trying anyway",
              file=sys.stderr)

    client = WorkerClient()
    try:
        client.start()
        loaded = client.load(args.model, settings, on_event=_progress)
        if sys.stderr.isatty():
            print("\r" + " " * 16 + "\r", end="", file=sys.stderr, flush=True)
        if args.prompt is None:
            return _interactive(client, args, sampling)
        on_token = None if args.json else _print_piece
        done = client.chat(args.prompt, system=args.system, sampling=sampling,
                           on_token=on_token)
        if not args.json:
            print()
            print(_stats_line(done), file=sys.stderr)
            return 0
        est = estimate(model, settings, estimate_devices(bool(loaded.get("gpu_offload"))))
        out = {key: done.get(key) for key in (
            "reply", "tokens", "tokens_per_s", "prompt_tokens_per_s", "ttft_s", "stop_reason",
            "prompt_tokens", "n_past", "n_ctx")}
        out["measured"] = measured_memory(loaded)
        out["estimate"] = estimated_memory(est)
        out["settings"] = settings.to_dict()
        json.dump(out, sys.stdout, indent=2)
        print()
        return 0
    except WorkerError as exc:
        print(f"kvgui chat: {exc}", file=sys.stderr)
        return exit_status.LLAMA_FAILED
    finally:
        client.close()


def _print_piece(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _interactive(client: Any, args: argparse.Namespace, sampling: Sampling) -> int:
    from kvgui.runtime.client import WorkerError

    system = args.system  # sent with every turn and reset: the worker keeps it
    print("kvgui chat: type a message; /reset starts over, /exit or Ctrl-D quits, "
          "Ctrl-C stops a reply.", file=sys.stderr)
    while True:
        try:
            text = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 130
        if not text.strip():
            continue
        if text.strip() in ("/exit", "/quit"):
            return 0
        if text.strip() == "/reset":
            client.reset(system)
            print("(new conversation)", file=sys.stderr)
            continue
        try:
            done = _turn(client, text, system, sampling)
        except WorkerError as exc:
            if exc.fatal:
                raise
            print(f"kvgui chat: {exc}", file=sys.stderr)
            continue
        print()
        print(_stats_line(done), file=sys.stderr)


def _turn(client: Any, text: str, system: str | None, sampling: Sampling) -> Message:
    """One reply; Ctrl-C sends Stop and waits for the (partial) reply to finish."""
    try:
        return client.chat(text, system=system, sampling=sampling, on_token=_print_piece)
    except KeyboardInterrupt:
        client.stop()
        while True:
            msg = client.next_event()
            if msg["type"] == "token":
                _print_piece(str(msg.get("text", "")))
            elif msg["type"] in ("finished", "failed"):
                if msg["type"] == "failed":
                    from kvgui.runtime.client import WorkerError

                    raise WorkerError(str(msg.get("message")),
                                      fatal=bool(msg.get("fatal"))) from None
                return msg
