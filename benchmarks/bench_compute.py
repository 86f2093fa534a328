"""Compute-buffer latency: the first estimate of a model (graph built and recorded) and a
slider step (a new context, the window's 9 cache types), CPU only and with one GPU.

Run: python benchmarks/bench_compute.py [--rounds 200]
Goals: first estimate <= ~150 ms for a 48-layer model; a slider step well under a frame.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from kvgui.core.config.settings import FlashAttn, Settings
    from kvgui.core.devices.device_budget import DeviceBudget
    from kvgui.core.memory.estimate import estimate
    from kvgui.core.memory.fit import COMMON_CACHE_PAIRS
    from kvgui.core.memory.memo import ModelMemo
    from kvgui.core.model.catalog import find
    from kvgui.core.model.info import ModelInfo
    from kvgui.core.sizes import GiB

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args(argv)
    labels = ["Llama-3.1-8B-Instruct Q4_K_M", "Qwen3-30B-A3B Q4_K_M", "Gemma-3-27B-it Q4_K_M",
              "gpt-oss-20b MXFP4_MOE", "DeepSeek-V2-Lite-Chat Q4_K_M", "LFM2-1.2B Q8_0"]
    pairs = [("q8_0", "f16"), *COMMON_CACHE_PAIRS]  # the current choice + the common ones
    for label in labels:
        header = find(label).header()
        for devices, where in (((), "CPU"), ((DeviceBudget("GPU", 24 * GiB),), "GPU")):
            def fresh(header: tuple = header) -> ModelInfo:  # type: ignore[type-arg]
                metadata, tensors, file_bytes = header
                return ModelInfo.from_header(metadata, tensors, file_bytes=file_bytes)

            base = Settings(n_ctx=8192, flash_attn=FlashAttn.ON)
            firsts = []
            for _ in range(3):
                model = fresh()
                memo = ModelMemo(model)  # (as the window keeps one per model)
                t0 = time.perf_counter()
                estimate(model, base, devices, memo)
                firsts.append(time.perf_counter() - t0)
            steps = []
            for i in range(args.rounds):
                step = [base.replace(n_ctx=4096 + 256 * i, type_k=k, type_v=v) for k, v in pairs]
                t0 = time.perf_counter()
                for s in step:
                    estimate(model, s, devices, memo)
                steps.append(time.perf_counter() - t0)
            steps.sort()
            print(f"{label:<30} {where}: first estimate {min(firsts) * 1e3:7.1f} ms; "
                  f"slider step ({len(pairs)} types) median {statistics.median(steps) * 1e3:.3f}"
                  f" ms, p95 {steps[int(len(steps) * 0.95)] * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
