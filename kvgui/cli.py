"""The ``kvgui`` command: the GUI with no subcommand, or one of the subcommands.

Each subcommand lives in ``kvgui/commands/<name>.py`` with ``add_parser(subparsers)`` and
``run(args) -> int``; they are imported only when used, so ``kvgui estimate`` never pays for Qt.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from kvgui import __version__
from kvgui.core.errors import SettingsRefused, UsageError

__all__ = ["UsageError", "build_parser", "main"]

SUBCOMMANDS: dict[str, str] = {
    "estimate": "memory llama.cpp will allocate for a model and settings",
    "fit": "largest context per KV cache type, and largest -ngl, for a memory budget",
    "export": "print the llama-cli / llama-server / Python command for the settings",
    "verify": "ask the bundled llama.cpp what it would allocate (dry run, no weights read)",
    "chat": "chat with the model through llama.cpp, with exactly these settings",
    "serve": "run your llama-server with exactly these settings on 127.0.0.1 (OpenAI API)",
    "gpus": "list the GPUs and memory kvgui detects",
    "download": "download a Hugging Face model's quant into the Hub cache (llama.cpp's -hf "
    "finds it there)",
    "measure": "measure each KV cache type's quality and speed on your model and text",
}


def _module(name: str):  # type: ignore[no-untyped-def]
    return importlib.import_module(f"kvgui.commands.{name}")


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kvgui",
        description="Will this GGUF model fit on my GPU at this context, with which KV cache "
        "type? With no subcommand, opens the window (optionally on MODEL).",
    )
    parser.add_argument("--version", action="version", version=f"kvgui {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = next((a for a in argv if a in SUBCOMMANDS), None)
    from kvgui.commands.exit_status import EPILOG

    for name, help_text in SUBCOMMANDS.items():
        if wanted is None or name == wanted:
            try:
                _module(name).add_parser(sub, help_text)
            except ModuleNotFoundError as exc:
                if exc.name != f"kvgui.commands.{name}":
                    raise
                sub.add_parser(name, help=help_text + " (not available in this build)")
            p = sub.choices[name]
            p.epilog = EPILOG
            p.add_argument("-v", "--verbose", action="count", default=0,
                           help="show what kvgui does on stderr (-vv: more); the log file "
                           "always has it")
    parser.epilog = EPILOG
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not any(a in SUBCOMMANDS for a in args_list) and not any(
        a in ("-h", "--help", "--version") for a in args_list
    ):
        from kvgui.commands import gui

        return gui.main(args_list)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    from kvgui.commands import exit_status
    from kvgui.logs import setup_logging

    setup_logging(getattr(args, "verbose", 0))
    log = logging.getLogger("kvgui.cli")
    log.debug("kvgui %s %s", __version__, " ".join(args_list))
    try:
        return int(_module(args.command).run(args))
    except UsageError as exc:
        log.info("%s: bad input: %s", args.command, exc)
        print(f"kvgui {args.command}: {exc}", file=sys.stderr)
        return exit_status.USAGE
    except SettingsRefused as exc:
        log.info("%s: refused: %s", args.command, exc)
        print(f"kvgui {args.command}: llama.cpp would refuse these settings: {exc}",
              file=sys.stderr)
        return exit_status.REFUSED
    except KeyboardInterrupt:
        return exit_status.INTERRUPTED
    except BrokenPipeError:  # `kvgui estimate … | head`: the reader left, nothing to report
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
