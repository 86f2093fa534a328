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

--devices [FAMILY ...]: the multi-device table instead (needs llama.cpp's tools:
python -m kvgui.testing.llama_tools build). Three ggml-rpc-server devices on 127.0.0.1 and
llama-fit-params (no_alloc) against kvgui per device, over kvgui.testing.device_matrix.cases():
-ngl all / half x 1-3 devices (-ts 3,1 for two) x -nkvo x (MoE) experts of the first third of
the layers on the CPU x flash attention with f16 / q8_0 / q4_0 caches and without with f16.
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
    ap.add_argument("--devices", action="store_true",
                    help="the multi-device table (RPC devices, llama-fit-params)")
    args = ap.parse_args(argv)
    if args.devices:
        return devices_main(args.families or DEVICE_FAMILIES, args.markdown)

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


#: dense GQA, sliding window, MoE (128 experts), MoE with shared experts, MLA with a shared
#: expert, MoE with SWA and sinks, a Mamba-2 hybrid, a recurrent Mamba-2, a fused-QKV dense
#: model, a gated-delta-net hybrid MoE
DEVICE_FAMILIES = ["llama", "gemma3", "qwen3moe", "glm4moe", "deepseek2", "gpt-oss",
                   "falcon-h1", "mamba2", "phi3", "qwen35moe"]


def devices_main(families: list[str], as_markdown: bool) -> int:
    from kvgui.core.model.archspec import ModelSpec
    from kvgui.core.model.info import load_model
    from kvgui.runtime.llama_backend import probe_host_cpu
    from kvgui.testing.arch_fixtures import fixtures
    from kvgui.testing.device_matrix import DEVICE_BYTES, cases, compare_case
    from kvgui.testing.llama_tools import find_tools
    from kvgui.testing.rpc import RpcDevices
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    tools = find_tools()
    if tools is None:
        print("llama.cpp's tools are not built: python -m kvgui.testing.llama_tools build")
        return 2
    host = probe_host_cpu()
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    print(f"{'family':<12}{'model':<34}{'runs':>5}{'wts':>5}{'KV':>5}{'cmp':>5}{'split':>6}"
          "  compute error (largest)")
    with tempfile.TemporaryDirectory() as tmp, RpcDevices(tools, [DEVICE_BYTES] * 3) as devs:
        for fx in fixtures():
            if fx.key not in families:
                continue
            spec = ModelSpec(fx.spec.name, fx.spec.arch, "BF16", fx.spec.hp)
            path = write_sparse_gguf(spec, Path(tmp) / "model.gguf")
            model = load_model(path)
            out = [compare_case(tools, path, model, devs, c, host) for c in cases(model)]
            path.unlink()
            ran = [o for o in out if not o.refused]
            worst = max((o.compute_error for o in ran), key=abs, default=0.0)
            row = {"family": fx.key, "arch": fx.spec.arch, "model": fx.spec.name,
                   "runs": len(ran), "weights": sum(o.weights_exact for o in ran),
                   "kv": sum(o.kv_exact for o in ran), "compute": sum(o.compute_exact for o in ran),
                   "splits": sum(o.splits_exact for o in ran), "worst": worst,
                   "missed": [f"{o.case.describe()}: {'; '.join(o.mismatches)}"
                              for o in ran if not o.exact]}
            rows.append(row)
            print(f"{fx.spec.arch:<12}{fx.spec.name[:33]:<34}{row['runs']:>5}{row['weights']:>5}"
                  f"{row['kv']:>5}{row['compute']:>5}{row['splits']:>6}  {worst * 100:+.3f}%",
                  flush=True)
            for m in row["missed"]:
                print(f"    {m[:160]}")
    total = sum(r["runs"] for r in rows)
    print(f"\n{len(rows)} models, {total} runs in {time.perf_counter() - t0:.0f} s")
    if as_markdown:
        print("| family | model (sparse header, BF16) | runs | weights exact | KV + state exact "
              "| compute to 0.01 MiB | splits equal | largest compute error |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['arch']} | {r['model']} | {r['runs']} | {r['weights']} | {r['kv']} | "
                  f"{r['compute']} | {r['splits']} | {r['worst'] * 100:+.2f}% |")
        print(f"| **all {len(rows)}** | | **{total}** | **{sum(r['weights'] for r in rows)}** | "
              f"**{sum(r['kv'] for r in rows)}** | **{sum(r['compute'] for r in rows)}** | "
              f"**{sum(r['splits'] for r in rows)}** | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
