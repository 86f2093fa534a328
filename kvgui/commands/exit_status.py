"""Every kvgui command's exit status, so a script can tell the outcomes apart."""

from __future__ import annotations

from kvgui.core.memory.estimate import Verdict

FITS = 0  # it fits (or there was nothing to judge: no budget)
OVER = 1  # it does not fit the memory budget
USAGE = 2  # bad input: a flag, a file, a name
REFUSED = 3  # llama.cpp would refuse these settings (see the reason printed)
LLAMA_FAILED = 4  # llama.cpp itself failed (a dry run, a load, a generation)
INTERRUPTED = 130

EPILOG = ("exit status: 0 fits (or no budget to judge) · 1 does not fit the budget · "
          "2 bad input · 3 llama.cpp would refuse these settings · 4 llama.cpp failed")


def for_verdict(verdict: Verdict) -> int:
    return {Verdict.FITS: FITS, Verdict.UNKNOWN: FITS, Verdict.OVER: OVER,
            Verdict.REFUSED: REFUSED}[verdict]
