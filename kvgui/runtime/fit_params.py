"""Verify with the user's own llama.cpp: ``llama-fit-params`` on their CUDA/Vulkan/Metal devices.

``llama-fit-params -fit off -fitp on`` loads the model's header with no_alloc on every device
the user's build sees and prints, per device and for the host, what llama.cpp would allocate
(model, context, compute, in MiB rounded down). With the exported llama-cli flags for the
Settings, that is the exact GPU check any GPU owner can run today, beside kvgui's estimate for
the same devices. The flags are checked against the binary's ``--help`` first (an older
build), as for Serve.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvgui.core.commandline.export import llama_cli_args
from kvgui.core.config.settings import Settings
from kvgui.runtime.childproc import child_env, describe_exit
from kvgui.runtime.llama_bin import ToolInfo

if TYPE_CHECKING:
    from kvgui.core.memory.estimate import Estimate

MIB = 1024 * 1024
FIT_TIMEOUT_S = 300.0
HOST = "Host"


class FitParamsError(RuntimeError):
    pass


@dataclass(frozen=True)
class FitRow:
    """One line of ``-fitp on``: a device (or "Host") and its MiB, rounded down."""

    device: str
    model_mib: int
    context_mib: int
    compute_mib: int

    @property
    def total_mib(self) -> int:
        return self.model_mib + self.context_mib + self.compute_mib


def fit_argv(tool: ToolInfo, settings: Settings, model: str | os.PathLike[str],
             extra_args: Sequence[str] = ()) -> list[str]:
    """The export's llama-cli flags for the settings (and ``extra_args``, e.g. kept flags
    or --rpc), run by llama-fit-params with fitting off and the figures printed."""
    args = llama_cli_args(settings, str(model), program=tool.path, extra_args=extra_args)
    return [*args, "-fit", "off", "-fitp", "on"]


def parse_rows(stdout: str) -> tuple[FitRow, ...]:
    rows = []
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            rows.append(FitRow(parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    return tuple(rows)


def run_fit_params(tool: ToolInfo, settings: Settings, model: str | os.PathLike[str], *,
                   extra_args: Sequence[str] = (),
                   timeout: float = FIT_TIMEOUT_S) -> tuple[FitRow, ...]:
    """Run it (synchronously: the CLI and tests; the window uses the process runner)."""
    argv = fit_argv(tool, settings, model, extra_args)
    tool.check(argv)
    t0 = time.perf_counter()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                           timeout=timeout, env=child_env(), stdin=subprocess.DEVNULL,
                           start_new_session=True, check=False)
    except subprocess.TimeoutExpired:
        raise FitParamsError(f"llama-fit-params did not answer in {timeout:g} s") from None
    return read_output(r.stdout, r.stderr, r.returncode, time.perf_counter() - t0)


def read_output(stdout: str, stderr: str, returncode: int | None,
                wall: float = 0.0) -> tuple[FitRow, ...]:
    rows = parse_rows(stdout)
    if returncode != 0 or not rows:
        tail = [ln for ln in stderr.splitlines() if ln.strip()][-4:]
        raise FitParamsError(f"llama-fit-params {describe_exit(returncode)}"
                             + ("; last lines:\n" + "\n".join(tail) if tail else ""))
    return rows


def compare(rows: Sequence[FitRow], est: Estimate) -> list[tuple[FitRow, FitRow | None]]:
    """Each llama.cpp row beside kvgui's for the same device, in MiB rounded down as
    llama.cpp prints them (model = weights, context = KV cache + recurrent state, compute =
    the compute buffer); None where the estimate has no such device. "Host" is kvgui's CPU."""
    by_name = {d.name: d for d in est.devices}
    out: list[tuple[FitRow, FitRow | None]] = []
    for row in rows:
        d = by_name.get("CPU" if row.device == HOST else row.device)
        mine = None if d is None else FitRow(row.device, d.weights // MIB,
                                             (d.kv + d.state) // MIB, d.compute // MIB)
        out.append((row, mine))
    return out
