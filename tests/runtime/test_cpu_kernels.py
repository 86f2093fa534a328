"""The installed llama.cpp's extra-buffer CPU kernels: checked by a real decode, in a child;
a build that crashes there makes kvgui refuse the settings with the fix (-nr)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace

import pytest

from kvgui.core.config.settings import Settings
from kvgui.core.devices.device_budget import DeviceBudget
from kvgui.core.devices.hardware import cpu
from kvgui.core.memory.estimate import Verdict, estimate
from kvgui.core.memory.findings import Code
from kvgui.core.model.catalog import catalog_model
from kvgui.runtime import cpu_kernels

pytestmark = pytest.mark.llama


def test_the_check_is_a_real_decode_and_is_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVGUI_CHECK_KERNELS", "1")
    first = cpu_kernels.check_kernels(use_cache=False)
    assert first.checked and first.library.endswith(("libggml-cpu.so", ".dylib", ".dll"))
    # what the check says is what a decode through the extra buffers does, in a fresh child
    code = ("import sys; from pathlib import Path; import kvgui.runtime.cpu_kernels as k; "
            "exec(compile(k._CHILD, 'child', 'exec'))")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run([sys.executable, "-c", code, os.path.join(tmp, "m.gguf")],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert first.ok == (proc.returncode == 0), proc.stderr[-500:]
    if not first.ok:
        assert "SIG" in first.detail and "-nr" in first.advice
    again = cpu_kernels.check_kernels()  # from the cache this time
    assert again == first


def test_compiler_is_read_from_the_library() -> None:
    lib = cpu_kernels.library_path()
    assert lib is not None
    name = cpu_kernels.compiler_of(lib)
    assert name == "" or name.startswith(("GCC ", "clang"))


def test_a_crashing_build_is_refused_with_the_fix() -> None:
    model = catalog_model("Llama-3.1-8B-Instruct Q4_K_M")
    crashing = replace(cpu.preset("amx"), kernels_crash="this build crashes in its AMX kernels")
    devices = [DeviceBudget("CPU", 64 << 30, is_gpu=False, host=crashing)]
    est = estimate(model, Settings(), devices)
    assert est.verdict is Verdict.REFUSED
    (f,) = [f for f in est.refusals if f.code is Code.LLAMA_ABORTS]
    assert dict(f.fix) == {"repack": False} and f.field == "repack"
    fixed = estimate(model, Settings(repack=False), devices)
    assert fixed.verdict is Verdict.FITS
    assert fixed.weights < est.weights  # no AMX copies: the file's sizes
