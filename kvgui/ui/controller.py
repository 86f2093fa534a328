"""The window's state and every rule it applies; widgets only draw what it emits.

It owns the model, the one Settings object, the GPU-layers mode, the hardware choice and its
plan, and asks the Qt-free core for everything else: the estimate and llama.cpp's findings
(kvgui.core.memory), the budgets (kvgui.core.devices.budget.plan_hardware, the same planner
the CLI uses), the longest contexts (kvgui.core.memory.fit). It never reads the wording of a
message: refusals are matched by code and fixed by the change they carry.

A slider step is cheap and coalesced: ``set_n_ctx`` records the context and the work runs
once when the event loop is next idle (``_flush``), which emits one Snapshot. What does not
change with the context is cached: the memory-vs-context curves and the longest fitting
context per pair. Settings changed from elsewhere (a preset, an import, a fix) are announced
with ``settingsChanged``; a slider step is not echoed back to the slider.
Model files are read in a worker thread, so a slow disk never freezes the window.

Quality: the controller holds the measured run for the current model file, flash-attention
choice and measure text (from the measure cache, or handed over by the Measure window), and
the user's quality threshold (app config). Every quality rule the window applies is here:
each table row's note (measured on this model, else published with its source), the advice
line, the presets' pick (the cheapest measured pair within the threshold; the published
default, said to be unmeasured, when nothing is measured), the Measure window's recommended
pair. A run of another model file is refused, never mixed in.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from PySide6.QtCore import QObject, QTimer, Signal

from kvgui.core.commandline.parse import ParsedCommand
from kvgui.core.config.appconfig import AppConfig
from kvgui.core.config.settings import ALL_LAYERS, N_CTX_PAD, Settings
from kvgui.core.devices.budget import (
    HW_DETECTED,
    BudgetPlan,
    HardwareChoice,
    plan_hardware,
)
from kvgui.core.devices.hardware.cpu import HostCpu
from kvgui.core.devices.hardware.rpc import RpcServerInfo
from kvgui.core.devices.hardware.types import GpuInfo
from kvgui.core.errors import UsageError
from kvgui.core.gguf.ggml_types import CACHE_TYPE_NAMES
from kvgui.core.memory.estimate import Estimate, Verdict, estimate, refusals_of
from kvgui.core.memory.findings import Finding, first_fix
from kvgui.core.memory.fit import COMMON_CACHE_PAIRS, kv_room, max_context, max_gpu_layers
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.memory.planner import Choice, Plan, predict_speed
from kvgui.core.memory.planner import plan as run_planner
from kvgui.core.model.info import ModelInfo
from kvgui.core.quality.advice import QualityThreshold, cheapest_within, describe_choice
from kvgui.core.quality.notes import QualityNote, note_for
from kvgui.core.quality.results import (
    MeasureRun,
    ModelIdentity,
    PairResult,
    TextInfo,
    find_cached,
    measurement_settings,
    pair_label,
    recommend,
)
from kvgui.core.sizes import format_bytes, format_tokens
from kvgui.ui.viewmodel import (
    MIN_CTX,
    NGL_ALL,
    NGL_AUTO,
    NGL_N,
    ChoiceView,
    CompareRow,
    ContextLimit,
    ControlsState,
    Curves,
    Headline,
    PlanView,
    QualityAdvice,
    Snapshot,
    placement_text,
    rows_from_estimate,
    snap,
)

log = logging.getLogger(__name__)

CURVE_POINTS = 64
CATALOG_PREFIX = "catalog:"  # a model_source that is a catalog entry, not a file
PLAN_IDLE_MS = 150  # the planner judges its choices once the controls rest this long


@dataclass(frozen=True)
class Preset:
    key: str
    title: str
    type_k: str
    type_v: str
    n_ctx: int | None  # None = as long as fits
    blurb: str


    # "reference": always these types; "threshold": the cheapest measured pair within the
    # user's quality threshold, these types (the published default) when nothing is measured
    quality: str = "reference"


PRESETS: tuple[Preset, ...] = (
    Preset("chat", "Short chat", "f16", "f16", 16384,
           "f16 cache, 16K context: full quality for everyday chat"),
    Preset("docs", "Long documents", "q8_0", "q8_0", 32768,
           "32K context for long documents, the cheapest cache within your quality threshold",
           "threshold"),
    Preset("rag", "Heavy RAG", "q4_0", "q4_0", None,
           "as long a context as fits, the cheapest cache within your quality threshold: the "
           "most retrieved text in memory", "threshold"),
)


@dataclass
class HardwareState:
    """Detected GPUs (with live free memory), the host RAM available, and why not more."""

    detected: tuple[GpuInfo, ...] = ()
    ram_available: int | None = None
    reasons: tuple[str, ...] = ()
    advice: tuple[str, ...] = ()
    host_cpu: HostCpu | None = None  # the installed llama.cpp's CPU backend (its buffers)
    host_bandwidth: float = 0.0  # the host RAM's measured bandwidth, bytes/s (0: unknown)
    # what each RPC server answered (devices/hardware/rpc.py), by endpoint
    rpc_info: dict[str, RpcServerInfo] = field(default_factory=dict)


@dataclass
class _Caches:
    """What the controller keeps per model: the estimate's memo, the curves and fits."""

    memo: ModelMemo
    curves: dict[Any, tuple[tuple[int, ...], dict[tuple[str, str], tuple[int, ...]]]] = field(
        default_factory=dict)
    fits: dict[Any, dict[tuple[str, str], int | None]] = field(default_factory=dict)


def table_pairs(settings: Settings, measured: MeasureRun | None
                ) -> tuple[tuple[str, str], ...]:
    """The table's rows: the common pairs, every pair measured on this model (a sweep's
    mixed pairs), and the current one."""
    out = list(COMMON_CACHE_PAIRS)
    if measured is not None:
        out += [r.pair for r in measured.results if r.pair not in out]
    cur = (settings.type_k, settings.type_v)
    if cur not in out:
        out.append(cur)
    return tuple(out)


def plan_table(model: ModelInfo, settings: Settings, devices: Any,
               pairs: Sequence[tuple[str, str]], memo: ModelMemo, auto: bool) -> Plan:
    """The fastest placement of each table pair at this context, the fastest of them and
    the longest context (planner.py). Under auto the current pair's choice is run, so it is
    made exact; the others are the search's (a click on one is then estimated like any
    setting)."""
    cur = (settings.type_k, settings.type_v)
    return run_planner(model, settings, devices, pairs=pairs, memo=memo, verify=False,
                       verify_pairs=(cur,) if auto else ())


def type_refusals_of(model: ModelInfo, settings: Settings, devices: Any, memo: ModelMemo
                     ) -> tuple[dict[str, str], dict[str, str]]:
    """For each K (then V) type: why llama.cpp would refuse it with the other settings as
    they are — only what that choice adds, not the other half's own refusal."""
    out: tuple[dict[str, str], dict[str, str]] = ({}, {})
    for i, name in enumerate(("type_k", "type_v")):
        for t in CACHE_TYPE_NAMES:
            trial = settings.replace(**{name: t})
            base = {f.code for f in refusals_of(model, trial.replace(**{name: "f16"}),
                                                devices, memo)}
            own = [f for f in refusals_of(model, trial, devices, memo) if f.code not in base]
            if own:
                out[i][t] = own[0].message
    return out


class Controller(QObject):
    modelChanged = Signal(object)  # ModelInfo | None
    settingsChanged = Signal(object)  # Settings, changed by anything but the slider
    controlsChanged = Signal(object)  # ControlsState
    planChanged = Signal(object)  # BudgetPlan
    snapshotReady = Signal(object)  # Snapshot
    curvesReady = Signal(object)  # Curves
    loadingChanged = Signal(bool)
    loadFailed = Signal(str, str)  # source, one-line reason
    message = Signal(str)
    choicesReady = Signal(object)  # PlanView: the planner's choices
    _loaded = Signal(int, object, object, str)  # token, ModelInfo | None, memo | error, source
    _rpc_answered = Signal(object, object, str)  # HardwareChoice, {endpoint: info}, error

    def __init__(self, config: AppConfig | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.config = config or AppConfig()
        self.model: ModelInfo | None = None
        self.model_source = ""
        self.settings: Settings = self.config.settings
        self.ngl_mode = self.config.ngl_mode
        if self.ngl_mode == NGL_ALL and self.settings.n_gpu_layers != ALL_LAYERS:
            self.ngl_mode = NGL_N
        self.hardware = HardwareState()
        self.plan: BudgetPlan = self._make_plan(self.config.hardware) or plan_hardware(
            HardwareChoice(cpu_only=True))
        self.snapshot: Snapshot | None = None
        self.curves: Curves | None = None
        self._caches = _Caches(ModelMemo(None))
        self._full_pending = False
        self._controls_pending = True
        self._load_token = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._flush)
        # The planner's choices (the PLAN card) are judged once the slider rests: a full
        # search costs ~20 ms, more than a frame, and a drag would pay it on every step.
        # Under auto the current pair's placement is the settings, so it is judged at once.
        self._plan_timer = QTimer(self)
        self._plan_timer.setSingleShot(True)
        self._plan_timer.setInterval(PLAN_IDLE_MS)
        self._plan_timer.timeout.connect(self._replan)
        self._loaded.connect(self._on_loaded)
        self.threshold: QualityThreshold = self.config.quality_threshold
        self.measured: MeasureRun | None = None
        self._measured_key: tuple[Any, ...] | None = None
        self.planned: Plan | None = None  # the planner's last answer
        self.plan_view = PlanView(())
        # each table row's predicted speed: while the slider moves, the last one judged (it
        # is redone with the plan once the controls rest; under auto, at every step)
        self._speeds: dict[tuple[str, str], tuple[str, str]] = {}
        self._speeds_now = False
        self._rpc_answered.connect(self._on_rpc_answered)

    # --- model -------------------------------------------------------------------------
    def set_model(self, model: ModelInfo | None, source: str = "",
                  memo: ModelMemo | None = None) -> None:
        """``memo``: the model's estimate memo when it was already filled (open_header's
        thread warms it); else a new one."""
        self.model = model
        self.model_source = source
        self.planned = None  # the previous model's choices (re-judged once the window rests)
        self.plan_view = PlanView(())
        self._speeds = {}
        self._caches = _Caches(memo if memo is not None and memo.model is model
                               else ModelMemo(model))
        self._measured_key = None
        self.refresh_measured()
        if model is not None and self.ngl_mode == NGL_N and \
                self.settings.n_gpu_layers >= len(model.layers) + 1:
            # "40 layers" of a 19-layer model is every layer: say so, and export it so
            self.ngl_mode = NGL_ALL
            self.settings = self.settings.replace(n_gpu_layers=ALL_LAYERS)
            self.settingsChanged.emit(self.settings)
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
        # what the first update will be asked for, read here on the GUI thread (the new
        # model's measurements are not known yet: its table starts with the common pairs)
        settings, devices, auto = self.settings, self.plan.devices(), self.ngl_mode == NGL_AUTO

        def work() -> None:
            try:
                model = load()
            except Exception as exc:  # every failure becomes one line in the window
                log.info("could not open %s: %s", source, exc, exc_info=True)
                self._loaded.emit(token, None, exc, source)
                return
            memo = ModelMemo(model)
            if token == self._load_token:  # not superseded by a newer open
                memo = self._warm_memo(model, settings, devices, auto)
            self._loaded.emit(token, model, memo, source)

        threading.Thread(target=work, name="kvgui-open", daemon=True).start()

    @staticmethod
    def _warm_memo(model: ModelInfo, settings: Settings, devices: Any,
                   auto: bool) -> ModelMemo:
        """A model's first update replays llama.cpp's graph for each representative
        placement and each cache-type class (a 48-layer MoE: 2-3 s here): the plan, each
        type's refusals, each pair's "fits up to". The open thread makes the same calls
        (plan_table, type_refusals_of, max_context) into a memo that then goes to the GUI
        thread with the model and is used there only, so the GUI thread's first update finds
        them. A failure here is the first update's to report: then a fresh memo."""
        memo = ModelMemo(model)
        pairs = table_pairs(settings, None)
        try:
            planned = plan_table(model, settings, devices, pairs, memo, auto)
            chosen = planned.for_pair((settings.type_k, settings.type_v)) if auto else None
            placed = chosen.placement.apply(settings, len(model.layers)) if chosen else settings
            type_refusals_of(model, placed, devices, memo)
            if any(d.budget is not None for d in devices):  # as limit_for asks
                for k, v in pairs:
                    max_context(model, placed.replace(type_k=k, type_v=v), devices, memo=memo)
        except Exception:
            log.info("warming the plan of %s failed; the window plans it", model.name,
                     exc_info=True)
            return ModelMemo(model)
        return memo

    def _on_loaded(self, token: int, model: ModelInfo | None, result: object,
                   source: str) -> None:
        """``result``: the warmed ModelMemo, or the error when ``model`` is None."""
        if token != self._load_token:
            return  # a newer open superseded this one
        self.loadingChanged.emit(False)
        if model is None:
            self.loadFailed.emit(source, one_line(result))
            return
        # a split model opened from any part is the model of its first part (what llama.cpp
        # is given, and what the recent list keeps)
        path = model.path
        keep = source.startswith(("catalog:", "hf:"))  # a Hub model keeps its -hf name
        self.set_model(model, path if path and not keep else source,
                       result if isinstance(result, ModelMemo) else None)

    # --- settings ----------------------------------------------------------------------
    def update_settings(self, **changes: Any) -> bool:
        """Apply ``changes``; False (and a message) when Settings rejects them."""
        if "n_ctx" in changes:
            changes["n_ctx"] = snap(int(changes["n_ctx"]))
        try:
            new = self.settings.replace(**changes)
        except (ValueError, TypeError) as exc:
            self.message.emit(one_line(exc))
            return False
        if new == self.settings:
            return True
        self.settings = new
        self.refresh_measured()  # cheap unless flash attention changed
        self.settingsChanged.emit(new)
        self.recompute(full=True)
        return True

    # --- quality -----------------------------------------------------------------------
    def model_identity(self) -> ModelIdentity | None:
        """The current model as a file (measurements are per file), or None (a catalog
        model, no model, or a file that is gone)."""
        src = self.model_source
        if not src or src.startswith(CATALOG_PREFIX):
            return None
        try:
            return ModelIdentity.of(src)
        except OSError:
            return None

    def measure_text_sha(self) -> str | None:
        """The hash of the text measurements are looked up for (the config's, or the
        sample); None when that file cannot be read (then any text's run is shown)."""
        from kvgui.runtime.measure import read_text_file, sample_text

        path = self.config.measure_text
        try:
            text = read_text_file(path) if path else sample_text()
        except OSError:
            log.info("measure text %s unreadable; showing any text's measurement", path)
            return None
        return TextInfo.of(text, path or "sample").sha256

    def refresh_measured(self) -> None:
        """Look the current model file's measurement up in the cache (when the model, the
        flash-attention choice or the measure text changed)."""
        ident = self.model_identity()
        fa = measurement_settings(self.settings).flash_attn
        key = (ident, fa, self.config.measure_text)
        if key == self._measured_key:
            return
        self._measured_key = key
        run = None
        if ident is not None:
            try:
                run = find_cached(ident, self.settings, self.measure_text_sha())
            except OSError:
                log.info("measure cache unreadable", exc_info=True)
        self.measured = run
        self.recompute()

    def set_measured(self, run: MeasureRun) -> bool:
        """A run the Measure window finished: used if it is of the current model file (and
        settings), refused (False, and a message) otherwise: runs are never mixed."""
        ident = self.model_identity()
        if ident is None or run.model != ident:
            self.message.emit(f"Measurement of {run.model.path} kept in the cache, not shown: "
                              "it is not the model open here")
            return False
        if run.settings.flash_attn != measurement_settings(self.settings).flash_attn:
            self.message.emit("Measurement kept in the cache, not shown: it was measured with "
                              f"flash attention {run.settings.flash_attn.value}")
            return False
        self.measured = run
        self.recompute(full=True)
        return True

    def set_measure_text(self, path: str) -> None:
        self.config.measure_text = path
        self.refresh_measured()

    def set_quality_threshold(self, threshold: QualityThreshold) -> None:
        if threshold == self.threshold:
            return
        self.threshold = threshold
        self.config.quality_threshold = threshold
        self.recompute(full=True)

    def note_for(self, type_k: str, type_v: str) -> QualityNote:
        """A table row's note: measured on this model, else published (with its source)."""
        arch = self.model.arch if self.model else ""
        return note_for(type_k, type_v, self.measured, arch, self.threshold)

    def kv_cost(self) -> Callable[[PairResult], int | None] | None:
        """A measured pair's KV bytes at the user's settings (the estimate's), or None."""
        model, settings, memo = self.model, self.settings, self._caches.memo
        if model is None:
            return None
        return lambda r: estimate(model, settings.replace(type_k=r.type_k, type_v=r.type_v),
                                  None, memo).kv

    def quality_pick(self) -> PairResult | None:
        """The cheapest measured pair within the threshold (None: nothing measured)."""
        run = self.measured
        if run is None or not run.results:
            return None
        return cheapest_within(run.results, self.threshold, self.kv_cost())

    def quality_advice(self) -> QualityAdvice:
        t = self.threshold
        run = self.measured
        pick = self.quality_pick()
        if run is None or pick is None:
            return QualityAdvice(
                f"Not measured on this model: the notes are published figures for other "
                f"models. Measure (Ctrl+M) to see what this one loses; your threshold is "
                f"{t.text}.",
                "Published: llama.cpp PRs #6183, #7412, #7527 (LLaMA-2-7B) and, where one "
                "exists for this architecture, a newer model's (hover a note for its source)",
                False, t.text)
        e = run.evaluation
        others = [r for r in run.results if r.pair != pick.pair]
        outside = [r.label for r in others if not t.accepts(r)]
        text = (f"Measured on this model ({e.tokens} tokens): the cheapest cache within "
                f"{t.text} is {describe_choice(pick, t)}")
        if outside:
            text += f"; outside: {', '.join(outside)}"
        detail = (f"{len(run.results)} types measured on {run.model.path} with "
                  f"{run.text.name}, {e.windows} windows of {e.window} tokens, "
                  f"{run.created}. The presets and this advice use your threshold; change it "
                  "beside this line.")
        return QualityAdvice(text, detail, True, t.text, pick.pair)

    def preset_pair(self, preset: Preset) -> tuple[tuple[str, str], str]:
        """The pair a preset uses and why (one sentence for the status line)."""
        default = (preset.type_k, preset.type_v)
        if preset.quality != "threshold":
            return default, preset.blurb
        pick = self.quality_pick()
        if pick is None:
            return default, (f"{preset_blurb_unmeasured(preset)} — not measured on this "
                             "model: the published default; Measure to check it")
        return pick.pair, (f"{preset.blurb}: {describe_choice(pick, self.threshold)}, "
                           "measured on this model")

    def measure_recommendation(self, run: MeasureRun) -> tuple[str, str] | None:
        """The Measure window's recommended pair: the most faithful measured pair whose KV
        cache (at the user's settings) fits the KV room on the main device."""
        budget = self.measure_budget()
        if budget is None:
            return None
        room, kv_of = budget
        r = recommend(run.results, room, lambda p: kv_of(p.type_k, p.type_v))
        return r.pair if r else None

    def set_n_ctx(self, n_ctx: int) -> None:
        """One slider step: cheap, coalesced with any other step before the next repaint,
        and not announced back to the slider."""
        n = snap(int(n_ctx))
        if n == self.settings.n_ctx:
            return
        self.settings = self.settings.replace(n_ctx=n)
        self.recompute()

    def set_ngl_mode(self, mode: str) -> None:
        """GPU layers: every one, the most that fit (recomputed as settings change), or a
        number (starting from what the current mode resolves to)."""
        if mode not in (NGL_ALL, NGL_AUTO, NGL_N):
            raise ValueError(f"unknown GPU-layers mode {mode!r}")
        self.ngl_mode = mode
        if mode == NGL_ALL:
            self.update_settings(n_gpu_layers=ALL_LAYERS)
        elif mode == NGL_N:
            est = self.snapshot.estimate if self.snapshot else None
            self.update_settings(n_gpu_layers=est.n_gpu_layers if est else ALL_LAYERS)
        self.recompute(full=True)

    def set_gpu_layers(self, n: int) -> None:
        self.ngl_mode = NGL_N
        self.update_settings(n_gpu_layers=n)
        self.recompute(full=True)

    def choose_pair(self, type_k: str, type_v: str) -> None:
        """Use a K/V pair (a click in the table), with the change llama.cpp needs to accept
        it (e.g. flash attention back on for a quantized V)."""
        changes: dict[str, Any] = {"type_k": type_k, "type_v": type_v}
        if self.model is not None:
            trial = self.settings.replace(**changes)
            fix = first_fix(self.refusals_for(trial))
            if fix and set(fix) - {"type_k", "type_v"}:  # never undo the choice itself
                changes.update({k: v for k, v in fix.items() if k not in changes})
        self.update_settings(**changes)

    def fix(self) -> None:
        """Make the one change that lets llama.cpp accept the settings."""
        if self.model is None:
            return
        fix = first_fix(self.refusals_for(self.settings))
        if fix:
            self.update_settings(**fix)

    def refusals_for(self, settings: Settings) -> tuple[Finding, ...]:
        """What llama.cpp would refuse of ``settings`` on the current plan: the estimate's
        refusals without its compute buffers (cheap for any placement)."""
        if self.model is None:
            return ()
        return refusals_of(self.model, settings, self.plan.devices(), self._caches.memo)

    def findings_for(self, settings: Settings) -> tuple[Finding, ...]:
        """What the estimate says of ``settings`` on the current plan (the model's rules, the
        build's and the host's): the one source of refusals and their fixes."""
        if self.model is None:
            return ()
        return estimate(self.model, settings, self.plan.devices(), self._caches.memo).findings

    def type_refusals(self) -> tuple[dict[str, str], dict[str, str]]:
        """For each K (then V) type: what choosing it would add to llama.cpp's refusals."""
        if self.model is None:
            return {}, {}
        return type_refusals_of(self.model, self.settings, self.plan.devices(),
                                self._caches.memo)

    def apply_import(self, parsed: ParsedCommand) -> str | None:
        """Every setting an imported command (or a preset) sets; returns the model path it
        names when that is another file that exists (for the window to open)."""
        changes = {name: getattr(parsed.settings, name) for name in parsed.given}
        if parsed.ctx_from_model and self.model is not None and self.model.n_ctx_train:
            changes["n_ctx"] = self.model.n_ctx_train
        if "n_gpu_layers" in changes:
            self.ngl_mode = NGL_ALL if changes["n_gpu_layers"] == ALL_LAYERS else NGL_N
        if not self.update_settings(**changes):
            return None
        kept = self.settings.extra_args
        self.message.emit("Imported; kept and passed on to llama.cpp: " + " ".join(kept)
                          if kept else "Imported the command's settings")
        path = parsed.model_path
        if path and os.path.isfile(path) and (
                not self.model_source or os.path.abspath(path) != os.path.abspath(
                    self.model_source)):
            return path
        return None

    def measure_budget(self) -> tuple[int, Callable[[str, str], int]] | None:
        """The KV cache's room on the main device, and each pair's KV size (measure's
        "fits" column); None without a model or a budget."""
        est = self.snapshot.estimate if self.snapshot else None
        room = kv_room(est) if est is not None else None
        model, settings = self.model, self.settings
        if room is None or model is None:
            return None
        memo = self._caches.memo
        return room, lambda k, v: estimate(model, settings.replace(type_k=k, type_v=v),
                                           None, memo).kv

    def export_model_path(self) -> str:
        """The -m of an export: the file, or a catalog model's usual file name."""
        src = self.model_source
        if src.startswith(CATALOG_PREFIX):
            return src[len(CATALOG_PREFIX):].replace(" ", "-") + ".gguf"
        return src or "model.gguf"

    def apply_preset(self, key: str) -> None:
        preset = next(p for p in PRESETS if p.key == key)
        (type_k, type_v), why = self.preset_pair(preset)
        changes: dict[str, Any] = {"type_k": type_k, "type_v": type_v}
        trial = self.settings.replace(**changes)
        if self.model is not None:
            fix = first_fix(self.refusals_for(trial))
            if fix:
                changes.update(fix)
                trial = trial.replace(**fix)
        if preset.n_ctx is not None:
            changes["n_ctx"] = preset.n_ctx
        else:
            limit = self.limit_for(trial)
            if limit.raw is None:
                changes["n_ctx"] = self.model.n_ctx_train if self.model else 32768
            elif limit.raw <= 0:
                self.message.emit(f"{preset.title}: nothing fits, even at 256 tokens")
                changes["n_ctx"] = MIN_CTX
            else:
                changes["n_ctx"] = max(MIN_CTX, limit.shown or MIN_CTX)
        self.update_settings(**changes)
        self.message.emit(f"Preset: {preset.title} ({pair_label(type_k, type_v)}) — {why}")

    # --- hardware ----------------------------------------------------------------------
    def set_hardware_choice(self, choice: HardwareChoice) -> None:
        try:
            specs = choice.rpc_specs
        except UsageError as exc:
            self.message.emit(one_line(exc))
            return
        unknown = [sp.endpoint for sp in specs
                   if sp.memory is None and sp.endpoint not in self.hardware.rpc_info]
        if unknown:
            self._ask_rpc(choice, unknown)
            return
        plan = self._make_plan(choice)
        if plan is None:
            return  # the message says why; the plan stays as it was
        self.config.hardware = choice
        self._set_plan(plan)

    def _ask_rpc(self, choice: HardwareChoice, endpoints: Sequence[str]) -> None:
        """Ask RPC servers for their memory off the GUI thread (a timeout each), then plan
        with ``choice``; a server that does not answer is one message, the plan unchanged."""
        self.message.emit(f"Asking {', '.join(endpoints)} for its memory…")

        def work() -> None:
            from kvgui.core.devices.hardware.rpc import RpcQueryError, query_server

            found: dict[str, RpcServerInfo] = {}
            try:
                for ep in endpoints:
                    found[ep] = query_server(ep)
            except RpcQueryError as exc:
                self._rpc_answered.emit(choice, found,
                                        f"{exc} (or type its memory: HOST:PORT=24GiB)")
                return
            self._rpc_answered.emit(choice, found, "")

        threading.Thread(target=work, name="kvgui-rpc", daemon=True).start()

    def _on_rpc_answered(self, choice: HardwareChoice, found: dict[str, RpcServerInfo],
                         error: str) -> None:
        self.hardware.rpc_info.update(found)
        if error:
            self.message.emit(error)
            return
        self.set_hardware_choice(choice)

    def set_hardware_state(self, state: HardwareState) -> None:
        self.hardware = state
        plan = self._make_plan(self.config.hardware)
        if plan is not None:
            self._set_plan(plan)

    def update_free(self, free: Sequence[int | None]) -> None:
        """Live poll: free memory on each detected GPU now (sub-MiB jitter ignored)."""
        gpus = list(self.hardware.detected)
        changed = False
        for i, now in enumerate(free):
            before = gpus[i].free if i < len(gpus) else None
            if now is None or before is None:
                continue
            if abs(before - now) >= 1024 * 1024:
                gpus[i] = replace(gpus[i], free=now)
                changed = True
        if changed:
            self.set_hardware_state(replace(self.hardware, detected=tuple(gpus)))

    def _make_plan(self, choice: HardwareChoice) -> BudgetPlan | None:
        hw = self.hardware
        try:
            return plan_hardware(choice, hw.detected, hw.ram_available, self.settings.tensor_split,
                                 host=hw.host_cpu, rpc_servers=hw.rpc_info,
                                 host_bandwidth=hw.host_bandwidth)
        except (UsageError, ValueError) as exc:
            self.message.emit(one_line(exc))
            return None

    def _set_plan(self, plan: BudgetPlan) -> None:
        if plan == self.plan:
            return
        self.plan = plan
        if plan.rpc_servers != self.settings.rpc_servers:  # exported as --rpc
            self.settings = self.settings.replace(rpc_servers=plan.rpc_servers)
            self.settingsChanged.emit(self.settings)
        self.planChanged.emit(plan)
        self.recompute(full=True)

    @property
    def detected_mode(self) -> bool:
        return self.config.hardware.mode == HW_DETECTED

    # --- computing ---------------------------------------------------------------------
    def recompute(self, full: bool = False) -> None:
        """Schedule an update; ``full`` also refreshes curves, fits and the controls."""
        self._full_pending = self._full_pending or full
        if not self._timer.isActive():
            self._timer.start()

    def flush(self) -> None:
        """Run a scheduled update now, the planner's too (tests and benchmarks)."""
        if self._timer.isActive():
            self._timer.stop()
            self._flush()
        self.flush_plan()

    def flush_plan(self) -> None:
        """Judge the planner's choices now if they are waiting for the slider to rest."""
        if self._plan_timer.isActive():
            self._plan_timer.stop()
            self._replan()

    def _replan(self) -> None:
        self.planned = self._run_planner() if self.model is not None else None
        self.plan_view = self._plan_view()
        self.choicesReady.emit(self.plan_view)
        if self.model is not None:  # each row's speed at this context, and its own best
            self._speeds_now = True
            try:
                self.snapshot = self._compute_snapshot()
            finally:
                self._speeds_now = False
            self.snapshotReady.emit(self.snapshot)

    def _flush(self) -> None:
        full, self._full_pending = self._full_pending, False
        controls = full
        if self.model is not None and self.ngl_mode != NGL_AUTO:
            self._plan_timer.start()
        elif self.model is not None:
            self.planned = self._run_planner()
            if self.ngl_mode == NGL_AUTO:
                chosen = self.planned.for_pair((self.settings.type_k, self.settings.type_v))
                if chosen is not None:
                    p = chosen.placement.apply(self.settings, len(self.model.layers))
                    if p != self.settings:
                        self.settings = p
                        controls = True
                else:  # nothing fits: as many layers as the budget would hold at all
                    ngl = max_gpu_layers(self.model, self.settings, self.plan.devices(),
                                         self._caches.memo)
                    if ngl != self.settings.n_gpu_layers:
                        self.settings = self.settings.replace(n_gpu_layers=ngl)
                        controls = True
        else:
            self.planned = None
        if self.model is None or self.ngl_mode == NGL_AUTO:
            self.plan_view = self._plan_view()
            self.choicesReady.emit(self.plan_view)
        if full:
            self.curves = self._compute_curves()
            self.curvesReady.emit(self.curves)
        self.snapshot = self._compute_snapshot()
        self.config.settings = self.settings
        self.config.ngl_mode = self.ngl_mode
        self.snapshotReady.emit(self.snapshot)
        if controls:
            self.controlsChanged.emit(self.controls_state())

    def controls_state(self) -> ControlsState:
        est = self.snapshot.estimate if self.snapshot else None
        refused_k, refused_v = self.type_refusals()
        refused = est.refusals if est else ()
        return ControlsState(
            settings=self.settings, ngl_mode=self.ngl_mode,
            ngl_value=est.n_gpu_layers if est else 0,
            n_layers=len(self.model.layers) + 1 if self.model else 1,
            refused_k=refused_k, refused_v=refused_v,
            refusal="; ".join(f.message for f in refused),
            fixable=any(f.fix for f in refused),
            gpu_names=tuple(g.name for g in self.plan.gpus),
            moe_layers=self.model.n_layer if self.model and self.model.n_expert else 0)

    def _fit_settings(self, s: Settings) -> Settings:
        """The settings "fits up to" searches with: the chosen placement (-ngl,
        --n-cpu-moe, -nkvo as the planner or the user set them), each pair's context
        stretched as far as that placement allows."""
        return s

    def _key(self) -> tuple[Any, ...]:
        s = self._fit_settings(self.settings).replace(n_ctx=N_CTX_PAD, type_k="f16",
                                                      type_v="f16")
        return (s, self.plan, self.ctx_max(), self.pairs())

    def trained(self) -> int:
        return self.model.n_ctx_train if self.model else 0

    def ctx_max(self) -> int:
        """The context range the slider and the plot show: around the trained and the
        current context (a 1M sweep would squeeze 512–64K into a sliver)."""
        trained = self.trained()
        top = max(trained, 8192, self.settings.n_ctx)
        return min(1 << 24, 1 << (int(top * 1.25) - 1).bit_length())

    def limit_for(self, settings: Settings) -> ContextLimit:
        if self.model is None:
            return ContextLimit(None)
        devices = self.plan.devices()
        if not any(b.budget is not None for b in devices):
            return ContextLimit(None, self.trained())
        raw = max_context(self.model, self._fit_settings(settings), devices,
                          memo=self._caches.memo)
        return ContextLimit(raw, self.trained())

    def _pair_settings(self, pair: tuple[str, str]) -> Settings:
        """A table row's settings: the current ones (the chosen placement: the user's, or
        under auto the planner's for the current pair) with the row's cache types."""
        return self.settings.replace(type_k=pair[0], type_v=pair[1])

    def _fits_by_pair(self) -> dict[tuple[str, str], ContextLimit]:
        key = self._key()
        hit = self._caches.fits.get(key)
        if hit is None:
            hit = {pair: self.limit_for(self._pair_settings(pair)).raw for pair in self.pairs()}
            self._caches.fits = {key: hit}
        return {pair: ContextLimit(raw, self.trained()) for pair, raw in hit.items()}

    def pairs(self) -> tuple[tuple[str, str], ...]:
        return table_pairs(self.settings, self.measured)

    def _compute_curves(self) -> Curves:
        plan = self.plan
        primary = plan.primary
        fits = self._fits_by_pair()
        cur = (self.settings.type_k, self.settings.type_v)
        if self.model is None:
            return Curves((), {}, primary.budget, fits, primary.name, cur)
        hi = self.ctx_max()
        key = (self._key(), hi)
        cached = self._caches.curves.get(key)
        devices = plan.devices()
        refused = tuple(p for p in self.pairs()  # as the estimate says (the build, the host)
                        if estimate(self.model, self.settings.replace(type_k=p[0], type_v=p[1]),
                                    devices, self._caches.memo).refused)
        if cached is None:
            n = CURVE_POINTS
            xs = sorted({snap(MIN_CTX + (hi - MIN_CTX) * i // (n - 1)) for i in range(n)})
            ys: dict[tuple[str, str], tuple[int, ...]] = {}
            devices = plan.devices()
            for pair in self.pairs():
                if pair in refused:
                    continue
                base = self.settings.replace(type_k=pair[0], type_v=pair[1])
                ys[pair] = tuple(estimate(self.model, base.replace(n_ctx=x), devices,
                                          self._caches.memo).devices[0].total for x in xs)
            cached = (tuple(xs), ys)
            self._caches.curves = {key: cached}
        xs_t, ys_d = cached
        return Curves(xs_t, ys_d, primary.budget, fits, primary.name, cur, self.trained(),
                      refused)

    def _compute_snapshot(self) -> Snapshot:
        plan = self.plan
        s = self.settings
        if self.model is None:
            return Snapshot(s.n_ctx, None, (), (), plan,
                            Headline("Open a model to begin", "or pick one from the catalog",
                                     "none"))
        devices = plan.devices()
        memo = self._caches.memo
        est = estimate(self.model, s, devices, memo)
        rows = rows_from_estimate(est, plan.views)
        fits = self._fits_by_pair()
        compare: list[CompareRow] = []
        cur = (s.type_k, s.type_v)
        for pair in self.pairs():
            pe = est if pair == cur else estimate(
                self.model, self._pair_settings(pair), devices, memo)
            prow = rows_from_estimate(pe, plan.views)
            main = prow[0] if prow else None
            if self._speeds_now or self.ngl_mode == NGL_AUTO or pair not in self._speeds:
                self._speeds[pair] = self._speed_cell(pair, pe)
            speed, speed_tip = self._speeds[pair]
            compare.append(CompareRow(
                pair[0], pair[1], None if pe.refused else main,
                main.used if main else pe.total, fits.get(pair, ContextLimit(None)),
                self.note_for(*pair), pair == cur, pe.errors[0] if pe.errors else "",
                pe.total, speed, speed_tip))
        return Snapshot(s.n_ctx, est, rows, tuple(compare), plan, _headline(est, rows, plan),
                        self.quality_advice())

    # --- the planner ---------------------------------------------------------------
    def _run_planner(self) -> Plan:
        """The fastest placement of each table pair at this context, the fastest of them
        and the longest context (planner.py); the current pair's choice is exact."""
        assert self.model is not None
        return plan_table(self.model, self.settings, self.plan.devices(), self.pairs(),
                          self._caches.memo, self.ngl_mode == NGL_AUTO)

    def _speed_cell(self, pair: tuple[str, str], est: Estimate) -> tuple[str, str]:
        """A table row's predicted speed under the chosen placement (when it fits), and in
        the tooltip the pair's own fastest placement where that differs."""
        m = self.model
        if m is None or est.refused:
            return "", ""
        if est.fits is False:
            return "", "does not fit with this placement"
        s = est.settings
        sp = predict_speed(m, s, self.plan.devices(), self._caches.memo)
        where = placement_text(s.n_gpu_layers, len(m.layers) + 1, s.n_cpu_moe,
                               sum(layer.experts for layer in m.layers), s.kv_offload)
        tip = f"Predicted decode speed {sp.text} with {where}"
        c = self.planned.for_pair(pair) if self.planned is not None else None
        if c is not None and c.placement.apply(s, len(m.layers)) != s:
            tip += (f"; its fastest placement here, {c.placement.describe(len(m.layers))}: "
                    f"{c.speed.text}")
        return f"{sp.tokens_per_s:.0f} t/s" if sp.tokens_per_s >= 10 else \
            f"{sp.tokens_per_s:.1f} t/s", tip + "<br>" + _speed_detail(sp)

    def _choice_view(self, title: str, c: Choice) -> ChoiceView:
        m = self.model
        assert m is not None
        s = c.settings
        n_moe = sum(layer.experts for layer in m.layers)
        where = placement_text(s.n_gpu_layers, len(m.layers) + 1, s.n_cpu_moe, n_moe,
                               s.kv_offload)
        pair = pair_label(s.type_k, s.type_v)
        summary = f"{pair} · {format_tokens(s.n_ctx)} · {where}"
        mem = ", ".join(f"{d.name} {format_bytes(r)}"
                        for d, r in zip(self.plan.views, c.required, strict=False))
        detail = (f"<b>{pair}, {format_tokens(s.n_ctx)}: {c.placement.describe(len(m.layers))}"
                  f"</b><br>needs {mem}<br>" + _speed_detail(c.speed))
        changes: dict[str, object] = {
            "n_ctx": s.n_ctx, "type_k": s.type_k, "type_v": s.type_v,
            "n_gpu_layers": s.n_gpu_layers, "n_cpu_moe": s.n_cpu_moe,
            "kv_offload": s.kv_offload}
        cur = self.settings
        current = all(getattr(cur, k) == v for k, v in changes.items())
        return ChoiceView(title, summary, c.speed.text, detail, changes, current)

    def _plan_view(self) -> PlanView:
        p = self.planned
        if self.model is None or p is None:
            return PlanView((), "")
        if not any(d.budget is not None for d in self.plan.devices()):
            return PlanView((), "no budget to plan for")
        cur = (self.settings.type_k, self.settings.type_v)
        out: list[ChoiceView] = []
        mine = p.for_pair(cur)
        if mine is not None:
            title = "Auto: this cache, fastest" if self.ngl_mode == NGL_AUTO else \
                "This cache, fastest placement"
            out.append(self._choice_view(title, mine))
        if p.fastest is not None and (mine is None or p.fastest.pair != mine.pair):
            out.append(self._choice_view(f"Fastest at {format_tokens(p.n_ctx)}", p.fastest))
        if p.longest is not None:
            out.append(self._choice_view("Longest context", p.longest))
        note = f"{p.candidates} placements judged in {p.seconds * 1000:.0f} ms"
        if not out:
            note = "nothing fits this budget at this context, with any cache type"
        return PlanView(tuple(out), note)

    def apply_choice(self, index: int) -> None:
        """Use one of the planner's choices (context, cache types, placement)."""
        choices = self.plan_view.choices
        if not 0 <= index < len(choices):
            return
        changes = dict(choices[index].changes)
        if self.ngl_mode == NGL_ALL and changes.get("n_gpu_layers") != ALL_LAYERS:
            self.ngl_mode = NGL_N
        self.update_settings(**changes)

    def headline(self) -> tuple[str, str, str]:
        """(verdict, detail, state) for the big label; state is ok / over / error / none."""
        h = self.snapshot.headline if self.snapshot else Headline(
            "Open a model to begin", "or pick one from the catalog", "none")
        return h.verdict, h.detail, h.state


def _headline(est: Estimate, rows: Sequence[Any], plan: BudgetPlan) -> Headline:
    if est.verdict is Verdict.REFUSED:
        return Headline("llama.cpp would refuse these settings", est.errors[0], "error")
    over = [r for r in rows if r.over]
    if over:
        r = over[0]
        return Headline(
            f"Over budget by {format_bytes(r.over)}",
            f"{r.label}: needs {format_bytes(r.used)}, budget {format_bytes(r.budget or 0)}"
            " — lower the context, quantize the cache, or offload fewer layers", "over")
    main = rows[0] if rows else None
    if main is None or main.budget is None:
        return Headline(f"Needs {format_bytes(est.total)}", "no budget to check against",
                        "none")
    where = "in RAM (CPU only)" if not plan.gpus else ""
    detail = (f"{main.label}: {format_bytes(main.used)} of {format_bytes(main.budget)} budget "
              f"({format_bytes(main.capacity or 0)} less {format_bytes(main.reserve)} reserve)")
    if plan.gpus and est.n_gpu_layers < len(est.model.layers) + 1:
        detail += f" · {est.n_gpu_layers} of {len(est.model.layers) + 1} layers on the GPU"
    return Headline(f"Fits — {format_bytes(main.headroom)} to spare {where}".strip(), detail,
                    "ok")


def _speed_detail(sp: Any) -> str:
    """What a speed prediction is made of, for a tooltip."""
    reads = "; ".join(
        f"{d.name} reads {format_bytes(d.total)} at {d.bandwidth / 1e9:.0f} GB/s"
        + (" (assumed)" if d.assumed else "") for d in sp.devices)
    hops = f"; {sp.hops} moves between devices per token" if sp.hops else ""
    return (f"per token: {reads}{hops}<br>range {sp.text}; assumes: "
            + "; ".join(sp.assumptions))


def preset_blurb_unmeasured(preset: Preset) -> str:
    return f"{pair_label(preset.type_k, preset.type_v)} cache"


def one_line(error: object) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
