"""The quality line under the every-cache-type table: the controller's advice (measured on
this model, or not measured) and the quality threshold the user can see and set.

It only draws ``QualityAdvice`` and reports a new threshold; which pair is advised, and what
the presets pick with the threshold, is the controller's rule.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QComboBox, QDoubleSpinBox, QHBoxLayout, QLabel, QWidget

from kvgui.core.quality.advice import DEFAULT_KL, DEFAULT_TOP1, KL, TOP1, QualityThreshold
from kvgui.ui.viewmodel import QualityAdvice


class QualityBar(QWidget):
    thresholdChanged = Signal(object)  # QualityThreshold

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        lay = QHBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.advice = QLabel()
        self.advice.setWordWrap(True)
        self.advice.setTextFormat(Qt.TextFormat.PlainText)
        lay.addWidget(self.advice, 1)
        lay.addWidget(QLabel("Accept:"))
        self.metric_box = QComboBox()
        self.metric_box.addItem("KL ≤", KL)
        self.metric_box.addItem("top-1 ≥ (%)", TOP1)
        self.metric_box.setToolTip("the loss you accept from a quantized KV cache, against f16 on "
                               "your model: mean KL divergence (nats/token) or the share of "
                               "tokens where the most likely next token is unchanged")
        self.value_box = QDoubleSpinBox()
        self.value_box.setKeyboardTracking(False)
        lay.addWidget(self.metric_box)
        lay.addWidget(self.value_box)
        self._threshold = QualityThreshold()
        self._quiet = False
        self.metric_box.currentIndexChanged.connect(self._metric_changed)
        self.value_box.valueChanged.connect(lambda _v: self._emit())
        self.set_threshold(self._threshold)

    @property
    def threshold(self) -> QualityThreshold:
        return self._threshold

    def set_threshold(self, t: QualityThreshold) -> None:
        self._quiet = True
        try:
            self.metric_box.setCurrentIndex(0 if t.metric == KL else 1)
            self._range(t.metric)
            self.value_box.setValue(t.value if t.metric == KL else t.value * 100)
            self._threshold = t
        finally:
            self._quiet = False

    def set_advice(self, advice: QualityAdvice | None) -> None:
        text = advice.text if advice else ""
        if text != self.advice.text():
            self.advice.setText(text)
        self.advice.setToolTip(advice.detail if advice else "")
        self.advice.setObjectName("" if advice and advice.measured else "muted")

    def _range(self, metric: str) -> None:
        if metric == KL:
            self.value_box.setDecimals(4)
            self.value_box.setRange(0.0001, 10.0)
            self.value_box.setSingleStep(0.005)
        else:
            self.value_box.setDecimals(1)
            self.value_box.setRange(1.0, 100.0)
            self.value_box.setSingleStep(0.5)

    def _metric_changed(self, _i: int) -> None:
        if self._quiet:
            return
        metric = self.metric_box.currentData()
        self._quiet = True
        try:
            self._range(metric)
            self.value_box.setValue(DEFAULT_KL if metric == KL else DEFAULT_TOP1 * 100)
        finally:
            self._quiet = False
        self._emit()

    def _emit(self) -> None:
        if self._quiet:
            return
        metric = self.metric_box.currentData()
        v = self.value_box.value()
        t = QualityThreshold(metric, v if metric == KL else v / 100)
        if t != self._threshold:
            self._threshold = t
            self.thresholdChanged.emit(t)
