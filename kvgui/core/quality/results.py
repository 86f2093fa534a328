"""What a quality/speed measurement of KV cache types found, its JSON shape, and its cache.

A measurement runs the model over one text, in the same evaluation windows, once per K/V type
pair; the f16/f16 run is the reference the others are compared with (KL divergence of the
token distributions, top-1 agreement), also by position in the window (where long-context
errors show), plus each pair's speed (repeated, median and spread) and, when asked, a
retrieval test at the chosen context. Results are cached per model file (path, size, mtime)
+ settings + text + windows, so reopening a model shows them at once. Qt- and llama-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import statistics
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.gguf.ggml_types import CACHE_TYPE_NAMES

SCHEMA_VERSION = 2
REFERENCE_PAIR: tuple[str, str] = ("f16", "f16")
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0"))
# What the panel offers: every type for both K and V, plus the usual mixed pair.
OFFERED_PAIRS: tuple[tuple[str, str], ...] = (
    *((t, t) for t in ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "iq4_nl", "q4_0")),
    ("q8_0", "q4_0"),
    ("f16", "q8_0"),
    ("q8_0", "f16"),
)
DEFAULT_WINDOW = 512  # llama-perplexity's default context
DEFAULT_PROFILE_BINS = 8  # KL/top-1 by position: this many equal slices of the scored positions
DEFAULT_SPEED_REPEATS = 5  # timed repeats of each speed test, after one untimed warm-up
QUANTIZED = frozenset(CACHE_TYPE_NAMES) - {"f32", "f16", "bf16"}


def pair_label(type_k: str, type_v: str) -> str:
    """"q8_0" when K and V share a type, "q8_0/q4_0" (K/V) when not."""
    return type_k if type_k == type_v else f"{type_k}/{type_v}"


def parse_pair(text: str) -> tuple[str, str]:
    """Inverse of pair_label: "q8_0" or "q8_0/q4_0" (also "q8_0:q4_0"); ValueError if unknown."""
    parts = text.strip().lower().replace(":", "/").split("/")
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"not a cache type or K/V pair: {text!r}")
    for p in parts:
        if p not in CACHE_TYPE_NAMES:
            raise ValueError(
                f"unknown cache type {p!r} (one of {', '.join(CACHE_TYPE_NAMES)})"
            )
    return parts[0], parts[1]


def parse_pairs(text: str) -> tuple[tuple[str, str], ...]:
    """A comma-separated list of pairs, without duplicates, in the order given."""
    out: list[tuple[str, str]] = []
    for item in text.split(","):
        if item.strip():
            pair = parse_pair(item)
            if pair not in out:
                out.append(pair)
    if not out:
        raise ValueError("no cache types given")
    return tuple(out)


def measurement_settings(settings: Settings) -> Settings:
    """The settings every pair is measured with: flash attention resolved once for all.

    Quantized V needs flash attention, and flash attention changes the numerics too, so
    "auto" is measured as "on" for every pair (what llama.cpp picks on every backend that has
    it): the comparison then isolates the cache type. "off" stays off (see pair_problem).
    """
    fa = FlashAttn.ON if settings.flash_attn == FlashAttn.AUTO else settings.flash_attn
    return settings.replace(flash_attn=fa, type_k="f16", type_v="f16")


def pair_problem(settings: Settings, type_k: str, type_v: str) -> str | None:
    """Why llama.cpp would refuse this pair with these settings, or None."""
    if type_v in QUANTIZED and settings.flash_attn == FlashAttn.OFF:
        return f"a quantized V cache ({type_v}) needs flash attention (-fa on or auto)"
    return None


@dataclass(frozen=True)
class ModelIdentity:
    """Which model file: path, size and modification time (a changed file is a new model)."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> ModelIdentity:
        p = Path(path).resolve()
        st = p.stat()
        return cls(str(p), st.st_size, st.st_mtime_ns)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "mtime_ns": self.mtime_ns}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelIdentity:
        return cls(str(d["path"]), int(d["size"]), int(d["mtime_ns"]))


@dataclass(frozen=True)
class TextInfo:
    """The evaluated text: a name for people, its hash for the cache."""

    name: str
    sha256: str
    chars: int

    @classmethod
    def of(cls, text: str, name: str) -> TextInfo:
        return cls(name, hashlib.sha256(text.encode("utf-8")).hexdigest(), len(text))


@dataclass(frozen=True)
class PairResult:
    """One K/V pair's figures. KL and top-1 are against the f16/f16 reference run.

    kl_* are in nats per token; ppl_stderr and kl_stderr are standard errors of the mean (as
    llama-perplexity prints them). Speeds: pp = the evaluation windows' prompt processing,
    tg = single-token decoding at half a window's depth. kv_* are parsed from llama.cpp's log.
    """

    type_k: str
    type_v: str
    ppl: float
    ppl_stderr: float
    kl_mean: float
    kl_stderr: float
    kl_p99: float
    kl_max: float
    top1_agreement: float
    pp_tokens_per_s: float
    tg_tokens_per_s: float
    kv_bytes: int | None = None
    kv_k_bytes: int | None = None
    kv_v_bytes: int | None = None
    flash_attn: bool | None = None
    seconds: float = 0.0
    pp_samples: tuple[float, ...] = ()  # tokens/s of each timed repeat (median = pp_tokens_per_s)
    tg_samples: tuple[float, ...] = ()
    eval_tokens: int = 0  # tokens decoded by the quality evaluation (every window, in full)
    eval_seconds: float = 0.0  # its wall time, scoring included
    profile: tuple[ProfileBin, ...] = ()
    retrieval: tuple[NeedleProbe, ...] = ()

    @property
    def label(self) -> str:
        return pair_label(self.type_k, self.type_v)

    @property
    def pair(self) -> tuple[str, str]:
        return (self.type_k, self.type_v)

    @property
    def pp_spread(self) -> tuple[float, float] | None:
        """(slowest, fastest) of the prompt-speed repeats; None when not repeated."""
        return _spread(self.pp_samples)

    @property
    def tg_spread(self) -> tuple[float, float] | None:
        return _spread(self.tg_samples)

    @property
    def eval_tokens_per_s(self) -> float:
        """Throughput of the quality evaluation: tokens decoded and scored per second."""
        return self.eval_tokens / self.eval_seconds if self.eval_seconds > 0 else math.nan

    @property
    def retrieval_passed(self) -> int:
        return sum(p.passed for p in self.retrieval)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type_k": self.type_k,
            "type_v": self.type_v,
            "label": self.label,
            "ppl": self.ppl,
            "ppl_stderr": self.ppl_stderr,
            "kl_mean": self.kl_mean,
            "kl_stderr": self.kl_stderr,
            "kl_p99": self.kl_p99,
            "kl_max": self.kl_max,
            "top1_agreement": self.top1_agreement,
            "pp_tokens_per_s": self.pp_tokens_per_s,
            "tg_tokens_per_s": self.tg_tokens_per_s,
            "kv_bytes": self.kv_bytes,
            "kv_k_bytes": self.kv_k_bytes,
            "kv_v_bytes": self.kv_v_bytes,
            "flash_attn": self.flash_attn,
            "seconds": self.seconds,
            "pp_samples": list(self.pp_samples),
            "tg_samples": list(self.tg_samples),
            "eval_tokens": self.eval_tokens,
            "eval_seconds": self.eval_seconds,
            "profile": [b.to_dict() for b in self.profile],
            "retrieval": [p.to_dict() for p in self.retrieval],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairResult:
        def opt_int(key: str) -> int | None:
            v = d.get(key)
            return None if v is None else int(v)

        def num(key: str) -> float:
            v = d[key]
            return math.nan if v is None else float(v)  # JSON null: was NaN or infinite

        fa = d.get("flash_attn")
        return cls(
            type_k=str(d["type_k"]),
            type_v=str(d["type_v"]),
            ppl=num("ppl"),
            ppl_stderr=num("ppl_stderr"),
            kl_mean=num("kl_mean"),
            kl_stderr=num("kl_stderr"),
            kl_p99=num("kl_p99"),
            kl_max=num("kl_max"),
            top1_agreement=num("top1_agreement"),
            pp_tokens_per_s=num("pp_tokens_per_s"),
            tg_tokens_per_s=num("tg_tokens_per_s"),
            kv_bytes=opt_int("kv_bytes"),
            kv_k_bytes=opt_int("kv_k_bytes"),
            kv_v_bytes=opt_int("kv_v_bytes"),
            flash_attn=None if fa is None else bool(fa),
            seconds=float(d.get("seconds", 0.0)),
            pp_samples=tuple(float(x) for x in d.get("pp_samples", ())),
            tg_samples=tuple(float(x) for x in d.get("tg_samples", ())),
            eval_tokens=int(d.get("eval_tokens", 0)),
            eval_seconds=float(d.get("eval_seconds", 0.0)),
            profile=tuple(ProfileBin.from_dict(b) for b in d.get("profile", ())),
            retrieval=tuple(NeedleProbe.from_dict(p) for p in d.get("retrieval", ())),
        )


def _spread(samples: Sequence[float]) -> tuple[float, float] | None:
    finite = [x for x in samples if math.isfinite(x)]
    return (min(finite), max(finite)) if len(finite) > 1 else None


def format_speed(median_: float, spread: tuple[float, float] | None, spec: str) -> str:
    """"1234 (1200–1250)": the median and the slowest–fastest repeat (CLI and window)."""
    if not math.isfinite(median_):
        return "n/a"
    text = format(median_, spec)
    if spread is not None:
        text += f" ({format(spread[0], spec)}–{format(spread[1], spec)})"
    return text


def median(samples: Sequence[float]) -> float:
    finite = [x for x in samples if math.isfinite(x)]
    return float(statistics.median(finite)) if finite else math.nan


@dataclass(frozen=True)
class ProfileBin:
    """KL and top-1 agreement over one slice of positions in the window, pooled over every
    window: where in a long context the cache type starts to cost."""

    start: int  # first position (token index in the window) of the slice
    end: int  # one past the last
    kl_mean: float
    top1_agreement: float
    n: int  # scored predictions in the slice

    def to_dict(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "kl_mean": self.kl_mean,
                "top1_agreement": self.top1_agreement, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProfileBin:
        return cls(int(d["start"]), int(d["end"]), float(d["kl_mean"]),
                   float(d["top1_agreement"]), int(d["n"]))


@dataclass(frozen=True)
class NeedleProbe:
    """One retrieval probe: a fact hidden at ``depth`` (0 = start, 1 = end) of a filler text
    that fills the context, asked for at the end; ``passed`` when the greedy answer names it."""

    depth: float
    position: int  # token index where the fact starts
    context_tokens: int  # prompt length in tokens
    expected: str
    answer: str  # what the model wrote (the first few tokens)
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"depth": self.depth, "position": self.position,
                "context_tokens": self.context_tokens, "expected": self.expected,
                "answer": self.answer, "passed": self.passed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NeedleProbe:
        return cls(float(d["depth"]), int(d["position"]), int(d["context_tokens"]),
                   str(d["expected"]), str(d["answer"]), bool(d["passed"]))


@dataclass(frozen=True)
class PairFailure:
    type_k: str
    type_v: str
    error: str

    @property
    def label(self) -> str:
        return pair_label(self.type_k, self.type_v)

    def to_dict(self) -> dict[str, Any]:
        return {"type_k": self.type_k, "type_v": self.type_v, "label": self.label,
                "error": self.error}


@dataclass(frozen=True)
class Evaluation:
    """How the text was evaluated: identical for every pair of a run, by construction.

    Windows of ``window`` tokens (the first replaced by BOS where the model wants one), the
    KV cache cleared between windows; positions from ``score_from`` on are scored (by default
    the second half, as llama-perplexity does; 0 for a long-context profile), so ``tokens`` =
    windows * (window - score_from - 1) predictions per pair.
    """

    window: int
    windows: int
    tokens: int
    text_tokens: int
    max_windows: int | None
    kl_method: str  # "full" (exact) or "top<k>" (top-k of the reference + the rest as one)
    reference_repeated: bool  # f16 was run twice: its KL row is a real run-to-run figure
    score_from: int | None = None  # None: window // 2 (llama-perplexity)
    n_threads: int = 0  # CPU threads of every decode (speed is comparable only at the same)
    speed_repeats: int = 0
    retrieval_ctx: int | None = None  # context the retrieval probes fill (None: not run)
    sweep: str = ""  # the threshold a sweep searched for ("" when the pairs were given)

    def __post_init__(self) -> None:
        if self.score_from is None:  # spelled out: the JSON says which positions were scored
            object.__setattr__(self, "score_from", self.window // 2)

    @property
    def first_scored(self) -> int:
        return self.window // 2 if self.score_from is None else self.score_from

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "windows": self.windows,
            "tokens": self.tokens,
            "text_tokens": self.text_tokens,
            "max_windows": self.max_windows,
            "kl_method": self.kl_method,
            "reference": pair_label(*REFERENCE_PAIR),
            "reference_repeated": self.reference_repeated,
            "score_from": self.first_scored,
            "n_threads": self.n_threads,
            "speed_repeats": self.speed_repeats,
            "retrieval_ctx": self.retrieval_ctx,
            "sweep": self.sweep,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluation:
        mw = d.get("max_windows")
        return cls(
            window=int(d["window"]),
            windows=int(d["windows"]),
            tokens=int(d["tokens"]),
            text_tokens=int(d["text_tokens"]),
            max_windows=None if mw is None else int(mw),
            kl_method=str(d["kl_method"]),
            reference_repeated=bool(d.get("reference_repeated", False)),
            score_from=None if d.get("score_from") is None else int(d["score_from"]),
            n_threads=int(d.get("n_threads", 0)),
            speed_repeats=int(d.get("speed_repeats", 0)),
            retrieval_ctx=None if d.get("retrieval_ctx") is None else int(d["retrieval_ctx"]),
            sweep=str(d.get("sweep", "")),
        )


@dataclass(frozen=True)
class MeasureRun:
    """A whole measurement: the inputs that identify it and one result per pair."""

    model: ModelIdentity
    settings: Settings  # measurement_settings(): type_k/type_v are the reference's
    text: TextInfo
    evaluation: Evaluation
    results: tuple[PairResult, ...] = ()
    failures: tuple[PairFailure, ...] = ()
    llama_cpp_version: str = ""
    created: str = ""  # ISO 8601, UTC

    @property
    def reference(self) -> PairResult | None:
        return self.result(*REFERENCE_PAIR)

    def result(self, type_k: str, type_v: str) -> PairResult | None:
        return next((r for r in self.results if r.pair == (type_k, type_v)), None)

    def merged(self, newer: MeasureRun) -> MeasureRun:
        """This run's pairs updated with ``newer``'s (same key): newer results win."""
        by_pair = {r.pair: r for r in self.results}
        fails = {f.label: f for f in self.failures}
        for r in newer.results:
            by_pair[r.pair] = r
            fails.pop(r.label, None)
        for f in newer.failures:
            fails[f.label] = f
            by_pair.pop((f.type_k, f.type_v), None)
        return replace(newer, results=tuple(by_pair.values()), failures=tuple(fails.values()))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "model": self.model.to_dict(),
            "settings": self.settings.to_dict(),
            "text": {"name": self.text.name, "sha256": self.text.sha256,
                     "chars": self.text.chars},
            "evaluation": self.evaluation.to_dict(),
            "results": [r.to_dict() for r in self.results],
            "failures": [f.to_dict() for f in self.failures],
            "pareto": [r.label for r in pareto_front(self.results)],
            "llama_cpp_version": self.llama_cpp_version,
            "created": self.created,
        }

    def to_json(self) -> str:
        return json.dumps(json_safe(self.to_dict()), indent=2) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MeasureRun:
        if d.get("version") != SCHEMA_VERSION:
            raise ValueError(f"measurement version {d.get('version')!r}, expected {SCHEMA_VERSION}")
        t = d["text"]
        return cls(
            model=ModelIdentity.from_dict(d["model"]),
            settings=Settings.from_dict(d["settings"]),
            text=TextInfo(str(t["name"]), str(t["sha256"]), int(t["chars"])),
            evaluation=Evaluation.from_dict(d["evaluation"]),
            results=tuple(PairResult.from_dict(r) for r in d.get("results", [])),
            failures=tuple(
                PairFailure(str(f["type_k"]), str(f["type_v"]), str(f["error"]))
                for f in d.get("failures", [])
            ),
            llama_cpp_version=str(d.get("llama_cpp_version", "")),
            created=str(d.get("created", "")),
        )

    @classmethod
    def from_json(cls, text: str) -> MeasureRun:
        return cls.from_dict(json.loads(text))


def json_safe(obj: Any) -> Any:
    """JSON has no NaN/Infinity: they become null (e.g. a PPL that overflowed)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj


# --- choosing -------------------------------------------------------------------------------


def pareto_front(results: Iterable[PairResult]) -> list[PairResult]:
    """The pairs no other pair beats on both KV memory and mean KL, by increasing memory.

    Pairs without a measured memory figure are left out.
    """
    pts = sorted(
        (r for r in results if r.kv_bytes is not None),
        key=lambda r: (r.kv_bytes, r.kl_mean),
    )
    front: list[PairResult] = []
    best = math.inf
    for r in pts:
        if r.kl_mean < best:
            front.append(r)
            best = r.kl_mean
    return front


def recommend(
    results: Sequence[PairResult],
    budget: int | None,
    cost: Callable[[PairResult], int | None] | None = None,
) -> PairResult | None:
    """The most faithful pair (lowest mean KL; then less memory) whose KV fits ``budget``.

    ``cost`` gives the bytes a pair needs (e.g. the estimate's KV at the user's context);
    by default the KV memory measured at the measurement's context. None: no budget, or
    nothing fits.
    """
    if budget is None:
        return None
    cost = cost or (lambda r: r.kv_bytes)
    fitting = []
    for r in results:
        c = cost(r)
        if c is not None and c <= budget and math.isfinite(r.kl_mean):
            fitting.append((r.kl_mean, c, r.label, r))
    if not fitting:
        return None
    return min(fitting, key=lambda t: t[:3])[3]


# --- cache ----------------------------------------------------------------------------------


def cache_dir() -> Path:
    """$KVGUI_CONFIG_DIR/measure if set (tests, portable installs), else the user cache dir."""
    env = os.environ.get("KVGUI_CONFIG_DIR")
    if env:
        return Path(env) / "measure"
    import platformdirs

    return Path(platformdirs.user_cache_dir("kvgui", appauthor=False)) / "measure"


def _llama_cpp_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        return ""


@dataclass(frozen=True)
class CacheKey:
    """What makes two measurements comparable: the same model file, settings, text, windows
    and llama.cpp. The K/V types are not part of it: one entry holds every measured pair."""

    model: ModelIdentity
    settings: Settings
    text_sha256: str
    window: int
    max_windows: int | None
    llama_cpp_version: str = field(default_factory=_llama_cpp_version)
    score_from: int | None = None  # None: window // 2

    def digest(self) -> str:
        s = measurement_settings(self.settings).to_dict()
        first = self.window // 2 if self.score_from is None else self.score_from
        blob = json.dumps(
            {"model": self.model.to_dict(), "settings": s, "text": self.text_sha256,
             "window": self.window, "max_windows": self.max_windows,
             "llama_cpp": self.llama_cpp_version, "score_from": first},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self) -> Path:
        return cache_dir() / f"{self.digest()}.json"

    @classmethod
    def of_run(cls, run: MeasureRun) -> CacheKey:
        return cls(run.model, run.settings, run.text.sha256, run.evaluation.window,
                   run.evaluation.max_windows, run.llama_cpp_version,
                   score_from=run.evaluation.first_scored)


def load_cached(key: CacheKey) -> MeasureRun | None:
    """The cached run for ``key``, or None (missing, unreadable, or for another model file)."""
    try:
        run = MeasureRun.from_json(key.path().read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return run if CacheKey.of_run(run).digest() == key.digest() else None


def save_cached(run: MeasureRun) -> MeasureRun:
    """Merge ``run`` into its cache entry (atomically) and return the merged run."""
    key = CacheKey.of_run(run)
    old = load_cached(key)
    merged = old.merged(run) if old else run
    path = key.path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".measure.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(merged.to_json())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return merged


def find_cached(model: ModelIdentity, settings: Settings,
                text_sha256: str | None = None) -> MeasureRun | None:
    """The newest cached run of this model file whose numbers apply to ``settings``: the same
    flash-attention choice (it changes the numerics), the same llama.cpp and, when given, the
    same text. Window and context may differ (the run says which it used). For the window,
    which looks its model up without knowing how the user last measured it."""
    folder = cache_dir()
    want_fa = measurement_settings(settings).flash_attn
    version = _llama_cpp_version()
    best: MeasureRun | None = None
    try:
        paths = sorted(folder.glob("*.json"))
    except OSError:
        return None
    for path in paths:
        try:
            run = MeasureRun.from_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # another version's entry, or half a file: never fatal
        if run.model != model or run.settings.flash_attn != want_fa or not run.results:
            continue
        if run.llama_cpp_version != version:
            continue
        if text_sha256 is not None and run.text.sha256 != text_sha256:
            continue
        if best is None or (run.created, len(run.results)) > (best.created, len(best.results)):
            best = run
    return best
