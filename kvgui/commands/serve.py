"""``kvgui serve``: the user's llama-server with exactly these settings, on 127.0.0.1.

The command line is the one ``kvgui export --target llama-server`` prints, plus
``--host 127.0.0.1 --port <free or --port>``. kvgui waits for ``/health``, prints the OpenAI
base URL and what llama-server allocated per device beside the estimate for the devices that
build sees, then keeps the server until Ctrl-C (or ``--check``: stop at once, for scripts).
Exit status: 0 served (and stopped), 1 llama-server failed, 2 bad input or no llama-server.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from typing import Any

from kvgui.cli import UsageError
from kvgui.commands.common import add_model_arg, add_settings_args, open_model, settings_from_args


def add_parser(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("serve", help=help_text, description=help_text)
    add_model_arg(p)
    add_settings_args(p)
    g = p.add_argument_group("serve")
    g.add_argument("--port", type=int, default=None, metavar="N",
                   help="port on 127.0.0.1 (default: a free one)")
    g.add_argument("--llama-cpp", dest="folder", metavar="FOLDER",
                   default=os.environ.get("KVGUI_LLAMA_CPP"),
                   help="folder with your llama.cpp binaries (default: $KVGUI_LLAMA_CPP, the "
                   "window's Settings ▸ llama.cpp folder, else llama-server on PATH)")
    g.add_argument("--check", action="store_true",
                   help="start, compare memory, stop: exit status only (no serving)")
    g.add_argument("--json", action="store_true",
                   help="print one JSON object when ready (url, argv, memory per device)")


def _folder(args: argparse.Namespace) -> str | None:
    if args.folder:
        return str(args.folder)
    from kvgui.core.config.appconfig import load_config

    return load_config().config.llama_cpp_folder or None


def _report(srv: Any, est_devices: dict[str, dict[str, int]], as_json: bool) -> None:
    from kvgui.core.sizes import format_bytes
    from kvgui.runtime.server import openai_url

    measured = srv.measured()
    if as_json:
        json.dump({"url": openai_url(srv.port), "port": srv.port, "pid": srv.pid,
                   "argv": srv.argv, "tool": srv.tool.summary(),
                   "ready_s": (srv.t_ready or 0) - srv.t_start,
                   "measured": measured, "estimated": est_devices}, sys.stdout, indent=2)
        print(flush=True)
        return
    print(f"llama-server ready: OpenAI API at {openai_url(srv.port)}  (pid {srv.pid})")
    print(f"  {srv.tool.summary()}")
    print(f"  {' '.join(srv.argv)}")
    print(f"  {'device':<10} {'part':<8} {'estimated':>12} {'llama-server':>12}")
    for dev in list(est_devices) + [d for d in measured if d not in est_devices]:
        for part in ("weights", "kv", "compute", "output"):
            e = est_devices.get(dev, {}).get(part)
            m = measured.get(dev, {}).get(part)
            print(f"  {dev:<10} {part:<8} {'-' if e is None else format_bytes(e):>12} "
                  f"{'-' if m is None else format_bytes(m):>12}")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    from kvgui.core.commandline.llama_params import server_settings
    from kvgui.core.memory.estimate import estimate
    from kvgui.runtime.llama_bin import LLAMA_SERVER, ToolError, require_tool
    from kvgui.runtime.server import (
        LlamaServer,
        ServerError,
        device_budgets,
        estimated_devices,
    )

    model = open_model(args.model)
    settings = settings_from_args(args, model)
    refused = estimate(model, settings).errors
    if refused:
        raise UsageError("; ".join(refused))
    try:
        tool = require_tool(LLAMA_SERVER, _folder(args))
    except ToolError as exc:
        raise UsageError(str(exc)) from None
    est = estimate(model, server_settings(settings), device_budgets(tool))
    srv = LlamaServer(tool, args.model, settings, port=args.port)
    # before anything is printed: a SIGTERM sent as soon as the report appears (a supervisor,
    # the test) must stop the server cleanly, not kill kvgui with the server left behind
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        srv.start()
        srv.wait_ready()
        _report(srv, estimated_devices(est), args.json)
        if args.check:
            return 0
        print("serving; Ctrl-C stops it", file=sys.stderr)
        while not done.wait(0.5):
            if srv.returncode is not None:
                print(f"kvgui serve: {srv._died(srv.returncode)}", file=sys.stderr)
                return 1
        return 0
    except ToolError as exc:
        raise UsageError(str(exc)) from None
    except ServerError as exc:
        print(f"kvgui serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        srv.close()
