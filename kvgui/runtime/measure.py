"""Measure each KV cache type's quality and speed on the user's model and text, in a worker.

The evaluation runs in ``python -m kvgui.runtime.measure_worker`` (llama.cpp can abort its
process); this module builds its request, reads its events, and assembles a MeasureRun.
``run_measure`` does it synchronously (the CLI); the GUI drives the same worker with a
QProcess, feeding the lines to a ``RunBuilder``. Cancel = kill the worker: it holds nothing
worth a graceful stop, and it also exits on its own when its stdin closes.

Protocol (JSON lines, ``kvgui.runtime.protocol.encode``; one request, then events)
-------------------------------------------------------------------------------
Request: ``{"type": "measure", "model", "settings" (measurement_settings().to_dict()),
"pairs": [[k, v], ...], "text", "window", "max_windows", "n_gen", "n_threads",
"repeat_reference", "kl_topk", "kl_full_max_bytes", "score_from", "profile_bins",
"speed_repeats", "pp_tokens", "retrieval": {filler, depths, seed, n_ctx} | null,
"sweep": QualityThreshold.to_dict() | null}``. Later lines: ``{"type": "cancel"}`` (the
worker exits at once; so does closing stdin).

Events: ``started {pid, llama_cpp_version}``; ``progress {stage: "load"|"eval"|"speed"|
"retrieval", fraction (of the whole run), pair?, pair_index?, pairs?, phase_fraction?,
pair_fraction?}``; ``plan {text_tokens, window, windows, tokens, n_vocab, kl_method,
reference_repeated, pairs, n_threads, score_from, speed_repeats, retrieval_ctx, sweep,
work}``; ``pair {result}`` (PairResult.to_dict()); ``pair_failed {type_k, type_v, error}``;
``failed {message}`` (fatal, the worker exits); ``done``.
"""

from __future__ import annotations

import math
import os
import queue
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from kvgui.core.config.settings import Settings
from kvgui.core.quality.advice import QualityThreshold
from kvgui.core.quality.needle import DEFAULT_DEPTHS, DEFAULT_SEED
from kvgui.core.quality.results import (
    DEFAULT_PAIRS,
    DEFAULT_PROFILE_BINS,
    DEFAULT_SPEED_REPEATS,
    DEFAULT_WINDOW,
    REFERENCE_PAIR,
    CacheKey,
    Evaluation,
    MeasureRun,
    ModelIdentity,
    PairFailure,
    PairResult,
    TextInfo,
    load_cached,
    measurement_settings,
    pair_label,
    pair_problem,
)
from kvgui.runtime.childproc import (
    StoppedWatch,
    child_env,
    describe_exit,
    kill_group,
    python_command,
)
from kvgui.runtime.protocol import ProtocolError, decode, encode

SAMPLE_TEXT_NAME = "sample (public domain)"
LONG_SAMPLE_TEXT_NAME = "long sample (public domain)"
STDERR_TAIL_LINES = 12


class MeasureError(Exception):
    """The measurement could not finish; ``partial`` holds the pairs that did."""

    def __init__(self, message: str, partial: MeasureRun | None = None) -> None:
        super().__init__(message)
        self.partial = partial


class MeasureCancelled(MeasureError):
    pass


def sample_text() -> str:
    """The public-domain sample shipped in resources/ (used when the user gives no text)."""
    return (resources.files("kvgui.resources") / "sample_text.txt").read_text(encoding="utf-8")


def long_sample_text() -> str:
    """The sample followed by scenes from Shakespeare (public domain, ~30K tokens): long
    enough for a long-context profile and for the retrieval test's filler."""
    more = (resources.files("kvgui.resources") / "long_text.txt").read_text(encoding="utf-8")
    return sample_text().rstrip() + "\n\n" + more


def default_text(long: bool) -> tuple[str, str]:
    """(text, name) when the user gives none."""
    return (long_sample_text(), LONG_SAMPLE_TEXT_NAME) if long else \
        (sample_text(), SAMPLE_TEXT_NAME)


@dataclass(frozen=True)
class Retrieval:
    """The retrieval test of a request: probes at ``depths`` of a filler filling ``n_ctx``
    tokens (None: the context per sequence)."""

    depths: tuple[float, ...] = DEFAULT_DEPTHS
    seed: int = DEFAULT_SEED
    n_ctx: int | None = None
    filler: str = field(default="", repr=False)  # "" = the long sample

    def to_message(self) -> dict[str, Any]:
        return {"filler": self.filler or long_sample_text(), "depths": list(self.depths),
                "seed": self.seed, "n_ctx": self.n_ctx}


MAX_TEXT_BYTES = 64 << 20  # ~16M tokens of text: far more than any context measures


def read_text_file(path: str | os.PathLike[str], limit: int = MAX_TEXT_BYTES) -> str:
    """A user's text file as UTF-8 (undecodable bytes replaced); OSError (with ``strerror``
    the one-line reason) if unreadable, not a regular file, or larger than ``limit``.

    ``measure --text /dev/zero`` once read until the kernel killed it at 24 GB, and a FIFO
    blocks at open for ever: only a regular file is opened, and never more than the limit
    is read (a file growing while read is cut at the limit too)."""
    import errno
    import stat

    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file (a FIFO, device or folder): "
                      "measure reads a text file")
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit >> 20} MiB: measure reads at most "
                      f"{limit >> 20} MiB of text (cut the file)")
    return data.decode("utf-8", "replace")


@dataclass(frozen=True)
class MeasureRequest:
    """What to measure. ``settings`` are the user's; every pair runs with
    measurement_settings(settings) and its own type_k/type_v."""

    model: str
    settings: Settings
    pairs: tuple[tuple[str, str], ...] = DEFAULT_PAIRS
    text: str = field(default="", repr=False)
    text_name: str = SAMPLE_TEXT_NAME
    window: int = DEFAULT_WINDOW
    max_windows: int | None = None
    n_gen: int = 32
    n_threads: int | None = None
    repeat_reference: bool = False
    kl_topk: int = 64
    kl_full_max_bytes: int = 512 * 1024 * 1024
    score_from: int | None = None  # None: the second half of each window (llama-perplexity)
    profile_bins: int = DEFAULT_PROFILE_BINS
    speed_repeats: int = DEFAULT_SPEED_REPEATS
    pp_tokens: int = DEFAULT_WINDOW
    retrieval: Retrieval | None = None
    sweep: QualityThreshold | None = None  # measure the ladder to this threshold, not pairs

    @property
    def measured_settings(self) -> Settings:
        return measurement_settings(self.settings)

    def problems(self) -> list[str]:
        """Why this request cannot run as asked (each one line); empty when it can."""
        out: list[str] = []
        if not Path(self.model).is_file():
            out.append(f"{self.model}: no such file")
        s = self.measured_settings
        n_ctx_seq = s.n_ctx if s.kv_unified else s.n_ctx // s.n_parallel
        if self.window < 8:
            out.append(f"the window must be at least 8 tokens, not {self.window}")
        elif self.window > n_ctx_seq:
            out.append(f"the window ({self.window} tokens) is larger than the context per "
                       f"sequence ({n_ctx_seq}): raise -c or lower --ctx")
        if self.max_windows is not None and self.max_windows < 1:
            out.append("the number of windows must be at least 1")
        if self.score_from is not None and not 0 <= self.score_from < self.window - 1:
            out.append(f"scoring from position {self.score_from} leaves nothing of a window "
                       f"of {self.window}")
        if self.speed_repeats < 0:
            out.append("the speed repeats must be 0 or more")
        if self.retrieval is not None:
            n = self.retrieval.n_ctx or n_ctx_seq
            if n > n_ctx_seq:
                out.append(f"the retrieval context ({n}) is larger than the context per "
                           f"sequence ({n_ctx_seq})")
            elif n < 128:
                out.append(f"the retrieval test needs a context of at least 128 tokens, "
                           f"not {n}")
        if not self.text.strip():
            out.append("the text is empty")
        for k, v in self.pairs:
            if why := pair_problem(s, k, v):
                out.append(f"{pair_label(k, v)}: {why}")
        return out

    def to_message(self) -> dict[str, Any]:
        return {
            "type": "measure",
            "model": self.model,
            "settings": self.measured_settings.to_dict(),
            "pairs": [list(p) for p in self.pairs],
            "text": self.text,
            "window": self.window,
            "max_windows": self.max_windows,
            "n_gen": self.n_gen,
            "n_threads": self.n_threads,
            "repeat_reference": self.repeat_reference,
            "kl_topk": self.kl_topk,
            "kl_full_max_bytes": self.kl_full_max_bytes,
            "score_from": self.score_from,
            "profile_bins": self.profile_bins,
            "speed_repeats": self.speed_repeats,
            "pp_tokens": self.pp_tokens,
            "retrieval": self.retrieval.to_message() if self.retrieval else None,
            "sweep": self.sweep.to_dict() if self.sweep else None,
        }

    def cache_key(self) -> CacheKey:
        return CacheKey(ModelIdentity.of(self.model), self.measured_settings,
                        TextInfo.of(self.text, self.text_name).sha256, self.window,
                        self.max_windows, score_from=self.score_from)


def cached_run(request: MeasureRequest) -> MeasureRun | None:
    """The cached results for this model file + settings + text + windows, if any."""
    try:
        return load_cached(request.cache_key())
    except OSError:
        return None


WORKER_MODULE = "kvgui.runtime.measure_worker"


def worker_command() -> list[str]:
    return python_command(WORKER_MODULE)


def worker_failure(returncode: int | None, tail: str) -> str:
    """Why the worker ended without a word of its own ("… was killed by SIGKILL …")."""
    return (f"the measurement worker {describe_exit(returncode)}"
            + (f"; llama.cpp's last lines:\n{tail}" if tail else ""))


@dataclass(frozen=True)
class Progress:
    """A progress event, with a sentence for a status line."""

    fraction: float  # of the whole run
    message: str
    stage: str = "eval"  # "start", "load", "plan", "eval", "speed" or "retrieval"
    pair: str = ""
    pair_index: int = 0
    pairs: int = 0
    phase_fraction: float = 0.0
    eta_s: float | None = None  # seconds left, from the pace so far (None: not known yet)


PHASE_WORDS = {"eval": "quality (KL, top-1, PPL)", "speed": "speed (warm-up, repeats)",
               "retrieval": "retrieval test"}


def format_eta(seconds: float | None) -> str:
    """"about 1 min 20 s left", "about 40 s left", "" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    s = max(0, round(seconds))
    if s >= 3600:
        return f"about {s // 3600} h {s % 3600 // 60} min left"
    if s >= 60:
        return f"about {s // 60} min {s % 60} s left"
    return f"about {s} s left"


class RunBuilder:
    """Assembles a MeasureRun from the worker's events (the CLI and the GUI share it)."""

    def __init__(self, request: MeasureRequest) -> None:
        self.request = request
        self.identity = ModelIdentity.of(request.model)
        self.text = TextInfo.of(request.text, request.text_name)
        self.plan: dict[str, Any] | None = None
        self.results: list[PairResult] = []
        self.failures: list[PairFailure] = []
        self.llama_cpp_version = ""
        self.error: str | None = None
        self.done = False
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._t_eval: float | None = None  # when the first pair began (the ETA's pace)

    def feed(self, msg: dict[str, Any]) -> Progress | None:
        """Take one event; returns a Progress for progress-like events."""
        kind = msg.get("type")
        if kind == "started":
            self.llama_cpp_version = str(msg.get("llama_cpp_version", ""))
            return Progress(0.0, "worker started", "start")
        if kind == "progress":
            return self._progress(msg)
        if kind == "plan":
            self.plan = msg
            return Progress(0.0, f"{msg['text_tokens']} tokens: {msg['windows']} windows of "
                                 f"{msg['window']}, {msg['tokens']} scored per type", "plan")
        if kind == "pair":
            r = PairResult.from_dict(msg["result"])
            self.results.append(r)
            return None
        if kind == "pair_failed":
            self.failures.append(
                PairFailure(str(msg["type_k"]), str(msg["type_v"]), str(msg["error"])))
            return None
        if kind == "failed":
            self.error = str(msg.get("message", "the measurement failed"))
        elif kind == "done":
            self.done = True
        return None

    def _progress(self, msg: dict[str, Any]) -> Progress:
        frac = float(msg.get("fraction", 0.0))
        stage = str(msg.get("stage", "eval"))
        if stage == "load":
            return Progress(0.0, f"loading the model… {frac:.0%}", "load")
        now = time.monotonic()
        if self._t_eval is None:
            self._t_eval = now
        eta = (now - self._t_eval) * (1 - frac) / frac if frac > 0.01 else None
        i, n = int(msg.get("pair_index", 0)), int(msg.get("pairs", 0))
        phase = float(msg.get("phase_fraction", 0.0))
        text = (f"{msg.get('pair')} (type {i + 1} of {n}): {PHASE_WORDS.get(stage, stage)} "
                f"{phase:.0%}")
        if left := format_eta(eta):
            text += f" · {left}"
        return Progress(frac, text, stage, str(msg.get("pair", "")), i, n, phase, eta)

    def run(self) -> MeasureRun | None:
        """The run so far (complete after ``done``); None before the plan arrived."""
        if self.plan is None:
            return None
        p = self.plan
        req = self.request
        evaluation = Evaluation(
            window=int(p["window"]), windows=int(p["windows"]), tokens=int(p["tokens"]),
            text_tokens=int(p["text_tokens"]), max_windows=req.max_windows,
            kl_method=str(p["kl_method"]), reference_repeated=bool(p["reference_repeated"]),
            score_from=req.score_from, n_threads=int(p.get("n_threads", 0)),
            speed_repeats=int(p.get("speed_repeats", 0)),
            retrieval_ctx=None if p.get("retrieval_ctx") is None else int(p["retrieval_ctx"]),
            sweep=str(p.get("sweep", "")),
        )
        order = {pair_label(*pp): i for i, pp in enumerate(req.pairs)}
        order[pair_label(*REFERENCE_PAIR)] = -1
        results = sorted(self.results, key=lambda r: order.get(r.label, len(order)))
        return MeasureRun(
            model=self.identity, settings=req.measured_settings, text=self.text,
            evaluation=evaluation, results=tuple(results), failures=tuple(self.failures),
            llama_cpp_version=self.llama_cpp_version, created=self.started,
        )


def _tail(path: Path, n: int = STDERR_TAIL_LINES) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(ln for ln in lines[-n:] if ln.strip())


def run_measure(
    request: MeasureRequest,
    on_progress: Callable[[Progress], None] | None = None,
    cancel: threading.Event | None = None,
    on_result: Callable[[PairResult], None] | None = None,
) -> MeasureRun:
    """Run the worker to the end and return the run (not merged with the cache).

    Raises MeasureCancelled when ``cancel`` is set (the worker is killed within ~0.1 s),
    MeasureError when the worker fails or dies; both carry the finished pairs as ``partial``.
    """
    if problems := request.problems():
        raise MeasureError("; ".join(problems))
    builder = RunBuilder(request)
    with tempfile.TemporaryDirectory(prefix="kvgui-measure-") as tmp:
        err_path = Path(tmp) / "stderr.log"
        with open(err_path, "wb") as err:
            proc = subprocess.Popen(
                worker_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                env=child_env(), start_new_session=True,
            )
        lines: queue.Queue[bytes | None] = queue.Queue()

        def read() -> None:
            assert proc.stdout is not None
            for line in iter(proc.stdout.readline, b""):
                lines.put(line)
            lines.put(None)

        reader = threading.Thread(target=read, name="kvgui-measure-reader", daemon=True)
        reader.start()
        try:
            assert proc.stdin is not None
            proc.stdin.write(encode(request.to_message()))
            proc.stdin.flush()
            _pump(proc, builder, lines, on_progress, on_result, cancel)
        finally:
            kill_group(proc.pid)  # the worker and anything it started
            proc.wait()
            if proc.stdin:
                proc.stdin.close()
            reader.join(timeout=2)
            if proc.stdout:
                proc.stdout.close()
        if builder.done:
            run = builder.run()
            assert run is not None
            return run
        if builder.error:
            raise MeasureError(builder.error, builder.run())
        raise MeasureError(worker_failure(proc.returncode, _tail(err_path)), builder.run())


def _pump(
    proc: subprocess.Popen[bytes],
    builder: RunBuilder,
    lines: queue.Queue[bytes | None],
    on_progress: Callable[[Progress], None] | None,
    on_result: Callable[[PairResult], None] | None,
    cancel: threading.Event | None,
) -> None:
    stopped = StoppedWatch()
    quiet_since = time.monotonic()
    while True:
        if cancel is not None and cancel.is_set():
            kill_group(proc.pid)
            raise MeasureCancelled("cancelled", builder.run())
        try:
            line = lines.get(timeout=0.05)
        except queue.Empty:
            if time.monotonic() - quiet_since >= 1.0:  # /proc once a second, not 20 times
                quiet_since = time.monotonic()
                if why := stopped.verdict(proc.pid):
                    kill_group(proc.pid)
                    raise MeasureError(f"the measure worker {why}", builder.run()) from None
            continue
        quiet_since = time.monotonic()
        if line is None:
            return
        try:
            msg = decode(line)
        except ProtocolError:
            continue  # not ours (cannot happen: fd 1 is private) - never fatal
        n_before = len(builder.results)
        prog = builder.feed(msg)
        if prog is not None and on_progress is not None:
            on_progress(prog)
        if on_result is not None and len(builder.results) > n_before:
            on_result(builder.results[-1])
        if builder.done or builder.error:
            # the worker exits by itself right after; give it a moment, then make sure
            deadline = time.monotonic() + 2.0
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            return
