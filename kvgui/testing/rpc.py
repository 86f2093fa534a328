"""Several GPUs on a machine that has none: ``ggml-rpc-server`` processes on 127.0.0.1, each a
device to llama.cpp's scheduler, and ``llama-fit-params`` asked what it would put where.

Each server exposes its CPU device; llama.cpp treats an RPC device like a GPU (its own buffer
type, layers offloaded to it with ``-ngl``/``-ts``, ``--fit`` filling it). Its memory size is
what the server's CPU device reports (physical RAM), so each server runs with a preload library
that makes ``sysconf(_SC_PHYS_PAGES)`` report the chosen size: an 8, 12 or 16 GiB "card"
(:func:`kvgui.testing.llama_tools.memory_shim`). ``llama-fit-params`` never allocates
(``no_alloc``), so a 16 GiB device costs no RAM.

    with RpcDevices(tools, [12 * GiB, 8 * GiB]) as devs:
        r = fit_params(tools, model, devs, ctx=32768, ngl=20, ts=(3, 1), ctk="q8_0", ctv="q8_0")
        r.device("RPC0").context_mib, r.compute_mib["RPC0[127.0.0.1:…]"], r.host.model_mib

The servers are always stopped: a context manager, each in its own process group, and on
Linux each dies with its parent (PR_SET_PDEATHSIG) even when the test process is killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from kvgui.testing.llama_tools import PHYS_MEM_ENV, LlamaTools, ToolsError, memory_shim

log = logging.getLogger(__name__)

GiB = 1 << 30
MiB = 1 << 20


class RpcError(RuntimeError):
    """An RPC server did not start, or llama-fit-params failed (with the log's last lines)."""


@dataclass(frozen=True)
class RpcServer:
    host: str
    port: int
    memory_bytes: int | None
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that makes the child get SIGKILL when its parent dies (Linux), else None."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)

    return preexec


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


class RpcDevices:
    """N ``ggml-rpc-server`` processes, one device each, of the given memory sizes (bytes; None
    = the machine's RAM). A context manager: entering starts them and waits until each accepts
    connections, leaving stops them all."""

    def __init__(self, tools: LlamaTools, memory_bytes: Sequence[int | None], *,
                 host: str = "127.0.0.1", threads: int = 1, start_timeout: float = 30.0) -> None:
        self.tools = tools
        self.sizes = list(memory_bytes)
        self.host = host
        self.threads = threads
        self.start_timeout = start_timeout
        self.servers: list[RpcServer] = []
        self._logdir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def endpoints(self) -> list[str]:
        return [s.endpoint for s in self.servers]

    @property
    def rpc_arg(self) -> str:
        """The value of llama.cpp's ``--rpc``."""
        return ",".join(self.endpoints)

    def first(self, n: int) -> RpcDevices:
        """A view of the first ``n`` running servers, for :func:`fit_params` (the servers stay
        this object's: the view is never entered or closed)."""
        view = RpcDevices(self.tools, self.sizes[:n], host=self.host, threads=self.threads)
        view.servers = self.servers[:n]
        return view

    def __enter__(self) -> RpcDevices:
        self._logdir = tempfile.TemporaryDirectory(prefix="kvgui-rpc-")
        try:
            for i, size in enumerate(self.sizes):
                self.servers.append(self._start(i, size))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for s in self.servers:
            _stop(s.process)
        self.servers.clear()
        if self._logdir is not None:
            self._logdir.cleanup()
            self._logdir = None

    def _start(self, index: int, size: int | None) -> RpcServer:
        env = dict(os.environ)
        if size is not None:
            env["LD_PRELOAD"] = " ".join(
                p for p in (str(memory_shim(self.tools)), env.get("LD_PRELOAD", "")) if p)
            env[PHYS_MEM_ENV] = str(size)
        assert self._logdir is not None
        last = ""
        for attempt in range(5):  # a free port can be taken between probe and bind: retry
            port = _free_port(self.host)
            log_path = Path(self._logdir.name) / f"rpc{index}-{attempt}.log"
            with open(log_path, "wb") as out:
                proc = subprocess.Popen(
                    [str(self.tools.rpc_server), "-H", self.host, "-p", str(port),
                     "-t", str(self.threads)],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                    start_new_session=True, preexec_fn=_die_with_parent())
            server = RpcServer(self.host, port, size, proc, log_path)
            try:
                if self._wait_ready(server):
                    return server
            except BaseException:
                _stop(proc)
                raise
            _stop(proc)
            lines = log_path.read_text(errors="replace").strip().splitlines()
            last = lines[-1] if lines else f"exited with {proc.returncode}"
        raise RpcError(f"ggml-rpc-server did not start on {self.host}: {last}")

    def _wait_ready(self, server: RpcServer) -> bool:
        """True once the port accepts a connection; False if the process exited first."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection(
                    (server.host, server.port), timeout=1.0):
                # the port answered -- but it may be another test worker's server that took
                # the port between the probe and our bind (ours then exits at once): only a
                # process still running after that moment is ours
                time.sleep(0.2)
                return server.process.poll() is None
            time.sleep(0.05)
        tail = server.log_path.read_text(errors="replace")[-300:]
        raise RpcError(f"ggml-rpc-server on {server.endpoint} not ready after "
                       f"{self.start_timeout:.0f} s: {tail}")


# --- llama-fit-params ------------------------------------------------------------------------
#
# llama-fit-params loads the model with no_alloc, so the "model/KV buffer size" log lines read
# 0.00 MiB; the figures are the memory breakdown table (whole MiB, rounded down), the
# sched_reserve compute lines (two decimals) and the KV cache's "size = …" line (two decimals).
# With -fit on it loads the model once per trial: everything is read from the last trial.


@dataclass(frozen=True)
class DeviceBreakdown:
    """One row of ``common_memory_breakdown_print`` (MiB, rounded down as llama.cpp prints)."""

    name: str  # "RPC0", "Host", or a further buffer type such as "AMX" or "CPU_REPACK"
    description: str  # the RPC endpoint, "" for the host rows
    total_mib: int | None  # devices only
    free_mib: int | None
    self_mib: int
    model_mib: int
    context_mib: int
    compute_mib: int
    unaccounted_mib: int | None


@dataclass(frozen=True)
class KvCacheSize:
    """``llama_kv_cache: size = … MiB (N cells, L layers, …), K (type): … MiB, V (type): … MiB``
    (an iSWA model prints one per cache)."""

    size_mib: float
    cells: int
    layers: int
    type_k: str
    k_mib: float
    type_v: str
    v_mib: float


#: fit.cpp's pattern for "this layer's experts go to host memory" (LAYER_FRACTION_MOE)
_MOE_PATTERN = re.compile(r"blk\\\.(\d+)\\\.ffn_\(up\|down\|gate_up\|gate\)_\(ch\|\)exps")


@dataclass(frozen=True)
class FitChoice:
    """What ``-fit on`` chose (its printed command line)."""

    n_ctx: int
    n_gpu_layers: int
    tensor_split: tuple[int, ...]
    overrides: tuple[tuple[str, str], ...]  # (-ot pattern, buffer type)

    @property
    def cpu_moe_layers(self) -> tuple[int, ...]:
        """Layers whose MoE experts it put in host memory (what --n-cpu-moe K does for 0..K-1)."""
        layers = []
        for pattern, buft in self.overrides:
            m = _MOE_PATTERN.fullmatch(pattern)
            if m and buft.startswith("CPU"):
                layers.append(int(m.group(1)))
        return tuple(sorted(layers))

    @property
    def n_cpu_moe(self) -> int | None:
        """K when the CPU expert layers are exactly 0..K-1 (as --n-cpu-moe K), else None."""
        layers = self.cpu_moe_layers
        return len(layers) if layers == tuple(range(len(layers))) else None


@dataclass(frozen=True)
class FitParamsResult:
    args: tuple[str, ...]
    log: str
    breakdown: tuple[DeviceBreakdown, ...]
    compute_mib: dict[str, float]  # sched_reserve: buffer type ("RPC0[127.0.0.1:…]", "CPU") -> MiB
    kv_caches: tuple[KvCacheSize, ...]
    kv_layer_devices: dict[int, str]  # layer -> device of its KV cache ("CPU", "RPC0", …)
    offloaded_layers: tuple[int, int] | None  # "offloaded 20/33 layers to GPU"
    output_mib: dict[str, float]  # the logits buffer: buffer type -> MiB
    fitp: dict[str, tuple[int, int, int]]  # -fitp on's rows: name -> (model, ctx, compute) MiB
    choice: FitChoice | None = None

    def device(self, name: str) -> DeviceBreakdown:
        for row in self.breakdown:
            if row.name == name:
                return row
        raise KeyError(f"{name} not in the breakdown ({', '.join(r.name for r in self.breakdown)})")

    @property
    def devices(self) -> tuple[DeviceBreakdown, ...]:
        """The model's devices (rows with a total), in llama.cpp's order."""
        return tuple(r for r in self.breakdown if r.total_mib is not None)

    @property
    def host(self) -> DeviceBreakdown:
        return self.device("Host")

    @property
    def host_side(self) -> tuple[DeviceBreakdown, ...]:
        """Host and the further host-memory buffer types (AMX, CPU_REPACK…): RAM, not VRAM."""
        return tuple(r for r in self.breakdown if r.total_mib is None)

    @property
    def n_splits(self) -> int | None:
        """The scheduler's split count of the last graph it reserved (None if not logged)."""
        found = _SPLITS.findall(self.log)
        return int(found[-1]) if found else None

    def compute_of(self, name: str) -> float:
        """The two-decimal compute buffer of a device ("RPC1") or of "Host", in MiB."""
        if name == "Host":
            return self.compute_mib.get("CPU", 0.0)
        dev = self.device(name)
        buffers = [b for b in self.compute_mib if b.endswith(f"[{dev.description}]")]
        if len(buffers) > 1:
            raise KeyError(f"{name}: several compute buffers {buffers}")
        return self.compute_mib[buffers[0]] if buffers else 0.0


_BREAKDOWN_ROW = re.compile(
    r"memory_breakdown_print: \|\s+- (?P<label>.+?)\s+\|\s*(?P<rest>.*)\|\s*$")
_COMPUTE = re.compile(r"sched_reserve: +(?P<buf>\S+) compute buffer size = +(?P<mib>[\d.]+) MiB")
_OUTPUT = re.compile(r"llama_context: +(?P<buf>\S+) +output buffer size = +(?P<mib>[\d.]+) MiB")
_KV_SIZE = re.compile(
    r"llama_kv_cache: size = +(?P<size>[\d.]+) MiB \( *(?P<cells>\d+) cells, +(?P<layers>\d+) "
    r"layers,.*?\), K \((?P<tk>\w+)\): +(?P<k>[\d.]+) MiB, V \((?P<tv>\w+)\): +(?P<v>[\d.]+) MiB")
_KV_LAYER = re.compile(r"llama_kv_cache: layer +(?P<il>\d+): dev = (?P<dev>\S+)")
_OFFLOADED = re.compile(r"load_tensors: offloaded (\d+)/(\d+) layers to GPU")
_TRIAL_START = "llama_model_loader: loaded meta data"
_SPLITS = re.compile(r"graph(?: \([^)]*\))?: nodes = [\d /]+, splits = (\d+)")


def last_trial(log_text: str) -> str:
    """The log of the last model load (-fit on loads once per trial)."""
    at = log_text.rfind(_TRIAL_START)
    return log_text if at < 0 else log_text[log_text.rfind("\n", 0, at) + 1:]


def parse_breakdown(log_text: str) -> tuple[DeviceBreakdown, ...]:
    """The last ``memory breakdown [MiB]`` table in a llama.cpp log."""
    tables: list[list[DeviceBreakdown]] = []
    for line in log_text.splitlines():
        if "memory_breakdown_print:" in line and "memory breakdown [MiB]" in line:
            tables.append([])
            continue
        m = _BREAKDOWN_ROW.search(line)
        if not m or not tables:
            continue
        label, rest = m.group("label"), m.group("rest")
        name, desc = label, ""
        dm = re.fullmatch(r"(\S+) \((.*)\)", label)
        if dm:
            name, desc = dm.group(1), dm.group(2)
        nums = [int(x) for x in re.findall(r"-?\d+", rest)]
        if "(" in rest:  # device: total = free + (self = model + context + compute) + unaccounted
            total, free, self_, model, ctx, comp, unacc = nums
            tables[-1].append(DeviceBreakdown(name, desc, total, free, self_, model, ctx, comp,
                                              unacc))
        else:  # host / other buffer type: self = model + context + compute
            self_, model, ctx, comp = nums
            tables[-1].append(DeviceBreakdown(name, desc, None, None, self_, model, ctx, comp,
                                              None))
    return tuple(tables[-1]) if tables else ()


def parse_fitp(stdout: str) -> dict[str, tuple[int, int, int]]:
    """``-fitp on``'s stdout: one ``NAME model context compute`` line (MiB) per device + Host."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 4 and all(p.isdigit() for p in parts[1:]):
            rows[parts[0]] = (int(parts[1]), int(parts[2]), int(parts[3]))
    return rows


def parse_fit_choice(stdout: str) -> FitChoice:
    """``-fit on``'s stdout: ``-c N -ngl L [-ts a,b…] [-ot "pat=buft,…"]``."""
    line = next((ln for ln in stdout.splitlines() if ln.startswith("-c ")), None)
    if line is None:
        raise RpcError(f"no fitted command line in llama-fit-params' output: {stdout[-300:]!r}")
    m = re.match(r'-c (\d+) -ngl (-?\d+)(?: -ts ([\d,]+))?(?: -ot "(.*)")?\s*$', line)
    if not m:
        raise RpcError(f"unexpected fitted command line: {line!r}")
    overrides: list[tuple[str, str]] = []
    if m.group(4):
        for item in m.group(4).split(","):
            pattern, _, buft = item.rpartition("=")
            overrides.append((pattern, buft))
    ts = tuple(int(x) for x in m.group(3).split(",")) if m.group(3) else ()
    return FitChoice(int(m.group(1)), int(m.group(2)), ts, tuple(overrides))


def parse_result(args: Sequence[str], stdout: str, stderr: str, *, fit: bool
                 ) -> FitParamsResult:
    """Everything :func:`fit_params` reads from llama-fit-params' stdout and (-v) log."""
    trial = last_trial(stderr)
    offloaded = _OFFLOADED.search(trial)
    return FitParamsResult(
        args=tuple(args), log=stderr, breakdown=parse_breakdown(trial),
        compute_mib={m["buf"]: float(m["mib"]) for m in _COMPUTE.finditer(trial)},
        kv_caches=tuple(KvCacheSize(float(m["size"]), int(m["cells"]), int(m["layers"]),
                                    m["tk"], float(m["k"]), m["tv"], float(m["v"]))
                        for m in _KV_SIZE.finditer(trial)),
        kv_layer_devices={int(m["il"]): m["dev"] for m in _KV_LAYER.finditer(trial)},
        offloaded_layers=(int(offloaded[1]), int(offloaded[2])) if offloaded else None,
        output_mib={m["buf"]: float(m["mib"]) for m in _OUTPUT.finditer(trial)},
        fitp={} if fit else parse_fitp(stdout),
        choice=parse_fit_choice(stdout) if fit else None)


def fit_params(tools: LlamaTools, model: str | Path, devices: RpcDevices | None, *,
               ctx: int | None, ngl: int | str | None = None, ts: Sequence[float] = (),
               n_cpu_moe: int | None = None, overrides: Sequence[tuple[str, str]] = (),
               fa: str | None = None, ctk: str | None = None, ctv: str | None = None,
               fit: bool = False, fit_target_mib: Sequence[int] = (),
               host_memory_bytes: int | None = None, extra: Sequence[str] = (),
               timeout: float = 300.0) -> FitParamsResult:
    """Run ``llama-fit-params`` on the RPC devices. ``fit=False``: ``-fit off -fitp on``, the
    memory of exactly these settings; ``fit=True``: ``-fit on``, what it chose (``.choice``;
    ``ctx=0`` starts from the training context and lets it shrink that too, ``None`` leaves
    llama.cpp's default of 4096 which it keeps) and the breakdown of its last trial, which need
    not be the choice: run again with the choice for its memory. ``host_memory_bytes`` fakes the
    host's RAM as well."""
    args = ["-m", str(model)]
    if ctx is not None:
        args += ["-c", str(ctx)]
    if devices is not None and devices.servers:
        args += ["--rpc", devices.rpc_arg]
    if ngl is not None:
        args += ["-ngl", str(ngl)]
    if ts:
        args += ["-ts", ",".join(f"{t:g}" for t in ts)]
    if n_cpu_moe is not None:
        args += ["--n-cpu-moe", str(n_cpu_moe)]
    if overrides:
        args += ["-ot", ",".join(f"{p}={b}" for p, b in overrides)]
    if fa is not None:
        args += ["-fa", fa]
    if ctk is not None:
        args += ["-ctk", ctk]
    if ctv is not None:
        args += ["-ctv", ctv]
    if fit_target_mib:
        args += ["-fitt", ",".join(str(t) for t in fit_target_mib)]
    args += ["-fit", "on", "-fitp", "off"] if fit else ["-fit", "off", "-fitp", "on"]
    args += [*extra, "-v"]
    env = dict(os.environ)
    if host_memory_bytes is not None:
        env["LD_PRELOAD"] = str(memory_shim(tools))
        env[PHYS_MEM_ENV] = str(host_memory_bytes)
    # once in a few hundred runs on a loaded machine it exits 0 before its memory lines: once
    # more, then an error naming that
    for _ in range(2):
        try:
            proc = subprocess.run([str(tools.fit_params), *args], capture_output=True,
                                  text=True, errors="replace", timeout=timeout, env=env,
                                  check=False, start_new_session=True,
                                  preexec_fn=_die_with_parent())
        except subprocess.TimeoutExpired as e:
            raise RpcError(f"llama-fit-params timed out after {timeout:.0f} s") from e
        tail = [ln for ln in proc.stderr.splitlines() if ln.strip()][-3:]
        if proc.returncode != 0:
            raise RpcError(f"llama-fit-params exited with {proc.returncode}: "
                           + " | ".join(tail))
        result = parse_result(args, proc.stdout, proc.stderr, fit=fit)
        if fit or (result.breakdown and result.compute_mib):
            return result
        log.warning("llama-fit-params printed no memory breakdown; running it again")
    raise RpcError("llama-fit-params exited 0 without its memory breakdown: " + " | ".join(tail))


__all__ = [
    "DeviceBreakdown",
    "FitChoice",
    "FitParamsResult",
    "GiB",
    "KvCacheSize",
    "MiB",
    "RpcDevices",
    "RpcError",
    "RpcServer",
    "ToolsError",
    "fit_params",
    "last_trial",
    "parse_breakdown",
    "parse_fit_choice",
    "parse_fitp",
    "parse_result",
]
