"""kvgui's planner against llama.cpp's ``--fit``: never a shorter context, never more on the CPU.

For each model (dense, sliding-window, two MoE), card (an RPC device of 8, 12, 16 GiB) and
context (fixed, or ``auto``: -c 0, llama.cpp picks it), llama.cpp's ``llama-fit-params -fit
on -fitt 1024`` chooses the layers and the experts kept in host memory; kvgui's planner
gets the same budget; kvgui's placement is then checked by llama-fit-params itself
(kvgui.testing.planner_vs_fit). Needs llama.cpp's tools
(``python -m kvgui.testing.llama_tools build``) and the gguf package (sparse files).

Run: python benchmarks/planner_vs_fit.py [--markdown] [--json OUT] [--quick]
Also prints the speed model's assumptions (kvgui.core.memory.speed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

MODELS = (
    ("Llama-3.1-8B-Instruct Q4_K_M", (8192, 32768, 0)),  # dense, GQA
    ("Gemma-3-12B-it Q4_K_M", (8192, 32768, 0)),  # SWA 5 of 6 layers
    ("Qwen3-30B-A3B Q4_K_M", (8192, 32768, 0)),  # 128 experts, 48 layers
    ("gpt-oss-20b MXFP4_MOE", (8192, 32768, 0)),  # SWA + sinks, 32 experts
)
CARDS = (8, 12, 16)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print the README table")
    ap.add_argument("--json", metavar="OUT", help="write every case as JSON")
    ap.add_argument("--quick", action="store_true", help="one context per model and card")
    args = ap.parse_args(argv)

    from kvgui.core.memory import speed
    from kvgui.core.memory.memo import ModelMemo
    from kvgui.core.model.catalog import find
    from kvgui.core.model.info import load_model
    from kvgui.runtime.llama_backend import probe_host_cpu
    from kvgui.testing.llama_tools import find_tools
    from kvgui.testing.planner_vs_fit import markdown, run_case
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    tools = find_tools()
    if tools is None:
        print("llama.cpp's tools are not built: python -m kvgui.testing.llama_tools build",
              file=sys.stderr)
        return 2
    host = probe_host_cpu()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, contexts in MODELS:
            path = write_sparse_gguf(find(label), Path(tmp) / (label.replace(" ", "-")
                                                               + ".gguf"))
            model = load_model(path)
            memo = ModelMemo(model)
            for card in CARDS:
                for ctx in contexts[:1] if args.quick else contexts:
                    r = run_case(tools, path, model, label, card, ctx, memo, host=host)
                    results.append(r)
                    print(f"{label:<30} {card:>2} GiB -c {ctx or 'auto':<6} fit={r.fit} "
                          f"kvgui={r.kvgui} llama.cpp says kvgui's fits: "
                          f"{r.kvgui_fits_per_llama} ({r.kvgui_device_mib} of "
                          f"{r.target_mib} MiB) ok={r.ok} [{r.kvgui_seconds:.2f} s / "
                          f"{r.fit_seconds:.2f} s] {r.note}", flush=True)
    print()
    if args.markdown:
        print(markdown(results))
        print()
    print(f"{sum(r.ok for r in results)} of {len(results)} cases never worse than --fit")
    print("speed model:", *speed.ASSUMPTIONS, sep="\n  · ")
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_json() for r in results], indent=1))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
