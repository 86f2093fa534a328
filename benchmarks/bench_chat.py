"""Chat through kvgui's worker vs llama-cpp-python called directly: tokens/s and TTFT.

Run: python benchmarks/bench_chat.py [--reps N] [--tokens N]   (needs the test extra: gguf)

Both sides load the same generated model with the same Settings (the worker's own parameter
mapping, so nothing differs but the process boundary) and generate the same tokens (same
seed, same sampling). Direct: ``Llama.create_chat_completion`` in this process. Worker: the
same call in the worker, the reply streamed back as JSON-line events and read by
``WorkerClient``. Generation rate = tokens / (reply time - time to first token); the goal is
worker >= 98 % of direct, and at most 50 ms added to the time to first token.

Two models: "tiny" (2 layers, 64 wide: almost no compute, so any per-token overhead shows
at its worst) and "small" (8 layers, 512 wide: milliseconds per token, like a small real
model on a CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODELS: dict[str, dict[str, Any]] = {
    "tiny": {},
    "small": {"n_layer": 8, "n_embd": 512, "n_head": 8, "n_head_kv": 4, "n_ff": 1536,
              "n_vocab": 8000, "dtype": "f16"},
}
PROMPT = "Write a long story about a llama who learns to count memory."


def _direct(path: str, settings: Any, reps: int, max_tokens: int) -> list[tuple[float, float, int]]:
    """(ttft_s, total_s, tokens) per reply, llama-cpp-python in this process."""
    import llama_cpp

    from kvgui.runtime import worker

    quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)
    llama_cpp.llama_log_set(quiet, None)
    with worker._explicit_params(worker.model_fields(settings), worker.context_fields(settings)), \
            contextlib.redirect_stderr(io.StringIO()):
        llm = llama_cpp.Llama(**worker.llama_kwargs(path, settings))
    llm.verbose = False
    original = llm.generate
    first: list[float] = []
    count = [0]

    def generate(tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
        for token in original(tokens, *args, **kwargs):
            if not first:
                first.append(time.perf_counter())
            count[0] += 1
            yield token

    llm.generate = generate
    out = []
    for _ in range(reps + 1):  # the first is a warm-up
        llm.reset()
        first.clear()
        count[0] = 0
        t0 = time.perf_counter()
        llm.create_chat_completion(messages=[{"role": "user", "content": PROMPT}],
                                   max_tokens=max_tokens, seed=1, temperature=0.8, top_p=0.95,
                                   top_k=40, min_p=0.05, repeat_penalty=1.0)
        t1 = time.perf_counter()
        out.append((first[0] - t0, t1 - t0, count[0]))
    llm.close()
    return out[1:]


def _through_worker(path: str, settings: Any, reps: int,
                    max_tokens: int) -> list[tuple[float, float, int, dict[str, Any]]]:
    """(ttft_s, total_s, tokens, finished event) per reply, as the caller sees them."""
    from kvgui.runtime.client import WorkerClient
    from kvgui.runtime.protocol import Sampling

    sampling = Sampling(max_tokens=max_tokens, seed=1).to_dict()
    out = []
    with WorkerClient() as client:
        client.load(path, settings)
        for _ in range(reps + 1):
            client.reset()
            t0 = time.perf_counter()
            client.send("chat", text=PROMPT, system=None, sampling=sampling)
            t_first = None
            while True:
                msg = client.next_event(timeout=120)
                if msg["type"] == "token" and t_first is None:
                    t_first = time.perf_counter()
                elif msg["type"] == "finished":
                    break
            t1 = time.perf_counter()
            out.append(((t_first or t1) - t0, t1 - t0, int(msg["tokens"]) + (
                1 if msg["stop_reason"] == "eos" else 0), msg))
    return out[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    args = parser.parse_args()

    from kvgui.core.settings import Settings
    from kvgui.testing.tiny_model import write_tiny_model

    settings = Settings(n_ctx=2048)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in MODELS.items():
            path = str(write_tiny_model(Path(tmp) / f"{name}.gguf", **shape))
            direct = _direct(path, settings, args.reps, args.tokens)
            worker = _through_worker(path, settings, args.reps, args.tokens)
            d_rate = statistics.median(n / (tot - ttft) for ttft, tot, n in direct)
            w_rate = statistics.median(n / (tot - ttft) for ttft, tot, n, _ in worker)
            d_ttft = statistics.median(ttft for ttft, _, _ in direct)
            w_ttft = statistics.median(ttft for ttft, _, _, _ in worker)
            tokens = {n for _, _, n in direct} | {n for _, _, n, _ in worker}
            rows.append((name, d_rate, w_rate, d_ttft, w_ttft, tokens))

    print(f"{'model':6} {'direct t/s':>11} {'worker t/s':>11} {'ratio':>7} "
          f"{'direct TTFT':>12} {'worker TTFT':>12} {'added':>9}  tokens")
    ok = True
    for name, d_rate, w_rate, d_ttft, w_ttft, tokens in rows:
        ratio = w_rate / d_rate
        added = (w_ttft - d_ttft) * 1000
        ok &= ratio >= 0.98 and added <= 50
        print(f"{name:6} {d_rate:11.1f} {w_rate:11.1f} {100 * ratio:6.1f}% "
              f"{1000 * d_ttft:10.1f}ms {1000 * w_ttft:10.1f}ms {added:7.1f}ms  "
              f"{','.join(map(str, sorted(tokens)))}")
    print("goals (ratio >= 98%, added TTFT <= 50 ms):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
