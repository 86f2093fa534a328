"""kvgui's estimate next to the bundled llama.cpp's own dry run, figure by figure.

For one header-faithful model file and many settings, ``compare`` asks llama.cpp once (one
no_alloc child, ``dry_run_many``) and lines each result up with ``estimate``: padded context,
KV cache + recurrent state (exact bytes from llama.cpp's memory breakdown), weights and the
compute buffer. tests/core/test_architectures.py asserts on these rows; benchmarks/accuracy.py
prints them for every family and the full settings matrix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.memory.estimate import Estimate, estimate
from kvgui.core.model.info import ModelInfo, load_model

ON, OFF = FlashAttn.ON, FlashAttn.OFF


def default_matrix() -> list[Settings]:
    """The settings every family is checked with in the default test run: each cache type,
    flash attention on and off, a context that needs padding, four sequences (split and
    unified), --swa-full and a larger ubatch -- seven contexts for one model load."""
    return [
        Settings(n_ctx=4096, flash_attn=ON),
        Settings(n_ctx=4096, flash_attn=OFF),
        Settings(n_ctx=10000, type_k="q8_0", type_v="q8_0", flash_attn=ON),  # padded to 10240
        Settings(n_ctx=8192, type_k="q4_0", type_v="q4_0", n_parallel=4, flash_attn=ON),
        Settings(n_ctx=16384, type_k="q8_0", type_v="q8_0", n_parallel=4, kv_unified=True,
                 flash_attn=ON),
        Settings(n_ctx=32768, swa_full=True, flash_attn=ON),
        Settings(n_ctx=8192, n_ubatch=1024, flash_attn=ON),
    ]


def full_matrix() -> list[Settings]:
    """benchmarks/accuracy.py: every combination of cache type x flash attention x context x
    parallel layout, plus --swa-full and -ub 1024 variants."""
    runs = []
    for n_ctx in (4096, 10000, 32768):
        for kv in ("f16", "q8_0", "q4_0"):
            for fa in (ON, OFF):
                if fa is OFF and kv != "f16":
                    continue  # llama.cpp refuses a quantized V cache without flash attention
                for n_par, unified in ((1, False), (4, False), (4, True)):
                    runs.append(Settings(n_ctx=n_ctx, type_k=kv, type_v=kv, flash_attn=fa,
                                         n_parallel=n_par, kv_unified=unified))
    runs += [Settings(n_ctx=32768, swa_full=True, flash_attn=OFF),
             Settings(n_ctx=8192, n_ubatch=1024, flash_attn=OFF),
             Settings(n_ctx=65536, type_k="q8_0", type_v="q8_0", n_ubatch=1024, flash_attn=ON)]
    runs += default_matrix()  # the default test run's settings are a subset
    return list(dict.fromkeys(runs))


@dataclass(frozen=True)
class Row:
    """One settings' figures, ours and llama.cpp's (bytes)."""

    settings: Settings
    estimate: Estimate
    refused: str  # llama.cpp's reason when it refused these settings, else ""
    n_ctx: int = 0
    context: int = 0  # KV cache + recurrent state
    weights: int = 0  # all model buffers
    weights_extra: int = 0  # of which in extra CPU buffer types (AMX, repack)
    compute: int = 0

    @property
    def context_exact(self) -> bool:
        return self.estimate.kv + self.estimate.state == self.context

    @property
    def compute_error(self) -> float:
        """Relative error of our compute buffer (+: we reserve more than llama.cpp)."""
        return self.estimate.compute / self.compute - 1 if self.compute else 0.0


def compare(path: str | os.PathLike[str], settings: Sequence[Settings],
            model: ModelInfo | None = None) -> list[Row]:
    """llama.cpp's dry run of ``path`` for every settings, next to kvgui's estimate."""
    from kvgui.runtime.dryrun import DryRunError, dry_run_many

    model = model or load_model(path)
    rows = []
    for s, got in zip(settings, dry_run_many(path, settings), strict=True):
        est = estimate(model, s)
        if isinstance(got, DryRunError):
            rows.append(Row(s, est, refused=got.reason or "refused"))
            continue
        if got.exact is None:
            raise RuntimeError("the dry run gave no exact memory breakdown")
        extra = sum(b.model for b in got.exact if b.name not in ("CPU", "CPU_Mapped"))
        rows.append(Row(s, est, refused="", n_ctx=int(got.n_ctx or 0),
                        context=sum(b.context for b in got.exact), weights=got.weights,
                        weights_extra=extra, compute=got.compute_total))
    return rows


def describe(s: Settings) -> str:
    """Short command-line-like form of the settings that matter here."""
    parts = [f"-c {s.n_ctx}", f"-ctk {s.type_k} -ctv {s.type_v}",
             f"-fa {s.flash_attn.value}"]
    if s.n_parallel > 1:
        parts.append(f"-np {s.n_parallel}")
    if s.kv_unified:
        parts.append("-kvu")
    if s.swa_full:
        parts.append("--swa-full")
    if s.n_ubatch != 512:
        parts.append(f"-ub {s.n_ubatch}")
    return " ".join(parts)
