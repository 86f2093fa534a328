"""Remote headers: HTTP requests and bytes per header, and remote vs local read time.

Run: python benchmarks/bench_remote_header.py   (needs the test extra: gguf)
A Hub on 127.0.0.1 (kvgui.testing.fake_hub, real sockets, the real huggingface_hub client)
serves header-faithful sparse GGUFs of catalog models; each remote read starts with an empty
header cache. "local" is read_gguf + ModelInfo on the same file on disk; "cached" is the
reopen from kvgui's header cache (no request).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

CASES = [  # (label in the catalog, split parts)
    ("LFM2-1.2B Q8_0", 1),
    ("Llama-3.1-8B-Instruct Q4_K_M", 1),
    ("Gemma-3-12B-it Q4_K_M", 1),
    ("Qwen3-8B Q6_K", 3),
]
RUNS = 7


def main() -> int:
    from kvgui.core.model.catalog import find
    from kvgui.core.model.info import load_model
    from kvgui.sources.hub import HubConfig, list_repo
    from kvgui.sources.modelref import HubRef
    from kvgui.sources.remote_header import read_remote_header
    from kvgui.testing.fake_hub import FakeHub
    from kvgui.testing.hub_repos import stand_in_sha
    from kvgui.testing.sparse_gguf import write_sparse_gguf, write_sparse_split

    with tempfile.TemporaryDirectory() as tmp, FakeHub() as hub:
        root = Path(tmp)
        files: dict[str, list[Path]] = {}
        for label, parts in CASES:
            stem = label.replace(" ", "-")
            entry = find(label)
            if parts == 1:
                paths = [write_sparse_gguf(entry, root / f"{stem}.gguf")]
            else:
                paths = write_sparse_split(entry, root, stem, parts)
            files[label] = paths
            for p in paths:
                hub.add_file(f"bench/{stem}-GGUF", p.name, p, sha256=stand_in_sha(p.name))
        print(f"{'model':<30}{'header':>10}{'requests':>10}{'bytes read':>12}"
              f"{'remote ms':>11}{'cached ms':>11}{'local ms':>10}")
        for label, _ in CASES:
            stem = label.replace(" ", "-")
            repo = f"bench/{stem}-GGUF"
            remote, cached, local = [], [], []
            requests = nbytes = header = 0
            for i in range(RUNS):
                cfg = HubConfig(endpoint=hub.endpoint, header_cache=root / f"hc-{stem}-{i}",
                                hub_cache=root / "hf")
                listing = list_repo(repo, config=cfg)
                group = listing.group(HubRef(repo, label.split()[-1]))
                t0 = time.perf_counter()
                m = read_remote_header(listing, group, config=cfg)
                m.describe()
                remote.append(time.perf_counter() - t0)
                requests, nbytes = m.stats.requests, m.stats.bytes
                header = sum(m.gguf.header_bytes)
                t0 = time.perf_counter()
                read_remote_header(listing, group, config=cfg).describe()
                cached.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                load_model(files[label][0])
                local.append(time.perf_counter() - t0)
            print(f"{label:<30}{header / 2**20:>8.2f}MB{requests:>10}{nbytes / 2**20:>10.2f}MB"
                  f"{statistics.median(remote) * 1e3:>11.1f}"
                  f"{statistics.median(cached) * 1e3:>11.1f}"
                  f"{statistics.median(local) * 1e3:>10.1f}")
    print(f"(median of {RUNS}; requests are HTTP range requests, each answered by a 302 to the "
          "CDN path the first time: later ranges go to the CDN URL directly)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    sys.exit(main())
