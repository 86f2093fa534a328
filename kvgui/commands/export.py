"""``kvgui export``: the settings as a llama-cli / llama-server command, Python code or a preset.

The command is built as a list (kvgui.core.commandline.export) and only then quoted for the
chosen shell, so what is printed runs unchanged in that shell.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kvgui.cli import UsageError
from kvgui.commands.common import add_model_arg, add_settings_args, open_model, settings_from_args
from kvgui.core.commandline.shellquote import SHELLS
from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.errors import SettingsRefused

FORMATS = ("llama-cli", "llama-server", "python", "json")


def _default_shell() -> str:
    return "powershell" if os.name == "nt" else "posix"


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, not {value}")
    return value


def add_parser(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("export", help=help_text, description=help_text)
    add_model_arg(p)
    add_settings_args(p)
    g = p.add_argument_group("output")
    g.add_argument("--format", choices=FORMATS, default="llama-cli",
                   help="what to print (default llama-cli)")
    g.add_argument("--shell", choices=SHELLS, default=None,
                   help=f"quote for this shell (default {_default_shell()} here)")
    g.add_argument("--host", default=None, help="llama-server: address to listen on")
    g.add_argument("--port", type=_port, default=None, help="llama-server: port")
    g.add_argument("-sys", "--system-prompt", dest="system_prompt", default=None,
                   metavar="PROMPT", help="system prompt (llama-cli, python, json)")
    g.add_argument("--program", default=None, metavar="PATH",
                   help="the llama.cpp binary to call (default llama-cli / llama-server)")
    g.add_argument("--full", action="store_true",
                   help="write every setting, not only those that differ from llama.cpp's "
                   "defaults")
    g.add_argument("--multiline", action="store_true", help="one flag per line")
    g.add_argument("-o", "--output", metavar="FILE", default=None,
                   help="write a script (or the preset) to FILE instead of printing")
    g.add_argument("--force", action="store_true",
                   help="export even settings llama.cpp would refuse (they fail at launch)")


def _settings(args: argparse.Namespace) -> Settings:
    model = open_model(args.model) if args.n_ctx == 0 else None
    settings = settings_from_args(args, model)
    if not args.force:
        _refuse_refused(args, settings)
    return settings


def _refuse_refused(args: argparse.Namespace, settings: Settings) -> None:
    """Settings llama.cpp would refuse fail here with the reason and the fix, not at
    launch; a model kvgui cannot read is checked by llama.cpp itself at launch."""
    from kvgui.core.commandline.export import change_flags
    from kvgui.core.memory.estimate import check
    from kvgui.core.memory.findings import refusals

    try:
        model = open_model(args.model, catalog=True)
    except UsageError:
        return
    found = refusals(check(model, settings))
    if found:
        fix = change_flags(found[0].fix)
        raise SettingsRefused(found[0].message + (f" (fix: {' '.join(fix)}; or --force)"
                                                  if fix else " (or --force)"))


def _flash_attn_resolved(args: argparse.Namespace, settings: Settings) -> bool | None:
    """What -fa auto becomes for this model, when the model can be read here."""
    if settings.flash_attn is not FlashAttn.AUTO or not Path(args.model).is_file():
        return None
    from kvgui.core.memory.estimate import resolve_flash_attn

    try:
        return resolve_flash_attn(open_model(args.model), settings)
    except UsageError:
        return None


def build_text(args: argparse.Namespace) -> tuple[str, list[str]]:
    """The text to print (or save) and notes for stderr."""
    from kvgui.core.commandline import export as cmdline
    from kvgui.core.commandline import shellquote
    from kvgui.core.commandline.preset import Preset

    settings = _settings(args)
    shell = args.shell or _default_shell()
    model = args.model
    if args.format == "json":
        extras: dict[str, object] = {}
        if args.system_prompt:
            extras["system_prompt"] = args.system_prompt
        if args.host is not None:
            extras["host"] = args.host
        if args.port is not None:
            extras["port"] = args.port
        return Preset(settings=settings, model_path=model, extras=extras).to_json(), []
    if args.format == "python":
        resolved = _flash_attn_resolved(args, settings)
        text = cmdline.python_snippet(
            settings, model, system_prompt=args.system_prompt, full=args.full,
            flash_attn_resolved=resolved,
        )
        notes = cmdline.export_notes(settings, "python")
        if resolved is not None:
            notes = [n for n in notes if "flash_attn" not in n]
            notes.append(f"-fa auto written as flash_attn={resolved}, what it resolves to for "
                         "this model")
        return text, notes
    if args.format == "llama-server":
        argv = cmdline.llama_server_args(
            settings, model, args.host, args.port, full=args.full,
            program=args.program or cmdline.LLAMA_SERVER,
        )
    else:
        argv = cmdline.llama_cli_args(
            settings, model, system_prompt=args.system_prompt, full=args.full,
            program=args.program or cmdline.LLAMA_CLI,
        )
    notes = cmdline.export_notes(settings, args.format, system_prompt=args.system_prompt)
    if args.format == "llama-cli" and (args.host is not None or args.port is not None):
        notes.append("--host/--port are llama-server flags; left out of the llama-cli command")
    try:
        if args.output:
            return shellquote.script(argv, shell), notes
        return shellquote.render(argv, shell, multiline=args.multiline) + "\n", notes
    except shellquote.UnsafeForShell as exc:  # what this shell cannot be given safely
        raise UsageError(f"cannot write this for {shell}: {exc}") from None


def run(args: argparse.Namespace) -> int:
    text, notes = build_text(args)
    for note in notes:
        print(f"kvgui export: note: {note}", file=sys.stderr)
    if args.output:
        out = Path(args.output)
        newline = "" if (args.shell or _default_shell()) == "cmd" else None
        try:
            with out.open("w", encoding="utf-8", newline=newline) as f:
                f.write(text)
        except OSError as exc:
            raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
        if args.format in ("llama-cli", "llama-server") and (
            args.shell or _default_shell()
        ) == "posix":
            out.chmod(out.stat().st_mode | 0o111)
        return 0
    sys.stdout.write(text)
    return 0
