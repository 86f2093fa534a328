"""kvgui's CUDA figures against a real CUDA build of the bundled llama.cpp, in one device run.

    python benchmarks/gpu_check.py prepare          # here: fill .gpucheck/ (what travels)
    bash benchmarks/gpu_check.sh                    # on the device (carry: [".gpucheck"])
    GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh    # here: the rehearsal, CUDA parts skipped
    python benchmarks/gpu_check.py fold RESULT.json # the README rows and the CUDA overhead

``run`` is what gpu_check.sh calls: the steps of kvgui.testing.gpucheck.steps within a
budget, writing one JSON file (kvgui.testing.gpucheck.report) after each step.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _prepare(args: argparse.Namespace) -> int:
    from kvgui.testing.gpucheck import source
    from kvgui.testing.llama_tools import llama_cpp_source

    model = args.model
    if model is None:
        try:
            from kvgui.testing.real_model import real_model_path

            model = real_model_path()
        except Exception as exc:  # no realmodel extra: look in the cache it assembles into
            from kvgui.testing.llama_tools import cache_root
            from kvgui.testing.real_model import FILE_NAME

            cached = cache_root() / "models" / FILE_NAME
            model = cached if cached.is_file() else None
            if model is None:
                print(f"note: no real model ({exc}); the run will skip the real-header loads",
                      file=sys.stderr)
    manifest = source.prepare(ROOT, args.llama_src or llama_cpp_source(), model)
    tree = source.working_tree_bytes(ROOT)
    carry = int(manifest["carry_bytes"])  # type: ignore[call-overload]
    print(json.dumps(manifest, indent=1))
    print(f"carry folder {source.CARRY_DIR}/: {carry / 2**20:.2f} MiB; working tree "
          f"{tree / 2**20:.2f} MiB; together {(carry + tree) / 2**20:.2f} MiB of the "
          f"{source.CARRY_LIMIT >> 20} MiB a call carries")
    return 0 if carry + tree <= source.CARRY_LIMIT else 1


def _run(args: argparse.Namespace) -> int:
    from kvgui.testing.gpucheck.steps import run_check

    data = run_check(args.out, root=ROOT, dry=args.dry, budget_s=args.budget,
                     build_dry=args.build_dry, parallel=args.parallel,
                     artifacts=None if args.dry else args.out.parent)
    from kvgui.testing.gpucheck.fold import summary_lines

    print("\n".join(summary_lines(data)))
    return 0


def _fold(args: argparse.Namespace) -> int:
    from kvgui.testing.gpucheck import fold
    from kvgui.testing.gpucheck.report import load

    data = load(args.result)
    print(fold.render(data))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="fill .gpucheck/ with what the device run carries")
    p.add_argument("--model", type=Path, help="a real GGUF whose header travels "
                   "(default: the realmodel extra's Gemma-3-270M)")
    p.add_argument("--llama-src", type=Path, help="vendor/llama.cpp (default: the bundled one)")
    r = sub.add_parser("run", help="the check itself (gpu_check.sh runs this)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--dry", action="store_true", help="no CUDA: the rehearsal")
    r.add_argument("--build-dry", action="store_true",
                   help="with --dry: build the subset without CUDA (minutes on 2 cores)")
    r.add_argument("--budget", type=float, default=500.0, help="seconds for the whole run")
    r.add_argument("--parallel", type=int, default=8, help="llama-fit-params at a time")
    f = sub.add_parser("fold", help="README rows and the CUDA overhead from a result")
    f.add_argument("result", type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return {"prepare": _prepare, "run": _run, "fold": _fold}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
