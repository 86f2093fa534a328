"""The frozen app's entry point: ``kvgui`` itself, and the interpreter for kvgui's own children.

kvgui starts its helpers as ``sys.executable -m kvgui.runtime.worker`` (chat), ``-m
kvgui.runtime.dryrun`` (verify), ``-m kvgui.runtime.measure_worker`` and ``-c <Qt probe>``
(the display check). In a PyInstaller bundle ``sys.executable`` is this program, not Python,
so it answers those two forms the way ``python`` would; everything else is the ``kvgui`` CLI.
"""

from __future__ import annotations

import runpy
import sys


def main() -> int:
    argv = sys.argv
    if getattr(sys, "frozen", False) and len(argv) >= 3 and argv[1] == "-m":
        sys.argv = [argv[0], *argv[3:]]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
        return 0
    if getattr(sys, "frozen", False) and len(argv) >= 3 and argv[1] == "-c":
        sys.argv = ["-c", *argv[3:]]
        exec(compile(argv[2], "<string>", "exec"), {"__name__": "__main__"})
        return 0
    from kvgui.cli import main as kvgui_main

    return kvgui_main()


if __name__ == "__main__":
    raise SystemExit(main())
