"""How close the estimate is to llama.cpp, for every architecture family x the full settings matrix.

Run: python benchmarks/accuracy.py [--markdown] [--json OUT.json] [FAMILY ...]
(needs the test extra: gguf). For every family fixture (kvgui.testing.arch_fixtures: a
catalog model or a test-only model from a published config), writes its header-faithful
sparse GGUF in BF16 (no weight lands in an AMX / repack CPU buffer, so weights compare byte
for byte), asks the bundled llama.cpp (no_alloc dry run, one child per model) what it would
allocate for each settings of kvgui.testing.truth_table.full_matrix(), and prints per family:
padded context, KV cache + recurrent state and weights (exact or not), and the compute
buffer's error range. --markdown prints the README table; --json writes the figures that
kvgui/core/memory/verification.py's table is taken from.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def main(argv: list[str] | None = None) -> int:
    from kvgui.core.memory.compute import simulates
    from kvgui.core.model.archspec import ModelSpec
    from kvgui.core.model.info import load_model
    from kvgui.testing.arch_fixtures import fixtures
    from kvgui.testing.sparse_gguf import write_sparse_gguf
    from kvgui.testing.truth_table import compare, describe, full_matrix

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("families", nargs="*", help="fixture keys (default: all)")
    ap.add_argument("--markdown", action="store_true", help="print the README table")
    ap.add_argument("--json", type=Path, help="write the figures as JSON")
    args = ap.parse_args(argv)

    matrix = full_matrix()
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    print(f"{'family':<15}{'model':<38}{'runs':>5}{'ctx':>5}{'KV+S':>6}{'wts':>5}"
          f"{'cmp=':>5}  compute error (min .. max)   aborts")
    with tempfile.TemporaryDirectory() as tmp:
        for fx in fixtures():
            if args.families and fx.key not in args.families and fx.spec.arch not in \
                    args.families:
                continue
            spec = ModelSpec(fx.spec.name, fx.spec.arch, "BF16", fx.spec.hp)
            path = write_sparse_gguf(spec, Path(tmp) / "model.gguf")
            model = load_model(path)
            rows = compare(path, matrix, model)
            path.unlink()
            ran = [r for r in rows if not r.refused]
            aborted = [describe(r.settings) + ": " + r.refused for r in rows
                       if r.refused and not r.estimate.errors]
            errs = [r.compute_error for r in ran]
            res = {
                "family": fx.key, "arch": fx.spec.arch, "model": fx.spec.name,
                "hf": fx.hf_repo, "catalog": bool(fx.label), "replayed": simulates(model),
                "runs": len(ran),
                "n_ctx_exact": sum(r.n_ctx == r.estimate.n_ctx for r in ran),
                "context_exact": sum(r.context_exact for r in ran),
                "weights_exact": sum(r.estimate.weights == r.weights for r in ran),
                "compute_exact": sum(r.estimate.compute == r.compute for r in ran),
                "compute_min": min(errs, default=0.0), "compute_max": max(errs, default=0.0),
                "aborted": aborted,
                "refused_both": sum(1 for r in rows if r.refused and r.estimate.errors),
            }
            results.append(res)
            span = f"{res['compute_min'] * 100:+6.1f}% .. {res['compute_max'] * 100:+6.1f}%"
            print(f"{fx.spec.arch:<15}{fx.spec.name[:37]:<38}{len(ran):>5}{res['n_ctx_exact']:>5}"
                  f"{res['context_exact']:>6}{res['weights_exact']:>5}{res['compute_exact']:>5}"
                  f"  {span:<27}  {len(aborted)}", flush=True)
            for a in aborted:
                print(f"    llama.cpp aborted: {a[:140]}")
    total = sum(r["runs"] for r in results)
    print(f"\n{len(results)} families, {total} runs in {time.perf_counter() - t0:.0f} s: "
          f"padded context exact in {sum(r['n_ctx_exact'] for r in results)}, KV + state in "
          f"{sum(r['context_exact'] for r in results)}, weights in "
          f"{sum(r['weights_exact'] for r in results)}, compute buffer in "
          f"{sum(r['compute_exact'] for r in results)}")
    if args.markdown:
        print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| family | model (published config) | KV + state | weights | compute buffer |",
             "|---|---|---|---|---|"]
    for r in results:
        exact = "exact" if r["context_exact"] == r["runs"] else \
            f"{r['context_exact']}/{r['runs']} exact"
        weights = "exact" if r["weights_exact"] == r["runs"] else \
            f"{r['weights_exact']}/{r['runs']} exact"
        if r["compute_exact"] == r["runs"]:
            compute = "exact (replayed)"
        else:
            compute = f"{r['compute_min'] * 100:+.1f}% .. {r['compute_max'] * 100:+.1f}%"
        lines.append(f"| {r['arch']} | {r['model']} | {exact} | {weights} | {compute} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
