"""How close the estimate is to llama.cpp, over the catalog × a settings matrix.

Run: python benchmarks/accuracy.py  (needs the test extra: gguf)
For every catalog model, writes its header-faithful sparse GGUF, asks the bundled llama.cpp
(no_alloc dry run) what it would allocate, and prints the estimate's error per figure.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path


def main() -> int:
    from kvgui.core.config.settings import FlashAttn, Settings
    from kvgui.core.memory.estimate import estimate
    from kvgui.core.model.catalog import load_catalog
    from kvgui.core.model.info import load_model
    from kvgui.runtime.dryrun import DryRunError, dry_run_many
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    matrix = [Settings(n_ctx=c, type_k=k, type_v=v, flash_attn=fa, n_ubatch=ub)
              for c in (4096, 10000, 32768)
              for k, v in (("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"))
              for fa in (FlashAttn.ON, FlashAttn.OFF)
              for ub in (512,)
              if fa is FlashAttn.ON or v == "f16"]
    worst = 0.0
    n_kv = n_exact = n_compute = 0
    print(f"{'model':<34}{'runs':>5}{'KV exact':>10}{'compute exact':>15}"
          f"{'compute err (min..max)':>26}")
    with tempfile.TemporaryDirectory() as tmp:
        seen = set()
        for entry in load_catalog():
            if entry.name in seen:
                continue
            seen.add(entry.name)
            path = write_sparse_gguf(entry, Path(tmp) / f"{entry.label.replace(' ', '-')}.gguf")
            model = load_model(path)
            errs, exact, runs, compute_exact = [], 0, 0, 0
            for s, got in zip(matrix, dry_run_many(path, matrix), strict=True):
                est = estimate(model, s)
                if isinstance(got, DryRunError) or est.errors or got.exact is None:
                    continue
                runs += 1
                context = sum(b.context for b in got.exact)
                exact += est.kv + est.state == context
                errs.append(est.compute / got.compute_total - 1)
                compute_exact += est.compute == got.compute_total
            n_kv += runs
            n_exact += exact
            n_compute += compute_exact
            worst = max([worst, *(abs(e) for e in errs)])
            span = f"{min(errs) * 100:+.1f}% .. {max(errs) * 100:+.1f}%" if errs else "-"
            print(f"{entry.label:<34}{runs:>5}{exact:>10}{compute_exact:>15}{span:>26}")
            path.unlink()
    print(f"\nKV cache + state equal to the byte in {n_exact}/{n_kv} runs; compute buffer in "
          f"{n_compute}/{n_kv}; worst compute-buffer error {worst * 100:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
