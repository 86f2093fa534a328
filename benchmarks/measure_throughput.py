"""Throughput of ``kvgui measure`` against llama.cpp's ``llama-perplexity --kl-divergence``.

Run: python benchmarks/measure_throughput.py [MODEL] [--window 512] [--chunks 4] [-t 2]
(default model: the realmodel extra's Gemma-3-270M; needs the llama.cpp tools:
``python -m kvgui.testing.llama_tools build``).

Both evaluate the same text (the bundled sample) in the same windows with the same settings
(flash attention on, the same threads, ``-nr``, one window per decode) and score the same
positions against the same f16 reference; the figure is tokens evaluated per second per type,
from the start of the evaluation to its end (model loading excluded on both sides; kvgui's
speed repeats are off so only the evaluation is timed). The ratio kvgui / llama-perplexity
is printed per type; the issue asks for at least 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--types", default="q8_0,q4_0")
    args = ap.parse_args(argv)

    from kvgui.core.config.settings import Settings
    from kvgui.core.quality.results import parse_pairs
    from kvgui.runtime.measure import MeasureRequest, run_measure, sample_text
    from kvgui.testing.llama_perplexity import kl_divergence
    from kvgui.testing.llama_tools import find_tools

    tools = find_tools()
    if tools is None:
        print("llama.cpp tools not built: python -m kvgui.testing.llama_tools build",
              file=sys.stderr)
        return 2
    if args.model:
        model = Path(args.model)
    else:
        from kvgui.testing.real_model import real_model_path

        model = real_model_path()
    pairs = [("f16", "f16"), *[p for p in parse_pairs(args.types) if p != ("f16", "f16")]]
    settings = Settings(n_ctx=args.window, n_threads=args.threads, repack=False,
                        n_batch=args.window)
    text = sample_text()
    run = run_measure(MeasureRequest(model=str(model), settings=settings, pairs=tuple(pairs),
                                     text=text, window=args.window, max_windows=args.chunks,
                                     speed_repeats=0, kl_full_max_bytes=2 << 30))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample.txt"
        path.write_text(text, encoding="utf-8")
        ref = kl_divergence(tools, model, path, settings, args.window, args.chunks, pairs)

    print(f"{model.name}: {args.chunks} windows of {args.window} tokens, {args.threads} "
          f"threads, flash attention on, -nr; KL {run.evaluation.kl_method}")
    print(f"{'type':<10}{'kvgui t/s':>12}{'llama-perplexity t/s':>23}{'ratio':>8}"
          f"{'PPL ratio (kvgui / llama.cpp)':>32}{'same top (kvgui / llama.cpp)':>31}")
    ref_ppl = run.reference.ppl if run.reference else float("nan")
    worst = float("inf")
    for r in run.results:
        theirs = ref[r.pair]
        ratio = r.eval_tokens_per_s / theirs.tokens_per_s
        worst = min(worst, ratio)
        pr = "" if theirs.ppl_ratio is None else f"{r.ppl / ref_ppl:.4f} / {theirs.ppl_ratio:.4f}"
        top = "" if theirs.same_top is None else \
            f"{r.top1_agreement:.2%} / {theirs.same_top:.2%}"
        print(f"{r.label:<10}{r.eval_tokens_per_s:>12.1f}{theirs.tokens_per_s:>23.1f}"
              f"{ratio:>8.2f}{pr:>32}{top:>31}")
    print(f"lowest ratio: {worst:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
