"""Time from launching ``kvgui`` to its window being visible on an X server (Xvfb).

The first-run target is about 1.5 s to a visible window on the embedded default (the model
catalog). This starts a private Xvfb, launches the command N times with a fresh config
directory (a first start every time), and polls ``xdotool search --onlyvisible`` for the
window, so the figure includes everything the user waits for: interpreter start, imports,
the display probe, building the window and mapping it.

    python packaging/measure_startup.py                     # kvgui from this Python's venv
    python packaging/measure_startup.py -- dist/kvgui/kvgui # the PyInstaller bundle
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_display() -> int:
    for n in range(90, 200):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return n
    raise SystemExit("measure_startup: no free X display number")


def start_xvfb(n: int, size: str, reset: bool = False) -> subprocess.Popen[bytes]:
    """Xvfb on :n; ``reset``: let it reset whenever its last client leaves, as xvfb-run's does
    (a client connecting during the reset is refused)."""
    args = ["Xvfb", f":{n}", "-screen", "0", size, "-nolisten", "tcp"]
    proc = subprocess.Popen(args if reset else [*args, "-noreset"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("measure_startup: Xvfb did not start")
        time.sleep(0.02)
    return proc


def visible_window(env: dict[str, str], pid: int) -> bool:
    out = subprocess.run(["xdotool", "search", "--onlyvisible", "--pid", str(pid)],
                         env=env, capture_output=True, text=True)
    return bool(out.stdout.strip())


def one_run(command: list[str], env: dict[str, str], timeout: float) -> float | None:
    """Seconds to a visible window, or None if none appeared within ``timeout``."""
    with tempfile.TemporaryDirectory(prefix="kvgui-startup-") as cfg:
        run_env = dict(env, KVGUI_CONFIG_DIR=cfg)
        t0 = time.perf_counter()
        proc = subprocess.Popen(command, env=run_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            while time.perf_counter() - t0 < timeout:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    print(f"kvgui exited ({proc.returncode}): {err.strip()[-300:]}")
                    return None
                if visible_window(run_env, proc.pid):
                    return time.perf_counter() - t0
                time.sleep(0.005)
            return None
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=5)
    parser.add_argument("--size", default="1920x1200x24", help="Xvfb screen (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=20.0)
    parser.add_argument("--reset", action="store_true",
                        help="let Xvfb reset when its last client leaves (as under xvfb-run)")
    parser.add_argument("command", nargs="*", help="what to launch (default: kvgui of this "
                        "Python: python -m kvgui)")
    args = parser.parse_args(argv)
    for tool in ("Xvfb", "xdotool"):
        if shutil.which(tool) is None:
            raise SystemExit(f"measure_startup: {tool} is missing (sudo apt install xvfb xdotool)")
    command = args.command or [sys.executable, "-m", "kvgui"]
    n = free_display()
    xvfb = start_xvfb(n, args.size, args.reset)
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    env["DISPLAY"] = f":{n}"
    try:
        times = []
        for i in range(args.runs):
            t = one_run(command, env, args.timeout)
            print(f"run {i + 1}: " + ("no window" if t is None else f"{t:.3f} s"), flush=True)
            time.sleep(0.3)  # let the server settle (and reset, with --reset)
            if t is not None:
                times.append(t)
    finally:
        xvfb.terminate()
        xvfb.wait()
    if times:
        print(f"launch to visible window: min {min(times):.3f} s, median "
              f"{statistics.median(times):.3f} s, max {max(times):.3f} s ({len(times)} runs)")
    return 0 if len(times) == args.runs else 1


if __name__ == "__main__":
    raise SystemExit(main())
