"""Header read time: kvgui's reader vs gguf.GGUFReader, on a Gemma-3 header (262144 tokens).

Run: python benchmarks/bench_reader.py   (needs the test extra: gguf)
The file is the real Gemma-3-12B Q4_K_M header (metadata, 262144-token vocabulary, tensor
table) with a sparse data section, written from kvgui's catalog.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    import gguf

    from kvgui.core.gguf.reader import read_gguf
    from kvgui.core.model.catalog import find
    from kvgui.core.model.info import ModelInfo
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    with tempfile.TemporaryDirectory() as tmp:
        path = write_sparse_gguf(find("Gemma-3-12B-it", "Q4_K_M"), Path(tmp) / "gemma3.gguf")
        ours = []
        for _ in range(20):
            t0 = time.perf_counter()
            ModelInfo.from_gguf(read_gguf(path))
            ours.append(time.perf_counter() - t0)
        theirs = []
        for _ in range(3):
            t0 = time.perf_counter()
            gguf.GGUFReader(path)
            theirs.append(time.perf_counter() - t0)
        n_vocab = len(read_gguf(path).metadata["tokenizer.ggml.tokens"])
    print(f"Gemma-3-12B Q4_K_M header, {n_vocab} tokens")
    print(f"kvgui read_gguf + ModelInfo: median {statistics.median(ours) * 1e3:7.1f} ms, "
          f"max {max(ours) * 1e3:7.1f} ms  (20 runs)")
    print(f"gguf.GGUFReader:             median {statistics.median(theirs) * 1e3:7.1f} ms  "
          f"(3 runs)")
    print(f"speed-up: {statistics.median(theirs) / statistics.median(ours):.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
