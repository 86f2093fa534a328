"""The context-length control: a log-scale slider, a spin box, and the value in words.

The slider is logarithmic so 512 … 1M tokens share one track with power-of-two ticks evenly
spaced; its value always snaps to llama.cpp's 256-token padding (llama.cpp pads n_ctx up to a
multiple of 256, so values in between would be shown as more memory than asked for).
Keys: arrows step 256 tokens, Page Up/Down jump to the next power of two, Home/End to the ends.
"""

from __future__ import annotations

import math

from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QKeyEvent, QPainter, QPen, QPixmap
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QSlider,
    QSpinBox,
    QStyle,
    QStyleOptionSlider,
    QVBoxLayout,
    QWidget,
)

from kvgui.core.config.settings import N_CTX_PAD
from kvgui.core.sizes import format_tokens
from kvgui.ui import theme
from kvgui.ui.viewmodel import MIN_CTX, snap

TOKENS_PER_PAGE = 667  # ≈ 500 words per page at ≈ 0.75 words per token
_RES = 1000  # slider positions per octave


def pos_of(n_ctx: int) -> int:
    return round(math.log2(max(n_ctx, MIN_CTX) / MIN_CTX) * _RES)


def ctx_of(pos: int) -> int:
    return snap(round(MIN_CTX * 2 ** (pos / _RES)))


def pages(n: int) -> str:
    p = n / TOKENS_PER_PAGE
    if p < 10:
        return f"≈ {p:.1f} pages"
    return f"≈ {round(p):,} pages"


class _LogSlider(QSlider):
    """QSlider over log2(context) with power-of-two tick labels and token-sized key steps."""

    ctxRequested = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(Qt.Orientation.Horizontal, parent)
        self._trained = 0
        self.current_ctx = MIN_CTX  # the exact value shown (the slider's own is log-rounded)
        self._ticks_key: object = None
        self._ticks = QPixmap()
        self.setMinimumHeight(44)
        self.setTracking(True)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)

    def set_trained(self, n: int) -> None:
        self._trained = n
        self.update()

    def keyPressEvent(self, ev: QKeyEvent) -> None:
        cur = self.current_ctx
        key = ev.key()
        lo, hi = ctx_of(self.minimum()), ctx_of(self.maximum())
        target = None
        if key in (Qt.Key.Key_Right, Qt.Key.Key_Up):
            target = cur + N_CTX_PAD
        elif key in (Qt.Key.Key_Left, Qt.Key.Key_Down):
            target = cur - N_CTX_PAD
        elif key == Qt.Key.Key_PageUp:
            target = 1 << (cur.bit_length())  # next power of two above
        elif key == Qt.Key.Key_PageDown:
            target = 1 << (cur - 1).bit_length() - 1
            if target == cur:
                target //= 2
        elif key == Qt.Key.Key_Home:
            target = lo
        elif key == Qt.Key.Key_End:
            target = hi
        if target is None:
            super().keyPressEvent(ev)
            return
        self.ctxRequested.emit(min(max(target, lo), hi))
        ev.accept()

    def _paint_ticks(self, p: QPainter, t: theme.Theme) -> None:
        g = self._groove()
        lo, hi = ctx_of(self.minimum()), ctx_of(self.maximum())
        # beyond the trained context: an amber stretch of track
        if self._trained and self._trained < hi:
            x0 = self.x_of(self._trained)
            p.fillRect(QRectF(x0, g.center().y() - 3, g.right() - x0, 6), t.warn)
        p.setPen(QPen(t.muted, 1))
        f = p.font()
        f.setPointSizeF(f.pointSizeF() * 0.85)
        p.setFont(f)
        n = 1 << (lo - 1).bit_length()
        last_x = -1e9
        while n <= hi:
            x = self.x_of(n)
            p.drawLine(int(x), int(g.bottom()) + 2, int(x), int(g.bottom()) + 6)
            label = format_tokens(n)
            w = p.fontMetrics().horizontalAdvance(label)
            left = min(max(x - w / 2 - 2, 0.0), self.width() - w - 4)  # keep ends readable
            if left > last_x + 6:
                p.drawText(QRectF(left, g.bottom() + 6, w + 4, 16),
                           Qt.AlignmentFlag.AlignCenter, label)
                last_x = left + w + 4
            n *= 2

    def _groove(self) -> QRectF:
        opt = QStyleOptionSlider()
        self.initStyleOption(opt)
        g = self.style().subControlRect(QStyle.ComplexControl.CC_Slider, opt,
                                        QStyle.SubControl.SC_SliderGroove, self)
        h = self.style().subControlRect(QStyle.ComplexControl.CC_Slider, opt,
                                        QStyle.SubControl.SC_SliderHandle, self)
        half = h.width() / 2
        return QRectF(g.left() + half, g.top(), g.width() - 2 * half, g.height())

    def x_of(self, n_ctx: int) -> float:
        g = self._groove()
        span = max(1, self.maximum() - self.minimum())
        return g.left() + (pos_of(n_ctx) - self.minimum()) / span * g.width()

    def paintEvent(self, ev) -> None:
        t = theme.current()
        dpr = self.devicePixelRatioF()
        key = (self.size(), dpr, self.minimum(), self.maximum(), self._trained, t.dark)
        if key != self._ticks_key:  # ticks and labels only change with range or size
            self._ticks_key = key
            pix = QPixmap(self.size() * dpr)
            pix.setDevicePixelRatio(dpr)
            pix.fill(Qt.GlobalColor.transparent)
            p = QPainter(pix)
            self._paint_ticks(p, t)
            p.end()
            self._ticks = pix
        p = QPainter(self)
        p.drawPixmap(0, 0, self._ticks)
        p.end()
        super().paintEvent(ev)


class ContextControl(QWidget):
    """Emits ``ctxChanged(n)`` with a 256-multiple whenever the user moves any of its parts."""

    ctxChanged = Signal(int)

    def __init__(self, n_ctx: int = 4096, trained: int = 131072,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._ctx = snap(n_ctx)
        self._trained = trained
        self.slider = _LogSlider()
        self.slider.setAccessibleName("Context length")
        self.spin = QSpinBox()
        self.spin.setRange(N_CTX_PAD, 1 << 22)
        self.spin.setSingleStep(N_CTX_PAD)
        self.spin.setGroupSeparatorShown(True)
        self.spin.setSuffix(" tokens")
        self.spin.setKeyboardTracking(False)
        self.spin.setAccelerated(True)
        self.spin.setMinimumWidth(150)
        self.spin.setToolTip("Exact context length (llama.cpp -c). llama.cpp pads it up to a "
                             "multiple of 256, so kvgui snaps to 256 too.")
        self.value_label = QLabel()
        self.value_label.setObjectName("ctxValue")
        self.pages_label = QLabel()
        self.pages_label.setObjectName("muted")
        self.pages_label.setToolTip("Roughly how much text fits: ≈ 0.75 English words per "
                                    "token and 500 words per page. Code and other languages "
                                    "use more tokens per word.")
        self.warn_label = QLabel()
        self.warn_label.setObjectName("warnBanner")
        self.warn_label.setWordWrap(True)
        self.warn_label.hide()
        title = QLabel("CONTEXT")
        title.setObjectName("cardTitle")
        top = QHBoxLayout()
        top.addWidget(title)
        top.addSpacing(12)
        top.addWidget(self.value_label)
        top.addWidget(self.pages_label)
        top.addStretch(1)
        top.addWidget(self.spin)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addWidget(self.slider)
        lay.addWidget(self.warn_label)
        self.slider.valueChanged.connect(self._from_slider)
        self.slider.ctxRequested.connect(self.set_ctx_user)
        self.spin.valueChanged.connect(self._from_spin)
        self.set_trained(trained)
        self._show(self._ctx)

    # --- public -----------------------------------------------------------------------
    @property
    def ctx(self) -> int:
        return self._ctx

    def set_trained(self, trained: int) -> None:
        """Range: 512 … twice the trained context (at least 8K), and the current value."""
        self._trained = max(trained, 0)
        hi = max(2 * self._trained, 8192, self._ctx)
        self.slider.blockSignals(True)
        self.slider.setRange(0, pos_of(hi))
        self.slider.setValue(pos_of(self._ctx))
        self.slider.blockSignals(False)
        self.slider.set_trained(self._trained)
        self.slider.setToolTip(
            f"Context length: {MIN_CTX} … {hi:,} tokens (log scale). Arrows: ±256 tokens, "
            "Page Up/Down: next power of two. Past the trained context "
            f"({self._trained:,}) the track turns amber.")
        self._show(self._ctx)

    def set_ctx(self, n_ctx: int) -> None:
        """Show a value without emitting (the controller is the source)."""
        n = snap(n_ctx)
        self._ctx = n
        if pos_of(n) > self.slider.maximum():
            self.slider.blockSignals(True)
            self.slider.setMaximum(pos_of(n))
            self.slider.blockSignals(False)
        self._show(n)

    def set_ctx_user(self, n_ctx: int) -> None:
        """As if the user chose it: show and emit."""
        self.set_ctx(n_ctx)
        self.ctxChanged.emit(self._ctx)

    # --- internals ---------------------------------------------------------------------
    def _show(self, n: int) -> None:
        self.slider.current_ctx = n
        for w, v in ((self.slider, pos_of(n)), (self.spin, n)):
            if w.value() != v:
                w.blockSignals(True)
                w.setValue(v)
                w.blockSignals(False)
        self.value_label.setText(f"{n:,} tokens")
        self.pages_label.setText(f"({format_tokens(n)}, {pages(n)} of text)")
        beyond = self._trained and n > self._trained
        if beyond:
            self.warn_label.setText(
                f"⚠ Beyond the model's trained context ({self._trained:,} tokens): memory is "
                "estimated, but quality usually falls apart unless RoPE scaling is configured.")
        if beyond != self.warn_label.isVisible():
            self.warn_label.setVisible(bool(beyond))

    def _from_slider(self, pos: int) -> None:
        n = ctx_of(pos)
        if n == self._ctx:
            return
        self._ctx = n
        self._show(n)
        self.ctxChanged.emit(n)

    def _from_spin(self, value: int) -> None:
        self.set_ctx_user(value)
