"""What a CUDA process holds on the GPU beyond llama.cpp's own buffers: not yet measured.

llama.cpp's figures (and kvgui's, which equal them) are its buffers: weights, KV cache,
compute. A CUDA process also holds the CUDA context (the driver's per-process state and the
kernels it loads), cuBLAS's handle and workspace, ggml-cuda's memory pool (temporary
buffers of the matrix and attention kernels, grown to the largest a prompt needed and kept)
and CUDA graphs. None of that is in llama.cpp's memory breakdown ("unaccounted" in its
table), and it depends on the driver, the GPU, the build and the model. llama.cpp's ``--fit``
leaves 1 GiB free per device for it (common_params.fit_params_target), which is kvgui's
default safety margin too.

The CUDA check (benchmarks/gpu_check.sh, issue 17) measures it on a real GPU: the device's
used memory after a full-context prompt, less what was used before the process started, less
llama.cpp's CUDA buffers; ``python benchmarks/gpu_check.py fold RESULT.json`` prints the
measured value for ``CUDA_OVERHEAD``. Until a run has been folded in it is None: kvgui adds
nothing for it, and says that its CUDA figures are llama.cpp's buffers only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CudaOverhead:
    """The largest overhead one check measured, and where."""

    bytes: int
    gpu: str
    driver: str
    measured: str  # the date of the run (ISO)
    runs: int  # real loads it is the largest of


#: None: not measured yet (see the module docstring)
CUDA_OVERHEAD: CudaOverhead | None = None

UNVERIFIED_NOTE = ("the CUDA runtime's own memory (context, cuBLAS, memory pool) is not "
                   "included: not measured yet; the 1 GiB safety margin is meant to cover it")


def note() -> str:
    """One line for the user about the CUDA runtime's memory."""
    if CUDA_OVERHEAD is None:
        return UNVERIFIED_NOTE
    o = CUDA_OVERHEAD
    return (f"the CUDA runtime's own memory (context, cuBLAS, memory pool) measured up to "
            f"{o.bytes / 2**20:.0f} MiB on {o.gpu} (driver {o.driver}, {o.measured})")
