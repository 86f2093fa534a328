"""The "Measure" panel: what each KV cache type costs in quality and speed on this model.

It names the model and settings it measures. Pick the types (or Sweep: the K-first ladder to
the cheapest pair within the quality threshold, in the fewest runs) and a text, Run: the
measurement worker (kvgui.runtime.measure, the same as ``kvgui measure``) evaluates the text
once per type with per-phase progress, an ETA and Cancel; results fill a table (speed as
median and spread of the repeats, retrieval passes), a plot of quality loss (mean KL against
the f16 cache) against KV memory with the Pareto front, and a plot of KL by position in the
window. Results are cached per model file + settings + text, so choosing a model that was
measured before shows them at once. A run keeps the model it started with: a model chosen
meanwhile is shown when the run is over, never mixed into it.

The host window calls ``set_model``, ``set_settings``, ``set_threshold``, ``set_recommender``
(the controller's rule for the starred pair), ``set_budget`` (the plot's budget line) and
``shutdown`` on close; it listens to ``runFinished`` and ``textChanged``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import (
    Qt,
    Signal,
)
from PySide6.QtGui import QFont
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from kvgui.core.config.settings import AUTO_THREADS, Settings
from kvgui.core.quality.advice import QualityThreshold
from kvgui.core.quality.results import (
    DEFAULT_PAIRS,
    DEFAULT_WINDOW,
    OFFERED_PAIRS,
    REFERENCE_PAIR,
    MeasureRun,
    PairResult,
    format_speed,
    pair_label,
    pareto_front,
    save_cached,
)
from kvgui.core.sizes import MiB, format_bytes, parse_size
from kvgui.runtime.measure import (
    LONG_SAMPLE_TEXT_NAME,
    SAMPLE_TEXT_NAME,
    MeasureRequest,
    Retrieval,
    cached_run,
    long_sample_text,
    read_text_file,
    sample_text,
)
from kvgui.runtime.qt_measure import MeasureProcess
from kvgui.ui import theme
from kvgui.ui.labels import plain_label
from kvgui.ui.plotstyle import quiet_plot

_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
COLUMNS = ("Type", "PPL", "ΔPPL", "KL mean", "KL p99", "Top-1", "Within", "PP t/s", "TG t/s",
           "KV memory", "Retrieval")
Recommender = Callable[[MeasureRun], "tuple[str, str] | None"]


class KLPlot(pg.PlotWidget):
    """Quality loss (mean KL vs f16, nats/token) against KV memory; Pareto front and pick."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent)
        pi = quiet_plot(self, "quality loss: mean KL vs f16 (nats/token)", "KV cache (MiB)",
                        220)
        self.points = pg.ScatterPlotItem(size=9)
        self.front = pg.PlotDataItem()
        self.pick = pg.ScatterPlotItem(size=18, symbol="star")
        self.budget_line = pg.InfiniteLine(angle=90, movable=False)
        for item in (self.front, self.points, self.pick):
            pi.addItem(item)
        pi.addItem(self.budget_line, ignoreBounds=True)
        self.budget_line.hide()
        self._labels: list[pg.TextItem] = []
        self._muted = "#6b7280"
        self.apply_theme()

    def apply_theme(self) -> None:
        t = theme.current()
        self.setBackground(t.card)
        for name in ("left", "bottom"):
            ax = self.getPlotItem().getAxis(name)
            ax.setPen(pg.mkPen(t.muted))
            ax.setTextPen(pg.mkPen(t.muted))
        self._muted = t.muted.name()
        self.points.setPen(pg.mkPen(None))
        self.points.setBrush(pg.mkBrush(t.kv_k))
        self.front.setPen(pg.mkPen(t.kv_v, width=2, style=Qt.PenStyle.DashLine))
        self.pick.setPen(pg.mkPen(t.text))
        self.pick.setBrush(pg.mkBrush(t.compute))
        self.budget_line.setPen(pg.mkPen(t.over, width=2, style=Qt.PenStyle.DotLine))
        for label in self._labels:
            label.setColor(t.muted)

    def show_results(self, results: list[PairResult], picked: PairResult | None,
                     budget_mib: float | None) -> None:
        for t in self._labels:
            self.getPlotItem().removeItem(t)
        self._labels = []
        pts = [r for r in results if r.kv_bytes is not None and math.isfinite(r.kl_mean)]
        self.points.setData([_mib(r) for r in pts], [r.kl_mean for r in pts])
        for r in pts:
            label = pg.TextItem(r.label, anchor=(0, 1), color=self._muted)
            label.setPos(_mib(r), r.kl_mean)
            self.getPlotItem().addItem(label)
            self._labels.append(label)
        front = pareto_front(pts)
        self.front.setData([_mib(r) for r in front], [r.kl_mean for r in front])
        if picked is not None and picked.kv_bytes is not None:
            self.pick.setData([_mib(picked)], [picked.kl_mean])
        else:
            self.pick.setData([], [])
        if budget_mib is not None:
            self.budget_line.setValue(budget_mib)
            self.budget_line.show()
        else:
            self.budget_line.hide()
        self._fit_range(pts, budget_mib)

    def _fit_range(self, pts: list[PairResult], budget_mib: float | None) -> None:
        """Explicit ranges: KL starts at 0 (f16's own), and a lone point still gets room."""
        xs = [_mib(r) for r in pts] + ([budget_mib] if budget_mib is not None else [])
        ys = [r.kl_mean for r in pts]
        if not xs:
            return
        x0, x1 = min(xs), max(xs)
        pad = (x1 - x0) * 0.12 or max(x1 * 0.25, 1e-3)
        top = max(ys, default=0.0)
        self.setRange(xRange=(max(0.0, x0 - pad), x1 + pad),
                      yRange=(0.0, top * 1.2 if top > 0 else 1e-3), padding=0)

    @property
    def labels(self) -> list[str]:
        return [t.toPlainText() for t in self._labels]


class ProfilePlot(pg.PlotWidget):
    """KL against f16 by position in the window, one line per type: where a long context
    starts to cost."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent)
        self._pi = quiet_plot(self, "mean KL vs f16 by position", "position in the window "
                              "(tokens)", 200)
        self.legend = self._pi.addLegend(offset=(-10, 10))
        self.lines: dict[str, pg.PlotDataItem] = {}
        self.apply_theme()

    def apply_theme(self) -> None:
        t = theme.current()
        self.setBackground(t.card)
        for name in ("left", "bottom"):
            ax = self.getPlotItem().getAxis(name)
            ax.setPen(pg.mkPen(t.muted))
            ax.setTextPen(pg.mkPen(t.muted))

    def show_results(self, results: list[PairResult]) -> None:
        for item in self.lines.values():
            self._pi.removeItem(item)
        self.legend.clear()
        self.lines = {}
        t = theme.current()
        colors = [t.kv_k, t.kv_v, t.compute, t.over, t.accent, t.ok, t.muted]
        rows = [r for r in results if len(r.profile) > 1 and r.pair != REFERENCE_PAIR]
        for i, r in enumerate(rows):
            xs = [(b.start + b.end) / 2 for b in r.profile]
            ys = [b.kl_mean for b in r.profile]
            item = self._pi.plot(xs, ys, pen=pg.mkPen(colors[i % len(colors)], width=2),
                                 symbol="o", symbolSize=5, name=r.label)
            self.lines[r.label] = item
        self.setVisible(bool(rows))


class MeasurePanel(QWidget):
    """Choose types and text, Run/Cancel with progress, results table and KL-vs-memory plot."""

    runFinished = Signal(object)  # the merged (cached) MeasureRun after a run
    textChanged = Signal(str)  # the text file measured ("" = the sample)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model_path: str | None = None
        self.settings = Settings()
        self.run: MeasureRun | None = None
        self.recommended: PairResult | None = None
        self.threshold = QualityThreshold()
        self._recommender: Recommender | None = None
        self._budget: int | None = None
        self._text_path: str | None = None
        self._samples: dict[bool, str] = {}
        self._running: MeasureRequest | None = None  # what the worker is measuring
        self.process = MeasureProcess(self)
        self.process.progress.connect(self._on_progress)
        self.process.result.connect(self._on_result)
        self.process.finished.connect(self._on_finished)
        self.process.failed.connect(self._on_failed)
        self.process.cancelled.connect(self._on_cancelled)
        self._live: list[PairResult] = []
        self._build()
        self._refresh_buttons()

    # -- layout --------------------------------------------------------------------------

    def _build(self) -> None:
        outer = QVBoxLayout(self)
        self.model_label = plain_label("No model: open one in the main window.")
        self.model_label.setObjectName("cardTitle")
        self.model_label.setWordWrap(True)
        self.model_label.setTextFormat(Qt.TextFormat.PlainText)
        self.model_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        outer.addWidget(self.model_label)
        self.settings_label = plain_label()
        self.settings_label.setObjectName("muted")
        self.settings_label.setWordWrap(True)
        outer.addWidget(self.settings_label)
        types_box = QGroupBox("Cache types (K/V) — f16 is always run: it is the reference")
        grid = QGridLayout(types_box)
        self.type_boxes: dict[tuple[str, str], QCheckBox] = {}
        for i, pair in enumerate(OFFERED_PAIRS):
            cb = QCheckBox(pair_label(*pair))
            cb.setChecked(pair in DEFAULT_PAIRS)
            if pair == REFERENCE_PAIR:
                cb.setChecked(True)
                cb.setEnabled(False)
            self.type_boxes[pair] = cb
            grid.addWidget(cb, i // 6, i % 6)
        outer.addWidget(types_box)

        row = QHBoxLayout()
        row.addWidget(QLabel("Text:"))
        self.text_label = QLabel(SAMPLE_TEXT_NAME)
        self.text_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        row.addWidget(self.text_label, 1)
        self.choose_text = QPushButton("Choose file…")
        self.choose_text.clicked.connect(self._choose_text)
        self.use_sample = QPushButton("Use sample")
        self.use_sample.clicked.connect(lambda: self.set_text_file(None))
        row.addWidget(self.choose_text)
        row.addWidget(self.use_sample)
        outer.addLayout(row)

        row = QHBoxLayout()
        row.addWidget(QLabel("Window (tokens):"))
        self.window_spin = QSpinBox()
        self.window_spin.setRange(16, 1 << 20)
        self.window_spin.setValue(DEFAULT_WINDOW)
        self.window_spin.setToolTip("each window is evaluated from an empty cache; its second "
                                    "half is scored (as llama-perplexity does)")
        self.window_spin.valueChanged.connect(lambda _v: self.show_cached())
        row.addWidget(self.window_spin)
        row.addWidget(QLabel("Max windows:"))
        self.windows_spin = QSpinBox()
        self.windows_spin.setRange(0, 100000)
        self.windows_spin.setSpecialValueText("all")
        self.windows_spin.valueChanged.connect(lambda _v: self.show_cached())
        row.addWidget(self.windows_spin)
        row.addWidget(QLabel("KV budget:"))
        self.budget_edit = QLineEdit()
        self.budget_edit.setPlaceholderText("e.g. 2 GiB")
        self.budget_edit.setToolTip("the recommended type is the most faithful one whose KV "
                                    "cache fits this")
        self.budget_edit.editingFinished.connect(self._budget_edited)
        row.addWidget(self.budget_edit)
        row.addStretch(1)
        outer.addLayout(row)

        row = QHBoxLayout()
        self.long_box = QCheckBox("Long context: one window of the whole context, every "
                                  "position scored")
        self.long_box.setToolTip("KL and top-1 by position up to the context (-c): where "
                                 "quantization errors of the cache show; uses the long sample "
                                 "text unless you chose one")
        self.long_box.toggled.connect(self._long_toggled)
        self.retrieval_box = QCheckBox("Retrieval test at the context")
        self.retrieval_box.setToolTip("a secret number hidden at 10%, 50% and 90% of a filler "
                                      "that fills the context, asked for at the end: found or "
                                      "missed per type (seeded: the same every run)")
        self.retrieval_box.toggled.connect(lambda _on: self.show_cached())
        row.addWidget(self.long_box)
        row.addWidget(self.retrieval_box)
        row.addStretch(1)
        self.threshold_label = QLabel()
        self.threshold_label.setObjectName("muted")
        row.addWidget(self.threshold_label)
        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("measure the checked types")
        self.run_button.clicked.connect(self.start)
        self.sweep_button = QPushButton("Sweep")
        self.sweep_button.setToolTip("measure f16, q8_0, q4_0, then bisect the K-first ladder "
                                     "(f16/q8_0, q8_0/q5_0, q8_0/q4_0, q5_0, q5_0/q4_0) to the "
                                     "cheapest pair within the threshold: 3 to 6 runs")
        self.sweep_button.clicked.connect(lambda: self.start(sweep=True))
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.run_button)
        row.addWidget(self.sweep_button)
        row.addWidget(self.cancel_button)
        outer.addLayout(row)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        outer.addWidget(self.progress)
        self.status = plain_label("Choose a model to measure.")
        self.status.setWordWrap(True)
        outer.addWidget(self.status)

        split = QSplitter(Qt.Orientation.Vertical)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        split.addWidget(self.table)
        plots = QSplitter(Qt.Orientation.Horizontal)
        self.plot = KLPlot()
        self.profile_plot = ProfilePlot()
        self.profile_plot.hide()
        plots.addWidget(self.plot)
        plots.addWidget(self.profile_plot)
        split.addWidget(plots)
        outer.addWidget(split, 1)
        self._show_threshold()

    # -- host API ------------------------------------------------------------------------

    def set_model(self, path: str | Path | None) -> None:
        """The model to show and measure next. A run in progress keeps its own model: this
        one's results are shown once that run is over (never mixed into it)."""
        self.model_path = str(path) if path else None
        self._show_model()
        self.show_cached()
        self._refresh_buttons()

    def set_settings(self, settings: Settings) -> None:
        self.settings = settings
        self._window_range()
        self._show_model()
        self.show_cached()

    def set_threshold(self, threshold: QualityThreshold) -> None:
        """The user's quality threshold (the main window's): the Within column and Sweep."""
        self.threshold = threshold
        self._show_threshold()
        self._show(self.run)

    def set_recommender(self, recommender: Recommender | None) -> None:
        """The host's rule for the starred pair (the controller's measure_recommendation)."""
        self._recommender = recommender
        self._show(self.run)

    def set_budget(self, budget: int | None) -> None:
        """The KV room the plot marks (the recommendation itself is the host's rule)."""
        self._budget = budget
        self.budget_edit.setText(format_bytes(budget) if budget is not None else "")
        self._show(self.run)

    def set_text_file(self, path: str | None) -> None:
        self._text_path = path
        self.text_label.setText(path or self._sample_name())
        self.show_cached()
        self.textChanged.emit(path or "")

    def _sample_name(self) -> str:
        return LONG_SAMPLE_TEXT_NAME if self.long_box.isChecked() else SAMPLE_TEXT_NAME

    def _window_range(self) -> None:
        s = self.settings
        n_ctx_seq = s.n_ctx if s.kv_unified else max(16, s.n_ctx // s.n_parallel)
        self.window_spin.setMaximum(n_ctx_seq)  # a window must fit in one sequence's context
        if self.long_box.isChecked():
            self.window_spin.setValue(n_ctx_seq)

    def _long_toggled(self, on: bool) -> None:
        self.window_spin.setEnabled(not on and not self.process.is_running())
        self.windows_spin.setEnabled(not on and not self.process.is_running())
        self._window_range()
        if not on:
            self.window_spin.setValue(min(DEFAULT_WINDOW, self.window_spin.maximum()))
        if not self._text_path:
            self.text_label.setText(self._sample_name())
        self.show_cached()

    def _show_model(self) -> None:
        running = self._running
        if running is not None and running.model != self.model_path:
            self.model_label.setText(
                f"Measuring {Path(running.model).name} (started before "
                f"{Path(self.model_path).name if self.model_path else 'no model'} was chosen): "
                "its results go to its own cache; this model's after the run, or Cancel")
            return
        if not self.model_path:
            self.model_label.setText("No model: open a GGUF file in the main window.")
            self.settings_label.setText("")
            return
        self.model_label.setText(f"Model: {Path(self.model_path).name} — {self.model_path}")
        self.settings_label.setText(describe_settings(self.settings))

    def _show_threshold(self) -> None:
        self.threshold_label.setText(f"Threshold: {self.threshold.text}")
        self.threshold_label.setToolTip("the loss you accept from a quantized cache; set it "
                                        "under the main window's cache-type table")

    def selected_pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(p for p, cb in self.type_boxes.items() if cb.isChecked())

    def set_selected_pairs(self, pairs: tuple[tuple[str, str], ...]) -> None:
        for p, cb in self.type_boxes.items():
            cb.setChecked(p in pairs or p == REFERENCE_PAIR)

    def request(self) -> MeasureRequest | None:
        """The request for the current choices, or None (no model, unreadable text)."""
        if not self.model_path:
            return None
        long = self.long_box.isChecked()
        try:
            if self._text_path:
                text, name = read_text_file(self._text_path), self._text_path
            else:
                if long not in self._samples:
                    self._samples[long] = long_sample_text() if long else sample_text()
                text, name = self._samples[long], self._sample_name()
        except OSError as exc:
            self.status.setText(f"Cannot read {self._text_path}: {exc.strerror or exc}")
            return None
        mw = self.windows_spin.value()
        return MeasureRequest(
            model=self.model_path, settings=self.settings, pairs=self.selected_pairs(),
            text=text, text_name=name, window=self.window_spin.value(),
            max_windows=1 if long else (mw or None), score_from=0 if long else None,
            retrieval=Retrieval() if self.retrieval_box.isChecked() else None,
        )

    def show_cached(self) -> None:
        """Show the cached results for the current model, settings, text and windows."""
        if self.process.is_running():
            return
        req = self.request() if self.model_path else None
        hit = None
        if req is not None:
            try:
                hit = cached_run(req)
            except OSError:  # the model file is gone
                hit = None
        self._show(hit)
        if req is None:
            return
        if hit is not None:
            self.status.setText(self._summary(hit) + f" (measured {hit.created})")
        else:
            self.status.setText("Not measured yet with these settings and text: press Run.")

    # -- running -------------------------------------------------------------------------

    def start(self, sweep: bool = False) -> bool:
        req = self.request()
        if req is None or self.process.is_running():
            return False
        if sweep:
            from dataclasses import replace

            req = replace(req, sweep=self.threshold, pairs=(REFERENCE_PAIR,))
        if problems := req.problems():
            self.status.setText("Cannot measure: " + "; ".join(problems))
            return False
        self._live = []
        self._running = req
        self.progress.setValue(0)
        self.status.setText(f"Starting the measurement worker for {Path(req.model).name}…")
        self.process.start(req)
        self._show_model()
        self._refresh_buttons()
        return True

    def cancel(self) -> None:
        self.process.cancel()

    def shutdown(self) -> None:
        self.process.shutdown()
        self._refresh_buttons()

    def _on_progress(self, fraction: float, message: str) -> None:
        self.progress.setValue(round(fraction * 1000))
        self.status.setText(message)

    def _mine(self) -> bool:
        """Is the running (or just finished) measurement of the model shown here?"""
        return self._running is not None and self._running.model == self.model_path

    def _on_result(self, result: PairResult) -> None:
        self._live.append(result)
        if self._mine():
            self._show_results(self._live)

    def _on_finished(self, run: MeasureRun) -> None:
        merged = save_cached(run)
        mine = self._mine()
        self._running = None
        self.progress.setValue(1000)
        if mine:
            self._show(merged)
            self.status.setText(self._summary(run) + self._failures(run))
        else:  # another model was chosen meanwhile: show that one, say where this went
            self.show_cached()
            self.status.setText(f"Finished measuring {Path(run.model.path).name} (kept in its "
                                "cache); showing the model chosen since.")
        self._show_model()
        self._refresh_buttons()
        self.runFinished.emit(merged)

    def _keep_partial(self, partial: MeasureRun | None) -> MeasureRun | None:
        mine = self._mine()
        self._running = None
        self._show_model()
        if partial is not None and partial.results:
            merged = save_cached(partial)
            if mine:
                self._show(merged)
            else:
                self.show_cached()
            return merged
        self.show_cached()
        return None

    def _on_failed(self, message: str, partial: MeasureRun | None) -> None:
        self._keep_partial(partial)
        self.status.setText(f"Measurement failed: {message}")
        self._refresh_buttons()

    def _on_cancelled(self, partial: MeasureRun | None) -> None:
        kept = self._keep_partial(partial)
        done = len(partial.results) if partial is not None else 0
        self.status.setText(f"Cancelled; {done} type(s) had finished"
                            + (" and are kept." if kept else "."))
        self.progress.setValue(0)
        self._refresh_buttons()

    def _refresh_buttons(self) -> None:
        running = self.process.is_running()
        self.run_button.setEnabled(bool(self.model_path) and not running)
        self.sweep_button.setEnabled(bool(self.model_path) and not running)
        self.cancel_button.setEnabled(running)
        for b in (self.choose_text, self.use_sample, self.long_box, self.retrieval_box):
            b.setEnabled(not running)
        long = self.long_box.isChecked()
        for spin in (self.window_spin, self.windows_spin):
            spin.setEnabled(not running and not long)

    def _choose_text(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Text to evaluate", "",
                                              "Text files (*.txt *.md *.raw);;All files (*)")
        if path:
            self.set_text_file(path)

    def _budget_edited(self) -> None:
        text = self.budget_edit.text().strip()
        try:
            budget = parse_size(text) if text else None
        except ValueError as exc:
            self.status.setText(str(exc))
            return
        self._budget = budget
        self._show(self.run)

    # -- display -------------------------------------------------------------------------

    @staticmethod
    def _summary(run: MeasureRun) -> str:
        e = run.evaluation
        kl = "exact KL" if e.kl_method == "full" else f"KL from the reference's {e.kl_method}"
        speed = (f" Speed: median (slowest–fastest) of {e.speed_repeats} repeats after a "
                 f"warm-up, {e.n_threads} threads." if e.speed_repeats else "")
        sweep = f" {e.sweep[0].upper()}{e.sweep[1:]}." if e.sweep else ""
        return (f"{e.tokens} tokens scored per type ({e.windows} windows of {e.window} tokens "
                f"of {run.text.name}, {e.text_tokens} tokens); {kl}; flash attention "
                f"{run.settings.flash_attn.value}.{speed}{sweep}")

    @staticmethod
    def _failures(run: MeasureRun) -> str:
        return "".join(f" {f.label} failed: {f.error}." for f in run.failures)

    def _show(self, run: MeasureRun | None) -> None:
        self.run = run
        self._show_results(list(run.results) if run else [], run)

    def _show_results(self, results: list[PairResult], run: MeasureRun | None = None) -> None:
        # the reference first, then by KV memory, largest first (the table reads as a ladder)
        results = sorted(results, key=lambda r: (r.pair != REFERENCE_PAIR,
                                                 -(r.kv_bytes or 0), r.label))
        pick = self._recommender(run) if (self._recommender and run is not None) else None
        self.recommended = next((r for r in results if r.pair == pick), None)
        ref = next((r for r in results if r.pair == REFERENCE_PAIR), None)
        front = {r.label for r in pareto_front(results)}
        failures = list(run.failures) if run else []
        self.table.clearSpans()
        self.table.setRowCount(len(results) + len(failures))
        bold = QFont()
        bold.setBold(True)
        for row, r in enumerate(results):
            dppl = "reference" if r is ref else (
                f"{r.ppl / ref.ppl - 1:+.2%}" if ref and ref.ppl else "n/a")
            name = r.label + (" ★" if r is self.recommended else "")
            within = "✓" if self.threshold.accepts(r) else "✗"
            found = f"{r.retrieval_passed}/{len(r.retrieval)}" if r.retrieval else "–"
            cells = (name, _num(r.ppl, ".4f"), dppl, _num(r.kl_mean, ".5f"),
                     _num(r.kl_p99, ".4f"), _num(r.top1_agreement, ".1%"), within,
                     format_speed(r.pp_tokens_per_s, r.pp_spread, ".0f"),
                     format_speed(r.tg_tokens_per_s, r.tg_spread, ".1f"),
                     format_bytes(r.kv_bytes) if r.kv_bytes is not None else "n/a", found)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col:
                    item.setTextAlignment(_RIGHT)
                if r is self.recommended:
                    item.setFont(bold)
                if col == 0 and r.label in front:
                    item.setToolTip("on the Pareto front: no other type has both less KV "
                                    "memory and less quality loss")
                if COLUMNS[col] == "Within":
                    item.setToolTip(f"{'within' if within == '✓' else 'outside'} "
                                    f"{self.threshold.text}")
                if COLUMNS[col] == "Retrieval" and r.retrieval:
                    item.setToolTip("; ".join(
                        f"{p.depth:.0%} of {p.context_tokens} tokens: "
                        f"{'found' if p.passed else 'missed'} {p.expected} "
                        f"(answered {p.answer!r})" for p in r.retrieval))
                self.table.setItem(row, col, item)
        for i, f in enumerate(failures):
            row = len(results) + i
            self.table.setItem(row, 0, QTableWidgetItem(f.label))
            item = QTableWidgetItem(f"failed: {f.error}")
            item.setToolTip(f.error)
            self.table.setItem(row, 1, item)
            self.table.setSpan(row, 1, 1, len(COLUMNS) - 1)
        budget_mib = self._budget / MiB if self._budget is not None else None
        self.plot.show_results(results, self.recommended, budget_mib)
        self.profile_plot.show_results(results)


def describe_settings(s: Settings) -> str:
    """The settings a measurement runs with, as the window names them."""
    threads = "llama.cpp's thread count" if s.n_threads == AUTO_THREADS else \
        f"{s.n_threads} threads"
    parts = [f"context {s.n_ctx}", f"flash attention {s.flash_attn.value}", threads,
             f"batch {s.n_batch}/{s.n_ubatch}",
             "all layers on the GPU" if s.n_gpu_layers < 0 else f"{s.n_gpu_layers} GPU layers"]
    if not s.repack:
        parts.append("no repacked weights (-nr)")
    return "Settings: " + " · ".join(parts)


def _mib(r: PairResult) -> float:
    return (r.kv_bytes or 0) / MiB


def _num(x: float, spec: str) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, spec)


def main() -> int:  # pragma: no cover - manual use: python -m kvgui.ui.measure_panel MODEL
    from PySide6.QtWidgets import QApplication

    app = QApplication(sys.argv)
    panel = MeasurePanel()
    if len(sys.argv) > 1:
        panel.set_model(sys.argv[1])
    panel.resize(900, 700)
    panel.show()
    return int(app.exec())


if __name__ == "__main__":
    raise SystemExit(main())
