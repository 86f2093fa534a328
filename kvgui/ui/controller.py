"""The window's state and its calls into the Qt-free core; widgets only draw what it emits.

Per slider step it computes the current estimate and one estimate per common K/V pair (nine
in all) and emits a Snapshot. What does not change with the context is cached: the
memory-vs-context curves (keyed by model and every setting but n_ctx) and the largest fitting
context per pair (the same, plus the budgets). Bursts of steps are coalesced: a step only
records the wanted context and the work runs once when the event loop is next idle.
Model files are read in a worker thread, so a slow disk never freezes the window.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from kvgui.core.config.appconfig import HW_CATALOG, AppConfig, HardwareChoice
from kvgui.core.config.settings import N_CTX_PAD, FlashAttn, Settings
from kvgui.core.memory.estimate import Estimate, estimate
from kvgui.core.memory.fit import COMMON_CACHE_PAIRS, max_context, max_gpu_layers
from kvgui.core.model.info import ModelInfo
from kvgui.core.quality.notes import quality_note
from kvgui.core.sizes import format_bytes
from kvgui.ui.barmodel import BarRow, rows_from_estimate
from kvgui.ui.cache_table import CompareRow
from kvgui.ui.context_slider import MIN_CTX, snap
from kvgui.ui.hardware_plan import GpuSource, Plan, make_plan

CURVE_POINTS = 64


@dataclass(frozen=True)
class Snapshot:
    """Everything the window shows for one context value."""

    n_ctx: int
    estimate: Estimate | None
    rows: tuple[BarRow, ...]
    compare: tuple[CompareRow, ...]
    plan: Plan

    @property
    def over(self) -> int:
        return sum(r.over for r in self.rows)

    @property
    def errors(self) -> tuple[str, ...]:
        return self.estimate.errors if self.estimate else ()


@dataclass(frozen=True)
class Curves:
    """Primary-device memory against context for each pair; the same for every slider step."""

    xs: tuple[int, ...]
    ys: dict[tuple[str, str], tuple[int, ...]]
    budget: int | None
    max_ctx: dict[tuple[str, str], int | None]
    device: str
    current: tuple[str, str]


@dataclass(frozen=True)
class Preset:
    key: str
    title: str
    type_k: str
    type_v: str
    n_ctx: int | None  # None = as long as fits
    blurb: str


PRESETS: tuple[Preset, ...] = (
    Preset("chat", "Short chat", "f16", "f16", 16384,
           "f16 cache, 16K context: full quality for everyday chat"),
    Preset("docs", "Long documents", "q8_0", "q8_0", 32768,
           "q8_0 cache (≈ f16 quality, half the memory), 32K context for long documents"),
    Preset("rag", "Heavy RAG", "q4_0", "q4_0", None,
           "q4_0 cache, as long a context as fits: the most retrieved text in memory"),
)


@dataclass
class HardwareState:
    """Detected GPUs (with live in-use memory), the catalog GPU, and the host RAM."""

    detected: list[GpuSource] = field(default_factory=list)
    catalog_gpu: GpuSource | None = None
    ram_available: int | None = None
    reasons: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()


class Controller(QObject):
    modelChanged = Signal(object)  # ModelInfo | None
    settingsChanged = Signal(object)  # Settings
    planChanged = Signal(object)  # Plan
    snapshotReady = Signal(object)  # Snapshot
    curvesReady = Signal(object)  # Curves
    loadingChanged = Signal(bool)
    loadFailed = Signal(str, str)  # source, one-line reason
    message = Signal(str)
    _loaded = Signal(int, object, object, str)  # token, ModelInfo | None, error | None, source

    def __init__(self, config: AppConfig | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.config = config or AppConfig()
        self.model: ModelInfo | None = None
        self.model_source = ""
        self.settings: Settings = self.config.settings
        self.hardware = HardwareState()
        if self.config.hardware.catalog_name:
            self.hardware.catalog_gpu = catalog_gpu(self.config.hardware.catalog_name)
        self.plan: Plan = self._make_plan()
        self.snapshot: Snapshot | None = None
        self.curves: Curves | None = None
        self._curve_cache: dict[Any, tuple[tuple[int, ...], dict]] = {}
        self._fit_cache: dict[Any, dict[tuple[str, str], int | None]] = {}
        self.ngl_auto = False  # GPU layers: the most that fit, recomputed as settings change
        self._full_pending = False
        self._load_token = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._flush)
        self._loaded.connect(self._on_loaded)

    # --- model -------------------------------------------------------------------------
    def set_model(self, model: ModelInfo | None, source: str = "") -> None:
        self.model = model
        self.model_source = source
        self._curve_cache.clear()
        self._fit_cache.clear()
        self.modelChanged.emit(model)
        self.recompute(full=True)

    def open_path(self, path: str) -> None:
        """Read the GGUF header in a worker thread; modelChanged or loadFailed follows."""

        def load() -> ModelInfo:
            from kvgui.core.model.info import load_model

            return load_model(path)

        self.open_header(load, path)

    def open_reference(self, ref: str) -> None:
        """A path, or a Hub model (``hf:repo:TAG``, ``repo:TAG``, a URL): its header is read
        off the GUI thread (range requests, or the caches), as open_path does for files."""
        from kvgui.sources.resolve import HF_PREFIX, looks_like_hub_reference

        bare = ref.removeprefix(HF_PREFIX)
        if not ref.startswith(HF_PREFIX) and not looks_like_hub_reference(bare):
            self.open_path(ref)
            return

        def load() -> ModelInfo:
            from kvgui.sources.resolve import open_reference

            return open_reference(bare).info

        self.open_header(load, HF_PREFIX + bare)

    def open_header(self, load: Callable[[], ModelInfo], source: str) -> None:
        """Run ``load`` (read a file, or expand a catalog entry) off the GUI thread."""
        self._load_token += 1
        token = self._load_token
        self.loadingChanged.emit(True)

        def work() -> None:
            try:
                self._loaded.emit(token, load(), None, source)
            except Exception as exc:  # every failure becomes one line in the window
                self._loaded.emit(token, None, exc, source)

        threading.Thread(target=work, name="kvgui-open", daemon=True).start()

    def _on_loaded(self, token: int, model: ModelInfo | None, error: object, source: str) -> None:
        if token != self._load_token:
            return  # a newer open superseded this one
        self.loadingChanged.emit(False)
        if model is None:
            self.loadFailed.emit(source, one_line(error))
            return
        # a split model opened from any part is the model of its first part (what llama.cpp
        # is given, and what the recent list keeps)
        path = getattr(model, "path", None)
        keep = source.startswith(("catalog:", "hf:"))  # a Hub model keeps its -hf name
        self.set_model(model, path if path and not keep else source)

    # --- settings ----------------------------------------------------------------------
    def update_settings(self, **changes: Any) -> None:
        if "n_ctx" in changes:
            changes["n_ctx"] = snap(int(changes["n_ctx"]))
        try:
            new = self.settings.replace(**changes)
        except ValueError as exc:
            self.message.emit(one_line(exc))
            return
        if new == self.settings:
            return
        only_ctx = set(changes) <= {"n_ctx"}
        self.settings = new
        self.settingsChanged.emit(new)
        self.recompute(full=not only_ctx)

    def set_n_ctx(self, n_ctx: int) -> None:
        """One slider step: cheap, coalesced with any other step before the next repaint."""
        self.update_settings(n_ctx=n_ctx)

    def apply_preset(self, key: str) -> None:
        preset = next(p for p in PRESETS if p.key == key)
        changes: dict[str, Any] = {"type_k": preset.type_k, "type_v": preset.type_v}
        if preset.type_v not in ("f16", "f32", "bf16") and \
                self.settings.flash_attn is FlashAttn.OFF:
            changes["flash_attn"] = FlashAttn.AUTO
        if preset.n_ctx is not None:
            changes["n_ctx"] = preset.n_ctx
        else:
            trial = self.settings.replace(**changes)
            best = self.max_context_for(trial)
            if best is None:
                changes["n_ctx"] = self.model.n_ctx_train if self.model else 32768
            elif best <= 0:
                self.message.emit(f"{preset.title}: nothing fits, even at 256 tokens")
                changes["n_ctx"] = MIN_CTX
            else:
                cap = self.model.n_ctx_train if self.model and self.model.n_ctx_train else best
                changes["n_ctx"] = max(MIN_CTX, min(best, cap))
        self.update_settings(**changes)
        self.message.emit(f"Preset: {preset.title} — {preset.blurb}")

    # --- hardware ----------------------------------------------------------------------
    def set_hardware_choice(self, choice: HardwareChoice) -> None:
        self.config.hardware = choice
        gpu = self.hardware.catalog_gpu
        if choice.catalog_name and (gpu is None or gpu.name != choice.catalog_name):
            self.hardware.catalog_gpu = catalog_gpu(choice.catalog_name)
            if self.hardware.catalog_gpu is None and choice.mode == HW_CATALOG:
                self.message.emit(f"No catalog GPU matches {choice.catalog_name!r} (try "
                                  "RTX 4060, RX 7900 XTX or M2 Max 64 GB)")
        self._replan()

    def set_hardware_state(self, state: HardwareState) -> None:
        self.hardware = state
        self._replan()

    def update_in_use(self, in_use: Sequence[int | None]) -> None:
        """Live poll: what other processes hold on each detected GPU now."""
        changed = False
        gpus = list(self.hardware.detected)
        for i, used in enumerate(in_use):
            if used is None or i >= len(gpus):
                continue
            if abs(gpus[i].in_use - used) >= 1024 * 1024:  # ignore sub-MiB jitter
                gpus[i] = GpuSource(gpus[i].name, gpus[i].total, used, True)
                changed = True
        if changed:
            self.hardware.detected = gpus
            self._replan()

    def _make_plan(self) -> Plan:
        hw = self.hardware
        return make_plan(self.config.hardware, hw.detected, hw.catalog_gpu, hw.ram_available)

    def _replan(self) -> None:
        plan = self._make_plan()
        if plan == self.plan:
            return
        self.plan = plan
        self.planChanged.emit(plan)
        self.recompute(full=True)

    # --- computing ---------------------------------------------------------------------
    def recompute(self, full: bool = False) -> None:
        """Schedule an update; ``full`` also refreshes curves and fits (not per step)."""
        self._full_pending = self._full_pending or full
        if not self._timer.isActive():
            self._timer.start()

    def flush(self) -> None:
        """Run a scheduled update now (tests and benchmarks)."""
        if self._timer.isActive():
            self._timer.stop()
            self._flush()

    def _flush(self) -> None:
        full, self._full_pending = self._full_pending, False
        if self.ngl_auto and self.model is not None:
            ngl = max_gpu_layers(self.model, self.settings, self.plan.budgets)
            if ngl != self.settings.n_gpu_layers:
                self.settings = self.settings.replace(n_gpu_layers=ngl)
                self.settingsChanged.emit(self.settings)
                full = True
        if full:
            self.curves = self._compute_curves()
            self.curvesReady.emit(self.curves)
        self.snapshot = self._compute_snapshot()
        self.snapshotReady.emit(self.snapshot)

    def _key(self) -> tuple:
        s = self.settings.replace(n_ctx=N_CTX_PAD, type_k="f16", type_v="f16")
        gpus = [v.name for v in self.plan.views if v.is_gpu]
        # a single GPU's usage does not depend on its budget; a split across GPUs does
        budgets = tuple(v.budget for v in self.plan.views) if len(gpus) > 1 else ()
        return (id(self.model), s, tuple(gpus), budgets, self.ctx_max())

    def ctx_max(self) -> int:
        trained = self.model.n_ctx_train if self.model else 0
        return max(2 * trained, 8192, self.settings.n_ctx)

    def curve_max(self, fits: dict[tuple[str, str], int | None]) -> int:
        """The plot's context range: the slider's, stretched (to a power of two, so budget
        jitter rarely changes it) until every cache type's stopping point is on it."""
        want = max([self.ctx_max()] + [int(m * 1.15) for m in fits.values() if m])
        return min(1 << (want - 1).bit_length(), 1 << 20) if want > self.ctx_max() else want

    def pair_settings(self, type_k: str, type_v: str, base: Settings | None = None) -> Settings:
        s = base or self.settings
        changes: dict[str, Any] = {"type_k": type_k, "type_v": type_v}
        # a quantized V needs flash attention: compare the pairs as llama.cpp would run them
        if s.flash_attn is FlashAttn.OFF and type_v not in ("f16", "f32", "bf16"):
            changes["flash_attn"] = FlashAttn.AUTO
        return s.replace(**changes)

    def max_context_for(self, settings: Settings) -> int | None:
        if self.model is None:
            return None
        budgets = self.plan.budgets
        if not any(b.budget is not None for b in budgets):
            return None
        return max_context(self.model, settings, budgets)

    def _fits_by_pair(self) -> dict[tuple[str, str], int | None]:
        key = (self._key(), tuple(v.budget for v in self.plan.views))
        hit = self._fit_cache.get(key)
        if hit is None:
            hit = {pair: self.max_context_for(self.pair_settings(*pair))
                   for pair in self.pairs()}
            self._fit_cache = {key: hit}
        return hit

    def pairs(self) -> tuple[tuple[str, str], ...]:
        cur = (self.settings.type_k, self.settings.type_v)
        return COMMON_CACHE_PAIRS if cur in COMMON_CACHE_PAIRS else (*COMMON_CACHE_PAIRS, cur)

    def _compute_curves(self) -> Curves:
        plan = self.plan
        primary = plan.primary
        fits = self._fits_by_pair()
        cur = (self.settings.type_k, self.settings.type_v)
        if self.model is None:
            return Curves((), {}, primary.budget, fits, primary.name, cur)
        hi = self.curve_max(fits)
        key = (self._key(), hi)
        cached = self._curve_cache.get(key)
        if cached is None:
            n = CURVE_POINTS
            xs = sorted({snap(MIN_CTX + (hi - MIN_CTX) * i // (n - 1)) for i in range(n)})
            ys: dict[tuple[str, str], tuple[int, ...]] = {}
            budgets = plan.budgets
            for pair in self.pairs():
                base = self.pair_settings(*pair)
                row: list[int] = []
                for x in xs:
                    est = estimate(self.model, base.replace(n_ctx=x), budgets)
                    row.append(est.devices[0].total if not est.errors else -1)
                ys[pair] = tuple(row)
            cached = (tuple(xs), ys)
            self._curve_cache = {key: cached}
        xs_t, ys_d = cached
        return Curves(xs_t, ys_d, primary.budget, fits, primary.name, cur)

    def _compute_snapshot(self) -> Snapshot:
        plan = self.plan
        s = self.settings
        if self.model is None:
            return Snapshot(s.n_ctx, None, (), (), plan)
        budgets = plan.budgets
        est = estimate(self.model, s, budgets)
        rows = tuple(rows_from_estimate(est, plan.views))
        fits = self._fits_by_pair()
        compare: list[CompareRow] = []
        cur = (s.type_k, s.type_v)
        for pair in self.pairs():
            pe = est if pair == cur else estimate(self.model, self.pair_settings(*pair), budgets)
            prow = rows_from_estimate(pe, plan.views)
            compare.append(CompareRow(
                pair[0], pair[1], None if pe.errors else (prow[0] if prow else None),
                pe.total, fits.get(pair), quality_note(*pair), pair == cur,
                pe.errors[0] if pe.errors else ""))
        return Snapshot(s.n_ctx, est, rows, tuple(compare), plan)

    # --- words -------------------------------------------------------------------------
    def headline(self) -> tuple[str, str, str]:
        """(verdict, detail, state) for the big label; state is ok / over / error / none."""
        snap_ = self.snapshot
        if snap_ is None or snap_.estimate is None:
            return ("Open a model to begin", "or pick one from the catalog", "none")
        est = snap_.estimate
        if est.errors:
            return ("llama.cpp would refuse these settings", est.errors[0], "error")
        over = [r for r in snap_.rows if r.over]
        main = snap_.rows[0] if snap_.rows else None
        if over:
            r = over[0]
            return (f"Over budget by {format_bytes(r.over)}",
                    f"{r.label}: needs {format_bytes(r.used)}, budget {format_bytes(r.budget or 0)}"
                    " — lower the context, quantize the cache, or offload fewer layers", "over")
        if main is None or main.budget is None:
            return (f"Needs {format_bytes(est.total)}", "no budget to check against", "none")
        return (f"Fits — {format_bytes(main.headroom)} to spare",
                f"{main.label}: {format_bytes(main.used)} of {format_bytes(main.budget)} budget "
                f"({format_bytes(main.capacity or 0)} less {format_bytes(main.reserve)} "
                "reserve)", "ok")


def catalog_gpu(name: str) -> GpuSource | None:
    """The catalog GPU ``name`` names (kvgui.core.devices.gpu_catalog), or None."""
    try:
        from kvgui.core.devices.gpu_catalog import find_gpu

        g = find_gpu(name)
    except Exception:  # a missing or broken catalog only disables this choice
        return None
    return None if g is None else GpuSource(g.name, g.memory)


def one_line(error: object) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
