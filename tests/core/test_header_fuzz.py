"""Value-aware fuzzing of real headers (kvgui.testing.header_fuzz): only one-line refusals,
within a per-case time cap and a memory cap.

The default run is a few seconds; ``KVGUI_FUZZ_CASES=20000`` (and ``KVGUI_FUZZ_SEED``) runs
longer. The cases run in a child process under an address-space limit, so a blow-up is a
reported MemoryError, not the test machine brought down.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def test_mutated_real_headers_give_one_line_refusals_only(
        record_property: pytest.RecordProperty) -> None:
    cases = int(os.environ.get("KVGUI_FUZZ_CASES", "250"))
    seed = int(os.environ.get("KVGUI_FUZZ_SEED", "1"))
    proc = subprocess.run(
        [sys.executable, "-m", "kvgui.testing.header_fuzz", "--cases", str(cases),
         "--seed", str(seed), "--case-seconds", "5", "--memory-mib", "1024"],
        capture_output=True, text=True, timeout=120 + cases)
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-2000:]
    out = json.loads(lines[-1])
    record_property("fuzz", out)
    assert out["n_failures"] == 0, json.dumps(out["failures"][:5], indent=1)
    # the cases reach both sides: models that load (and are estimated) and refusals
    assert out.get("loaded", 0) > cases // 20 and out.get("refused", 0) > cases // 3
    assert proc.returncode == 0
