"""The "Measure" panel: what each KV cache type costs in quality and speed on this model.

Pick the types and a text, Run: the measurement worker (kvgui.runtime.measure) evaluates the
text once per type with a progress bar and Cancel; results fill a table and a plot of quality
loss (mean KL against the f16 cache) against KV memory, with the Pareto front drawn and the
recommended type for the current budget marked. Results are cached per model file + settings
+ text, so choosing a model that was measured before shows them at once.

The host window calls ``set_model``, ``set_settings`` and ``set_budget`` (optionally with a
cost function, e.g. the estimate's KV bytes at the user's context) and ``shutdown`` on close.
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

from kvgui.core.config.settings import Settings
from kvgui.core.quality.results import (
    DEFAULT_PAIRS,
    DEFAULT_WINDOW,
    OFFERED_PAIRS,
    REFERENCE_PAIR,
    MeasureRun,
    PairResult,
    pair_label,
    pareto_front,
    recommend,
    save_cached,
)
from kvgui.core.sizes import MiB, format_bytes, parse_size
from kvgui.runtime.measure import (
    SAMPLE_TEXT_NAME,
    MeasureRequest,
    cached_run,
    read_text_file,
    sample_text,
)
from kvgui.runtime.qt_measure import MeasureProcess
from kvgui.ui import theme
from kvgui.ui.plotstyle import quiet_plot

_RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
COLUMNS = ("Type", "PPL", "ΔPPL", "KL mean", "KL p99", "Top-1", "PP t/s", "TG t/s", "KV memory")
Cost = Callable[[PairResult], "int | None"]


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


class MeasurePanel(QWidget):
    """Choose types and text, Run/Cancel with progress, results table and KL-vs-memory plot."""

    runFinished = Signal(object)  # the merged (cached) MeasureRun after a run

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model_path: str | None = None
        self.settings = Settings()
        self.run: MeasureRun | None = None
        self.recommended: PairResult | None = None
        self._budget: int | None = None
        self._cost: Cost | None = None
        self._text_path: str | None = None
        self._sample: str | None = None
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
        self.run_button = QPushButton("Run")
        self.run_button.clicked.connect(self.start)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        row.addWidget(self.run_button)
        row.addWidget(self.cancel_button)
        outer.addLayout(row)

        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress.setTextVisible(False)
        outer.addWidget(self.progress)
        self.status = QLabel("Choose a model to measure.")
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
        self.plot = KLPlot()
        split.addWidget(self.plot)
        outer.addWidget(split, 1)

    # -- host API ------------------------------------------------------------------------

    def set_model(self, path: str | Path | None) -> None:
        self.model_path = str(path) if path else None
        self.show_cached()
        self._refresh_buttons()

    def set_settings(self, settings: Settings) -> None:
        self.settings = settings
        s = settings
        n_ctx_seq = s.n_ctx if s.kv_unified else max(16, s.n_ctx // s.n_parallel)
        self.window_spin.setMaximum(n_ctx_seq)  # a window must fit in one sequence's context
        self.show_cached()

    def set_budget(self, budget: int | None, cost: Cost | None = None) -> None:
        """The KV budget the recommendation is for; ``cost`` gives a pair's bytes (default:
        the KV measured at the measurement's context)."""
        self._budget, self._cost = budget, cost
        self.budget_edit.setText(format_bytes(budget) if budget is not None else "")
        self._show(self.run)

    def set_text_file(self, path: str | None) -> None:
        self._text_path = path
        self.text_label.setText(path or SAMPLE_TEXT_NAME)
        self.show_cached()

    def selected_pairs(self) -> tuple[tuple[str, str], ...]:
        return tuple(p for p, cb in self.type_boxes.items() if cb.isChecked())

    def set_selected_pairs(self, pairs: tuple[tuple[str, str], ...]) -> None:
        for p, cb in self.type_boxes.items():
            cb.setChecked(p in pairs or p == REFERENCE_PAIR)

    def request(self) -> MeasureRequest | None:
        """The request for the current choices, or None (no model, unreadable text)."""
        if not self.model_path:
            return None
        try:
            if self._text_path:
                text, name = read_text_file(self._text_path), self._text_path
            else:
                if self._sample is None:
                    self._sample = sample_text()
                text, name = self._sample, SAMPLE_TEXT_NAME
        except OSError as exc:
            self.status.setText(f"Cannot read {self._text_path}: {exc.strerror or exc}")
            return None
        mw = self.windows_spin.value()
        return MeasureRequest(
            model=self.model_path, settings=self.settings, pairs=self.selected_pairs(),
            text=text, text_name=name, window=self.window_spin.value(),
            max_windows=mw or None,
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

    def start(self) -> bool:
        req = self.request()
        if req is None or self.process.is_running():
            return False
        if problems := req.problems():
            self.status.setText("Cannot measure: " + "; ".join(problems))
            return False
        self._live = []
        self.progress.setValue(0)
        self.status.setText("Starting the measurement worker…")
        self.process.start(req)
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

    def _on_result(self, result: PairResult) -> None:
        self._live.append(result)
        self._show_results(self._live)

    def _on_finished(self, run: MeasureRun) -> None:
        merged = save_cached(run)
        self.progress.setValue(1000)
        self._show(merged)
        self.status.setText(self._summary(run) + self._failures(run))
        self._refresh_buttons()
        self.runFinished.emit(merged)

    def _keep_partial(self, partial: MeasureRun | None) -> MeasureRun | None:
        if partial is not None and partial.results:
            merged = save_cached(partial)
            self._show(merged)
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
        self.cancel_button.setEnabled(running)
        for w in (self.choose_text, self.use_sample, self.window_spin, self.windows_spin):
            w.setEnabled(not running)

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
        return (f"{e.tokens} tokens scored per type ({e.windows} windows of {e.window} tokens "
                f"of {run.text.name}, {e.text_tokens} tokens); {kl}; flash attention "
                f"{run.settings.flash_attn.value}.")

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
        self.recommended = recommend(results, self._budget, self._cost)
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
            cells = (name, _num(r.ppl, ".4f"), dppl, _num(r.kl_mean, ".5f"),
                     _num(r.kl_p99, ".4f"), _num(r.top1_agreement, ".1%"),
                     _num(r.pp_tokens_per_s, ".0f"), _num(r.tg_tokens_per_s, ".1f"),
                     format_bytes(r.kv_bytes) if r.kv_bytes is not None else "n/a")
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                if col:
                    item.setTextAlignment(_RIGHT)
                if r is self.recommended:
                    item.setFont(bold)
                if col == 0 and r.label in front:
                    item.setToolTip("on the Pareto front: no other type has both less KV "
                                    "memory and less quality loss")
                self.table.setItem(row, col, item)
        for i, f in enumerate(failures):
            row = len(results) + i
            self.table.setItem(row, 0, QTableWidgetItem(f.label))
            item = QTableWidgetItem(f"failed: {f.error}")
            item.setToolTip(f.error)
            self.table.setItem(row, 1, item)
            self.table.setSpan(row, 1, 1, len(COLUMNS) - 1)
        budget_mib = self._budget / MiB if self._budget is not None and self._cost is None \
            else None
        self.plot.show_results(results, self.recommended, budget_mib)


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
