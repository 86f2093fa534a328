"""llama-fit-params over the matrix, several processes at a time, parsed for any device names.

``llama-fit-params -fit off -fitp on -v`` loads the model with no_alloc and prints what it
would allocate per device: the memory breakdown (whole MiB, rounded down), each backend's
compute buffer (two decimals) and the KV cache's size line. The parser is kvgui.testing.rpc's
(``parse_result``): its rows are named as llama.cpp names the devices, ``CUDA0`` on a CUDA
build, ``RPC0`` over ggml-rpc-server, ``Host`` for host memory; the host's compute buffer is
``CUDA_Host`` (pinned) when a CUDA device is the first one, else ``CPU``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kvgui.core.config.settings import ALL_LAYERS, Settings
from kvgui.testing.rpc import FitParamsResult, parse_result

log = logging.getLogger(__name__)

HOST_COMPUTE_BUFFERS = ("CUDA_Host", "CPU")  # the host's compute buffer type, by preference


def args_for(model: Path, s: Settings) -> list[str]:
    """llama-fit-params' arguments for ``s`` (exactly these settings: -fit off)."""
    ngl = "all" if s.n_gpu_layers == ALL_LAYERS else str(s.n_gpu_layers)
    args = ["-m", str(model), "-c", str(s.n_ctx), "-ngl", ngl,
            "-b", str(s.n_batch), "-ub", str(s.n_ubatch), "-np", str(s.n_parallel),
            "-fa", s.flash_attn.value, "-ctk", s.type_k, "-ctv", s.type_v]
    if not s.kv_offload:
        args.append("-nkvo")
    if s.kv_unified:
        args.append("-kvu")
    if s.swa_full:
        args.append("--swa-full")
    if not s.repack:
        args.append("-nr")
    return [*args, "-fit", "off", "-fitp", "on", "-v"]


@dataclass
class FitRun:
    key: str
    args: list[str]
    result: FitParamsResult | None = None
    error: str = ""
    seconds: float = 0.0


def compute_of(r: FitParamsResult, device: str) -> float:
    """The two-decimal compute buffer of a device ("CUDA0", "RPC1") or of "Host", in MiB."""
    if device == "Host":
        return next((r.compute_mib[b] for b in HOST_COMPUTE_BUFFERS if b in r.compute_mib), 0.0)
    if device in r.compute_mib:
        return r.compute_mib[device]
    return r.compute_of(device)  # an RPC device: "RPC0[host:port]"


def run_one(binary: Path, key: str, args: Sequence[str], timeout: float,
            env: dict[str, str] | None = None) -> FitRun:
    run = FitRun(key, list(args))
    t0 = time.monotonic()
    try:
        proc = subprocess.run([str(binary), *args], capture_output=True, text=True,
                              errors="replace", timeout=timeout, check=False, env=env,
                              start_new_session=True)
    except subprocess.TimeoutExpired:
        run.error = f"timed out after {timeout:.0f} s"
    else:
        if proc.returncode != 0:
            tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-3:]
            run.error = f"exited with {proc.returncode}: " + " | ".join(tail)
        else:
            try:
                run.result = parse_result(args, proc.stdout, proc.stderr, fit=False)
            except (ValueError, KeyError, IndexError) as exc:  # a log we cannot read
                log.exception("cannot parse llama-fit-params' output for %s", key)
                run.error = f"unparsable output: {type(exc).__name__}: {exc}"
    run.seconds = round(time.monotonic() - t0, 2)
    return run


def run_many(binary: Path, jobs: Sequence[tuple[str, list[str]]], *, parallel: int,
             deadline: float, per_run_timeout: float = 60.0,
             env: dict[str, str] | None = None) -> list[FitRun]:
    """Run each (key, args) job, ``parallel`` at a time, none started after ``deadline``
    (time.monotonic()); those not run come back with an error saying so, in order."""
    env = dict(os.environ if env is None else env)

    def one(job: tuple[str, list[str]]) -> FitRun:
        key, args = job
        left = deadline - time.monotonic()
        if left < 2:
            return FitRun(key, args, error="not run: the deadline had passed")
        return run_one(binary, key, args, min(per_run_timeout, left), env)

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(one, jobs))
