"""``kvgui [MODEL]``: open the window, or say in one line why it cannot open and what to install.

Qt aborts the whole process when its platform plugin cannot load (a missing libxcb-cursor0,
no display), which no ``try`` can catch. So on Linux a tiny child process opens Qt first;
if it dies, its stderr names the missing library, and the user gets the package to install.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from collections.abc import Sequence

EXIT_USAGE = 2
EXIT_NO_GUI = 1

_PROBE = (
    "import sys\n"
    "from PySide6.QtGui import QGuiApplication\n"
    "app = QGuiApplication(sys.argv[:1])\n"
    "print(app.platformName())\n"
)
_HEADLESS_PLATFORMS = {"offscreen", "minimal", "vnc", "linuxfb", "eglfs"}
_SO = re.compile(r"(lib[\w+.-]+?)\.so\.(\d+)")


def debian_package(soname: str) -> str:
    """Debian's package for a library: libxcb-cursor.so.0 -> libxcb-cursor0 (see install_hints)."""
    from kvgui.core.install_hints import debian_package as package

    return package(soname)


# "libxkbcommon-x11.so.0: cannot open shared object file": the library the loader did not find
_MISSING = re.compile(r"(lib[\w+.-]+?\.so(?:\.\d+)*): cannot open shared object file")
_NO_CONNECT = re.compile(r"could not connect to display ?(\S*)", re.IGNORECASE)


def explain_probe_failure(stderr: str) -> str:
    """One line from Qt's stderr: which library is missing and the package that has it.

    Qt >= 6.5 prints "xcb-cursor0 or libxcb-cursor0 is needed" whenever the xcb plugin fails,
    whatever the cause (an unreachable display too), so that line alone proves nothing: the
    loader's "cannot open shared object file" and xcb's "could not connect" say what happened.
    """
    from kvgui.core.install_hints import apt_install, qt_x11_hint

    libs = sorted(set(_MISSING.findall(stderr)))
    if libs:
        pkgs = list(dict.fromkeys(debian_package(lib) for lib in libs))
        return (f"Qt cannot load its display plugin: missing {', '.join(libs)} "
                f"(Debian/Ubuntu: {apt_install(pkgs)})")
    if m := _NO_CONNECT.search(stderr):
        where = f" {m.group(1)}" if m.group(1) else ""
        return (f"Qt could not connect to the X display{where}: is the X server running and "
                "DISPLAY right? Without a desktop, use the command line: kvgui estimate MODEL")
    if "xcb-cursor0" in stderr and not _loads("libxcb-cursor.so.0"):
        return ("Qt cannot load its display plugin: missing libxcb-cursor.so.0 "
                "(Debian/Ubuntu: sudo apt install libxcb-cursor0)")
    if "Could not load the Qt platform plugin" in stderr or "no Qt platform plugin" in stderr:
        return f"Qt cannot load its display plugin. {qt_x11_hint()}"
    last = [line for line in stderr.strip().splitlines() if line.strip()]
    return f"Qt could not start: {last[-1] if last else 'no reason given'}"


def _loads(soname: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def probe_display(timeout: float = 30.0) -> str | None:
    """None if Qt can open the display here, else one line saying why (Linux only)."""
    if not sys.platform.startswith("linux"):
        return None
    platform = os.environ.get("QT_QPA_PLATFORM", "").split(":")[0]
    if platform in _HEADLESS_PLATFORMS:
        return None
    if not platform and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        return ("no display: neither DISPLAY nor WAYLAND_DISPLAY is set. Run kvgui in a "
                "desktop session, or use the command line: kvgui estimate MODEL, kvgui fit MODEL")
    env = dict(os.environ, QT_DEBUG_PLUGINS="1")
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "Qt did not start within 30 s (is the display responding?)"
    except OSError as exc:
        return f"could not start Python to check the display: {exc.strerror}"
    if proc.returncode == 0:
        return None
    return explain_probe_failure(proc.stderr)


def check_qt() -> str | None:
    """None if PySide6 imports, else what to install."""
    try:
        import PySide6.QtWidgets  # noqa: F401
    except ModuleNotFoundError:
        return "PySide6 is not installed: pip install PySide6-Essentials pyqtgraph"
    except ImportError as exc:
        m = _SO.search(str(exc))
        if m:
            return (f"Qt cannot load {m.group(0)} (Debian/Ubuntu: sudo apt install "
                    f"{debian_package(m.group(0))})")
        return f"Qt cannot load: {str(exc).splitlines()[0]}"
    return None


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kvgui",
        description="Open the kvgui window, optionally on MODEL (a .gguf file, any part of "
                    "a split model). Subcommands: kvgui --help.")
    parser.add_argument("model", metavar="MODEL", nargs="?", help="a .gguf file to open")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="also log to stderr (-vv: more); Help ▸ Show log has the file")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    from kvgui.logs import setup_logging

    setup_logging(args.verbose)
    if args.model and not os.path.isfile(args.model):
        from kvgui.sources.resolve import looks_like_hub_reference

        if not looks_like_hub_reference(args.model):
            print(f"kvgui: no such file (nor a Hugging Face model such as "
                  f"org/repo:Q4_K_M): {args.model}", file=sys.stderr)
            return EXIT_USAGE
    for check in (check_qt, probe_display):
        problem = check()
        if problem:
            print(f"kvgui: {problem}", file=sys.stderr)
            return EXIT_NO_GUI
    try:
        from kvgui.ui.app import run

        model = args.model
        return run(os.path.abspath(model) if model and os.path.isfile(model) else model)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # never a traceback on the terminal: one line and a log file
        from kvgui.logs import log_path

        logging.getLogger("kvgui.gui").critical("the window failed", exc_info=True)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"kvgui: the window failed: {reason} (details in {log_path()})", file=sys.stderr)
        return EXIT_NO_GUI
