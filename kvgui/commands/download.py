"""``kvgui download REPO[:QUANT]``: one quant into the Hub cache, where ``llama-server -hf``
finds it offline. Progress on stderr; the path (first part) on stdout. Interrupted, it keeps
the partial file: the same command resumes it."""

from __future__ import annotations

import argparse
import sys
import threading

from kvgui.cli import UsageError
from kvgui.commands.common import add_model_arg


def add_parser(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("download", help=help_text, description=help_text)
    add_model_arg(p)
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    from kvgui.core.sizes import format_bytes
    from kvgui.sources.download import Cancelled, Progress, download
    from kvgui.sources.hub import HubConfig, list_repo
    from kvgui.sources.hub_errors import HubError
    from kvgui.sources.modelref import parse_hub_ref
    from kvgui.sources.resolve import HF_PREFIX

    cfg = HubConfig.from_env()
    ref = parse_hub_ref((args.model or "").removeprefix(HF_PREFIX), hub_hosts=cfg.hub_hosts)
    if ref is None:
        raise UsageError(f"not a Hugging Face model (org/repo[:QUANT] or its URL): "
                         f"{args.model!r}")
    tty = sys.stderr.isatty()

    def progress(p: Progress) -> None:
        if args.quiet:
            return
        eta = f", {p.eta:.0f} s left" if p.eta is not None else ""
        line = (f"part {p.part}/{p.parts}: {format_bytes(p.done)} of {format_bytes(p.total)} "
                f"({p.fraction:.0%}), {format_bytes(int(p.speed))}/s{eta}")
        print(("\r" + line + "\033[K") if tty else line, end="" if tty else "\n",
              file=sys.stderr, flush=True)

    cancel = threading.Event()
    try:
        listing = list_repo(ref.repo, ref.revision, config=cfg)
        group = listing.group(ref)
        paths = download(listing, group, config=cfg, on_progress=progress, cancel=cancel)
    except HubError as exc:
        raise UsageError(str(exc)) from None
    except (KeyboardInterrupt, Cancelled):
        print("\ninterrupted: the partial file is kept; run the same command to resume",
              file=sys.stderr)
        return 130
    if tty and not args.quiet:
        print(file=sys.stderr)
    print(paths[0])
    return 0
