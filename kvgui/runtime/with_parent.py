"""Become a program that ends when kvgui ends.

``python -m kvgui.runtime.with_parent PID -- PROGRAM ARG…``

Why: llama-server runs in a session of its own, so that Stop can signal it and whatever it
started as one group. A kvgui that is killed (SIGKILL, a crash, the OOM killer) never sends that
signal, and the server would live on, holding the port, gigabytes of RAM or VRAM, and the model
file. On Linux, ``PR_SET_PDEATHSIG`` asks the kernel to send SIGTERM (llama-server's clean
shutdown) when the parent dies, and the setting survives ``execve``; so this shim sets it, checks
that its parent (``PID``) has not already gone, and replaces itself with the program: same pid,
same argv, nothing left running in between. Elsewhere there is no such call and it just execs.

Only the standard library, imported lazily: it runs before every llama-server start.
"""

from __future__ import annotations

import os
import sys

PR_SET_PDEATHSIG = 1
EXIT_PARENT_GONE = 75  # EX_TEMPFAIL: the parent died before the program could start


def tie_to_parent(parent_pid: int, signum: int) -> bool:
    """Have ``signum`` sent to this process when its parent dies; False if it already has."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            sys.stderr.write(f"kvgui: prctl(PR_SET_PDEATHSIG) failed: {os.strerror(err)}\n")
    # the parent may have died before prctl: then we were re-parented and nobody waits for us
    return os.getppid() == parent_pid


def main(argv: list[str]) -> int:
    import signal

    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        sys.stderr.write("usage: python -m kvgui.runtime.with_parent PARENT_PID -- PROGRAM "
                         "[ARG…]\n")
        return 2
    if not tie_to_parent(int(argv[0]), signal.SIGTERM):
        sys.stderr.write(f"kvgui: not starting {argv[2]}: the process that asked for it "
                         f"(pid {argv[0]}) is gone\n")
        return EXIT_PARENT_GONE
    program = argv[2]
    try:
        os.execv(program, argv[2:])
    except OSError as exc:
        sys.stderr.write(f"kvgui: cannot run {program}: {exc.strerror or exc}\n")
        return 127
    return 127  # not reached


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
