"""Estimate latency: all 81 K/V cache type pairs at one context, for a real model header.

Run: python benchmarks/bench_estimate.py
Goal: all 81 pairs in at most 1 ms (the window recomputes every cache type on each slider step).
"""

from __future__ import annotations

import statistics
import sys
import time


def main() -> int:
    from kvgui.core.config.settings import FlashAttn, Settings
    from kvgui.core.devices.device_budget import DeviceBudget
    from kvgui.core.gguf.ggml_types import CACHE_TYPE_NAMES
    from kvgui.core.memory.estimate import estimate
    from kvgui.core.memory.memo import ModelMemo
    from kvgui.core.model.catalog import find
    from kvgui.core.model.info import ModelInfo
    from kvgui.core.sizes import GiB

    gpu = [DeviceBudget("RTX 4060", 8 * GiB)]
    for name, quant in (("Llama-3.1-8B-Instruct", "Q4_K_M"), ("Gemma-3-27B-it", "Q4_K_M"),
                        ("Qwen3-30B-A3B", "Q4_K_M")):
        metadata, tensors, file_bytes = find(name, quant).header()
        model = ModelInfo.from_header(metadata, tensors, file_bytes=file_bytes)
        base = Settings(n_ctx=32768, flash_attn=FlashAttn.ON)
        settings = [base.replace(type_k=k, type_v=v)
                    for k in CACHE_TYPE_NAMES for v in CACHE_TYPE_NAMES]
        memo = ModelMemo(model)  # (the window keeps one per model: graphs recorded once)
        runs = []
        for i in range(300):
            # a new context each round, as a slider step brings (nothing cached per context)
            step = [s.replace(n_ctx=4096 + 256 * i) for s in settings]
            t0 = time.perf_counter()
            for s in step:
                estimate(model, s, gpu, memo)
            runs.append(time.perf_counter() - t0)
        runs.sort()
        p95 = runs[int(len(runs) * 0.95)]
        print(f"{name:<24} {len(model.layers)} layers: 81 pairs median "
              f"{statistics.median(runs) * 1e3:.3f} ms, p95 {p95 * 1e3:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
