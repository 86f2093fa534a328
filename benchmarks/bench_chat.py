"""Chat through kvgui's worker vs llama-cpp-python called directly: tokens/s and TTFT.

Run: python benchmarks/bench_chat.py [--reps N] [--tokens N]   (needs the test extra: gguf)

Both sides load the same generated model with the same Settings (the worker's own parameter
mapping, so nothing differs but the process boundary) and generate the same tokens (same
seed, same sampling). Direct: ``Llama.create_chat_completion`` in a plain process of its own.
Worker: the same call in the worker, the reply streamed back as JSON-line events and read by
``WorkerClient`` in this process.
Tokens/s = tokens / the whole reply's time (request sent to reply complete, as a caller
waits for it). Goals: worker >= 98 % of direct, at most 50 ms added to the time to first
token. Both are loaded side by side and their replies alternate; the best of the
repetitions is compared (a shared machine's noise only ever slows a run down).

Two models: "tiny" (2 layers, 64 wide: almost no compute, so any per-token overhead shows
at its worst) and "small" (8 layers, 512 wide: milliseconds per token, like a small real
model on a CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
import sys
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


class Direct:
    """llama-cpp-python in this process, loaded exactly as the worker loads it."""

    def __init__(self, path: str, settings: Any) -> None:
        import llama_cpp

        from kvgui.runtime import worker

        self._quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(self._quiet, None)
        fields = worker.explicit_fields(settings)
        with worker._explicit_params(*fields), contextlib.redirect_stderr(io.StringIO()):
            self.llm = llama_cpp.Llama(**worker.llama_kwargs(path, settings))
        self.llm.verbose = False
        original = self.llm.generate
        self.first: list[float] = []
        self.count = 0

        def generate(tokens: Any, *args: Any, **kwargs: Any) -> Iterator[int]:
            for token in original(tokens, *args, **kwargs):
                if not self.first:
                    self.first.append(time.perf_counter())
                self.count += 1
                yield token

        self.llm.generate = generate

    def reply(self, max_tokens: int) -> tuple[float, float, int]:
        """(ttft_s, total_s, tokens) of one reply from a fresh context."""
        self.llm.reset()
        self.first.clear()
        self.count = 0
        t0 = time.perf_counter()
        self.llm.create_chat_completion(
            messages=[{"role": "user", "content": PROMPT}], max_tokens=max_tokens, seed=1,
            temperature=0.8, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.0)
        t1 = time.perf_counter()
        return self.first[0] - t0, t1 - t0, self.count


def worker_reply(client: Any, max_tokens: int) -> tuple[float, float, int]:
    """(ttft_s, total_s, tokens) of one reply through the worker, as the caller sees it."""
    from kvgui.runtime.protocol import Sampling

    client.reset()
    t0 = time.perf_counter()
    client.send("chat", text=PROMPT, system=None,
                sampling=Sampling(max_tokens=max_tokens, seed=1).to_dict())
    t_first = None
    while True:
        msg = client.next_event(timeout=120)
        if msg["type"] == "token" and t_first is None:
            t_first = time.perf_counter()
        elif msg["type"] == "finished":
            break
    t1 = time.perf_counter()
    return (t_first or t1) - t0, t1 - t0, int(msg["tokens"]) + (msg["stop_reason"] == "eos")


def _direct_child(path: str) -> int:
    """``--direct-child PATH``: llama-cpp-python in a fresh process of its own, so neither
    side pays for the other's objects (the garbage collector scans every live object, and
    this benchmark's own process holds many); answers "go N" with one JSON line."""
    from kvgui.core.config.settings import Settings

    direct = Direct(path, Settings.from_dict(json.loads(sys.stdin.readline())))
    print("ready", flush=True)
    for line in sys.stdin:
        print(json.dumps(direct.reply(int(line.split()[1]))), flush=True)
    return 0


def measure(path: str, settings: Any, reps: int, max_tokens: int) -> dict[str, list[Any]]:
    """Both loaded side by side, replies alternated, so machine noise hits both alike."""
    from kvgui.runtime.client import WorkerClient

    child = subprocess.Popen([sys.executable, __file__, "--direct-child", path],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(json.dumps(settings.to_dict()) + "\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "ready"

    def direct_reply() -> tuple[float, float, int]:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(f"go {max_tokens}\n")
        child.stdin.flush()
        ttft, total, count = json.loads(child.stdout.readline())
        return float(ttft), float(total), int(count)

    runs: dict[str, list[Any]] = {"direct": [], "worker": []}
    try:
        with WorkerClient() as client:
            client.load(path, settings)
            direct_reply()  # warm-ups
            worker_reply(client, max_tokens)
            for _ in range(reps):
                runs["direct"].append(direct_reply())
                runs["worker"].append(worker_reply(client, max_tokens))
    finally:
        child.stdin.close()
        child.wait(30)
        child.stdout.close()
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--direct-child", metavar="MODEL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.direct_child:
        return _direct_child(args.direct_child)

    from kvgui.core.config.settings import Settings
    from kvgui.testing.tiny_model import write_tiny_model

    settings = Settings(n_ctx=2048)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in MODELS.items():
            path = str(write_tiny_model(Path(tmp) / f"{name}.gguf", **shape))
            runs = measure(path, settings, args.reps, args.tokens)

            def rate(run: tuple[float, float, int]) -> float:
                return run[2] / run[1]  # the whole reply, as the caller waits for it

            d_rate = max(rate(r) for r in runs["direct"])  # best of: noise only slows down
            w_rate = max(rate(r) for r in runs["worker"])
            d_ttft = min(r[0] for r in runs["direct"])
            w_ttft = min(r[0] for r in runs["worker"])
            tokens = {r[2] for r in runs["direct"] + runs["worker"]}
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
