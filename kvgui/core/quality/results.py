"""What a quality/speed measurement of KV cache types found, its JSON shape, and its cache.

A measurement runs the model over one text, in the same evaluation windows, once per K/V type
pair; the f16/f16 run is the reference the others are compared with (KL divergence of the
token distributions, top-1 agreement). Results are cached per model file (path, size, mtime)
+ settings + text + windows, so reopening a model shows them at once. Qt- and llama-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.gguf.ggml_types import CACHE_TYPE_NAMES

SCHEMA_VERSION = 1
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

    @property
    def label(self) -> str:
        return pair_label(self.type_k, self.type_v)

    @property
    def pair(self) -> tuple[str, str]:
        return (self.type_k, self.type_v)

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
        )


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
    KV cache cleared between windows; the second half of each window is scored, so
    ``tokens`` = windows * (window - window // 2 - 1) predictions per pair.
    """

    window: int
    windows: int
    tokens: int
    text_tokens: int
    max_windows: int | None
    kl_method: str  # "full" (exact) or "top<k>" (top-k of the reference + the rest as one)
    reference_repeated: bool  # f16 was run twice: its KL row is a real run-to-run figure

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

    def digest(self) -> str:
        s = measurement_settings(self.settings).to_dict()
        blob = json.dumps(
            {"model": self.model.to_dict(), "settings": s, "text": self.text_sha256,
             "window": self.window, "max_windows": self.max_windows,
             "llama_cpp": self.llama_cpp_version},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def path(self) -> Path:
        return cache_dir() / f"{self.digest()}.json"

    @classmethod
    def of_run(cls, run: MeasureRun) -> CacheKey:
        return cls(run.model, run.settings, run.text.sha256, run.evaluation.window,
                   run.evaluation.max_windows, run.llama_cpp_version)


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
