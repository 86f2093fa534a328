"""The host's memory bandwidth, measured once by a short probe and cached.

Decoding a token reads every weight the CPU holds once, so the CPU's share of a token's time
is those bytes over the RAM's bandwidth (speed.py). No spec sheet says what a given desktop
gets (channels populated, DIMM speed, a laptop's power state), so kvgui measures it: numpy
copies a buffer several times larger than the last-level cache, split over the CPU's threads
(numpy releases the GIL in the copy loop), and keeps the best of a few rounds. A copy reads
and writes each byte; the figure is the bytes moved per second (STREAM's "Copy" convention),
which is what the memory system sustains for a streaming read like a matrix-vector product.

The probe takes a few hundred milliseconds (longer on a busy machine) and twice a buffer of
4 × the last-level cache (128 MiB to 1 GiB) of RAM for that time; its result is cached in the
user cache dir (``$KVGUI_CACHE_DIR`` moves it), keyed by the CPU model, thread count and RAM
size, so a changed machine is measured again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROBE_VERSION = 1
MiB = 1 << 20
MIN_BUFFER = 128 * MiB
MAX_BUFFER = 1024 * MiB
ROUNDS = 3
CACHE_NAME = "host-bandwidth.json"


@dataclass(frozen=True)
class HostBandwidth:
    """Measured host memory bandwidth (bytes/s), how it was measured, and when."""

    bytes_per_s: float
    buffer_bytes: int
    threads: int
    seconds: float  # the probe's own run time
    cached: bool = False

    def to_dict(self) -> dict[str, float | int | bool]:
        return {"bytes_per_s": self.bytes_per_s, "buffer_bytes": self.buffer_bytes,
                "threads": self.threads, "seconds": self.seconds, "cached": self.cached}


def last_level_cache() -> int:
    """The largest CPU cache in bytes (sysconf, else sysfs; 32 MiB when neither says)."""
    best = 0
    for name in ("SC_LEVEL3_CACHE_SIZE", "SC_LEVEL2_CACHE_SIZE"):
        with contextlib.suppress(ValueError, OSError, AttributeError):
            best = max(best, int(os.sysconf(name)))
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    if best <= 0 and base.is_dir():
        for idx in base.glob("index*"):
            try:
                text = (idx / "size").read_text().strip().upper()
            except OSError:
                continue
            mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
            digits = text.rstrip("KM")
            if digits.isdigit():
                best = max(best, int(digits) * mult)
    return best if best > 0 else 32 * MiB


def _machine_key() -> dict[str, object]:
    total = 0
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except Exception:  # psutil missing or failing: the key is still the CPU's
        log.debug("no RAM size for the bandwidth cache key", exc_info=True)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware")):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"version": PROBE_VERSION, "cpu": model, "threads": os.cpu_count() or 1,
            "ram": total}


def measure(buffer_bytes: int | None = None, threads: int | None = None,
            rounds: int = ROUNDS) -> HostBandwidth:
    """Run the probe now: ``rounds`` timed copies of ``buffer_bytes`` (default: 4 × the
    last-level cache, 256 MiB to 1 GiB), each split over ``threads`` threads."""
    import numpy as np

    size = buffer_bytes or min(MAX_BUFFER, max(MIN_BUFFER, 4 * last_level_cache()))
    size -= size % 4096
    n = threads or max(1, min(os.cpu_count() or 1, 16))
    t0 = time.perf_counter()
    src = np.ones(size, dtype=np.uint8)  # touched: no page faults inside the timed copies
    dst = np.zeros(size, dtype=np.uint8)
    bounds = [(size * i // n) // 64 * 64 for i in range(n)] + [size]
    barrier = threading.Barrier(n + 1)
    best = float("inf")

    def worker(lo: int, hi: int) -> None:
        for _ in range(rounds):
            barrier.wait()
            np.copyto(dst[lo:hi], src[lo:hi])
            barrier.wait()

    pool = [threading.Thread(target=worker, args=(bounds[i], bounds[i + 1]), daemon=True)
            for i in range(n)]
    for t in pool:
        t.start()
    for _ in range(rounds):
        barrier.wait()
        start = time.perf_counter()
        barrier.wait()
        best = min(best, time.perf_counter() - start)
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - t0
    return HostBandwidth(2 * size / best, size, n, elapsed)


def cache_path() -> Path:
    root = os.environ.get("KVGUI_CACHE_DIR")
    if root:
        return Path(root) / CACHE_NAME
    import platformdirs

    return Path(platformdirs.user_cache_dir("kvgui", appauthor=False)) / CACHE_NAME


def host_bandwidth(*, refresh: bool = False) -> HostBandwidth | None:
    """This machine's bandwidth: the cached figure for this machine, else measured now (and
    cached); None if the probe cannot run (no numpy, no memory for the buffers)."""
    path = cache_path()
    key = _machine_key()
    if not refresh:
        try:
            data = json.loads(path.read_text())
            if data.get("key") == key and float(data["bytes_per_s"]) > 0:
                return HostBandwidth(float(data["bytes_per_s"]), int(data["buffer_bytes"]),
                                     int(data["threads"]), float(data["seconds"]), cached=True)
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass  # absent or unreadable: measure again
    try:
        found = measure()
    except (ImportError, MemoryError, OSError, RuntimeError) as exc:
        log.info("host memory bandwidth probe failed: %s", exc)
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, **found.to_dict()}))
        tmp.replace(path)
    except OSError:
        log.info("cannot cache the host bandwidth in %s", path, exc_info=True)
    return found
