"""All cache types side by side: one stacked bar per common K/V pair, on one shared scale.

Each row: the pair, its bar for the main device at the current context, the total and the
predicted decode speed, the largest context that fits (under the placement chosen: the
user's, or under auto the planner's for the current pair), and a one-line quality note with its
source in the tooltip
(measured on this model when it has been, coloured by the user's threshold; else published,
muted).
Painted as one widget (not 40 labels) so a slider step repaints it in well under a
millisecond; click a row to use that pair.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QEvent, QPointF, QRectF, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QFontMetricsF,
    QHelpEvent,
    QMouseEvent,
    QPainter,
    QPen,
    QPixmap,
)
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from kvgui.core.sizes import format_bytes
from kvgui.core.untrusted import html_text
from kvgui.ui import theme
from kvgui.ui.barpaint import HitArea, paint_row, scale_of, show_hit_tooltip
from kvgui.ui.viewmodel import CompareRow

ROW_H = 46
HEAD_H = 24
NAME_W = 118
TOTAL_W = 92
FIT_W = 136


class CacheTypeTable(QWidget):
    pairChosen = Signal(str, str)

    def __init__(self, rows: Sequence[CompareRow] = (), parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._rows: tuple[CompareRow, ...] = ()
        self._hits: list[HitArea] = []
        self._hover = -1
        self._static_key: object = None
        self._static = QPixmap()
        self._static_hits: list[HitArea] = []
        self.setMouseTracking(True)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setAccessibleName("Memory for each KV cache type")
        self.set_rows(rows)

    @property
    def rows(self) -> tuple[CompareRow, ...]:
        return self._rows

    def set_rows(self, rows: Sequence[CompareRow]) -> None:
        rows = tuple(rows)
        if rows == self._rows:
            return
        if len(rows) != len(self._rows):
            self.setFixedHeight(HEAD_H + max(1, len(rows)) * ROW_H + 4)
        self._rows = rows
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(640, self.height())

    def _row_at(self, y: float) -> int:
        i = int((y - HEAD_H) // ROW_H)
        return i if 0 <= i < len(self._rows) and y >= HEAD_H else -1

    def _columns(self) -> tuple[float, float, float, float]:
        w = float(self.width())
        bar_w = max(60.0, w - NAME_W - TOTAL_W - FIT_W - 12)
        total_x = NAME_W + bar_w + 8
        return float(NAME_W), bar_w, total_x, total_x + TOTAL_W

    def paintEvent(self, ev) -> None:
        """Text that does not change with the context (names, notes, fits) is drawn once into
        a pixmap; a slider step only repaints the bars and the totals over it."""
        t = theme.current()
        dpr = self.devicePixelRatioF()
        static = tuple((r.label, r.note.text, r.limit, r.current, r.error, r.over,
                        r.bar is None) for r in self._rows)
        key = (self.size(), dpr, t.dark, self._hover, static)
        if key != self._static_key:
            self._static_key = key
            pix = QPixmap(self.size() * dpr)
            pix.setDevicePixelRatio(dpr)
            pix.fill(Qt.GlobalColor.transparent)
            sp = QPainter(pix)
            self._static_hits = self._paint_static(sp, t)
            sp.end()
            self._static = pix
        p = QPainter(self)
        p.drawPixmap(0, 0, self._static)
        p.setRenderHint(QPainter.RenderHint.TextAntialiasing, True)
        hits = list(self._static_hits)
        bar_x, bar_w, total_x, _fit_x = self._columns()
        scale = max((scale_of(r.bar) for r in self._rows if r.bar), default=1)
        bold = p.font()
        bold.setBold(True)
        small = p.font()
        small.setPointSizeF(bold.pointSizeF() * 0.88)
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        for i, r in enumerate(self._rows):
            if r.bar is None:
                continue
            y = HEAD_H + i * ROW_H
            hits += paint_row(p, QRectF(bar_x, y + 6, bar_w, 16), r.bar, t, scale,
                              show_text=False, radius=3)
            p.setFont(bold)
            p.setPen(t.over if r.over else t.text)
            p.drawText(QRectF(total_x, y + 4, TOTAL_W - 6, 20), right, format_bytes(r.total, 2))
            hits.append(HitArea(QRectF(total_x, y, TOTAL_W, 26),
                                f"What llama.cpp allocates on {r.bar.label} with this cache "
                                f"type (the big bar's figure); on every device: "
                                f"{format_bytes(r.all_devices)}"))
            if r.speed:
                p.setFont(small)
                p.setPen(t.muted)
                rect = QRectF(total_x, y + 24, TOTAL_W - 6, 18)
                p.drawText(rect, right, r.speed)
                hits.append(HitArea(rect, r.speed_tip))
        p.end()
        self._hits = hits

    def _paint_static(self, p: QPainter, t: theme.Theme) -> list[HitArea]:
        p.setRenderHint(QPainter.RenderHint.TextAntialiasing, True)
        hits: list[HitArea] = []
        w = float(self.width())
        base = p.font()
        small = p.font()
        small.setPointSizeF(base.pointSizeF() * 0.88)
        bold = p.font()
        bold.setBold(True)
        bar_x, bar_w, total_x, fit_x = self._columns()
        right = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        p.setFont(small)
        p.setPen(t.muted)
        p.drawText(QRectF(4, 0, NAME_W, HEAD_H), left, "K / V cache")
        p.drawText(QRectF(bar_x, 0, bar_w, HEAD_H), left, "memory at this context")
        p.drawText(QRectF(total_x, 0, TOTAL_W - 6, HEAD_H), right, "needs")
        p.drawText(QRectF(fit_x, 0, FIT_W - 4, HEAD_H), right, "fits up to")
        hits.append(HitArea(QRectF(fit_x, 0, FIT_W, HEAD_H),
                            "The largest context (a multiple of 256) at which everything "
                            "still fits the budget with this cache type"))
        fm_small = QFontMetricsF(small)
        for i, r in enumerate(self._rows):
            y = HEAD_H + i * ROW_H
            row_rect = QRectF(0, y, w, ROW_H - 2)
            if r.current or i == self._hover:
                bg = QColor(t.accent)
                bg.setAlpha(38 if r.current else 18)
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(bg)
                p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
                p.drawRoundedRect(row_rect, 6, 6)
            if r.current:
                p.setPen(QPen(t.accent, 1.2))
                p.setBrush(Qt.BrushStyle.NoBrush)
                p.drawRoundedRect(row_rect.adjusted(0.5, 0.5, -0.5, -0.5), 6, 6)
            p.setFont(bold)
            p.setPen(t.text)
            p.drawText(QRectF(8, y + 4, NAME_W - 8, 20), left, r.label)
            bar_rect = QRectF(bar_x, y + 6, bar_w, 16)
            if r.bar is None:
                p.setFont(small)
                p.setPen(t.over)
                p.drawText(bar_rect, left, fm_small.elidedText(
                    f"refused: {r.error}", Qt.TextElideMode.ElideRight, bar_w))
                hits.append(HitArea(bar_rect, f"<b>llama.cpp refuses {r.label}</b><br>"
                                    f"{html_text(r.error, 400)}"))

            p.setFont(bold)
            limit = r.limit
            if r.refused:
                fit_text, color = "refused", t.over
            elif limit.raw is None:
                fit_text, color = limit.text, t.muted
            elif limit.raw <= 0:
                fit_text, color = limit.text, t.over
            else:
                fit_text, color = limit.text, (t.over if r.over else t.ok)
            p.setPen(color)
            p.drawText(QRectF(fit_x, y + 4, FIT_W - 4, 20), right,
                       QFontMetricsF(bold).elidedText(fit_text, Qt.TextElideMode.ElideLeft,
                                                      FIT_W - 4))
            hits.append(HitArea(QRectF(fit_x, y, FIT_W, 26),
                                f"with {r.label}: {html_text(r.error, 400)}" if r.refused
                                else f"with {r.label}: {limit.tooltip}"))
            p.setFont(small)
            # measured on this model: green within the user's threshold, red outside it;
            # published figures (another model) stay muted
            if r.note.measured and r.note.within is not None:
                p.setPen(t.ok if r.note.within else t.over)
            else:
                p.setPen(t.muted)
            # (the total column's second line shows the predicted speed)
            note_rect = QRectF(bar_x, y + 24, total_x - bar_x - 8, 18)
            p.drawText(note_rect, left, fm_small.elidedText(r.note.text,
                                                            Qt.TextElideMode.ElideRight,
                                                            note_rect.width()))
            src = r.note.source + (f"<br>{r.note.url}" if r.note.url else "")
            hits.append(HitArea(note_rect, f"<b>{r.note.text}</b><br>Source: {src}"))
        return hits

    def event(self, ev: QEvent) -> bool:
        if ev.type() == QEvent.Type.ToolTip and isinstance(ev, QHelpEvent):
            pos = QPointF(ev.pos())
            if show_hit_tooltip(self, pos, ev.globalPos(), self._hits):
                return True
            i = self._row_at(pos.y())
            if i >= 0:
                QToolTip.showText(ev.globalPos(), "Click to use this cache type", self)
                return True
            QToolTip.hideText()
            return True
        if ev.type() == QEvent.Type.Leave and self._hover != -1:
            self._hover = -1
            self.update()
        return super().event(ev)

    def mouseMoveEvent(self, ev: QMouseEvent) -> None:
        i = self._row_at(ev.position().y())
        if i != self._hover:
            self._hover = i
            self.setCursor(Qt.CursorShape.PointingHandCursor if i >= 0
                           else Qt.CursorShape.ArrowCursor)
            self.update()

    def mouseReleaseEvent(self, ev: QMouseEvent) -> None:
        i = self._row_at(ev.position().y())
        if i >= 0 and ev.button() == Qt.MouseButton.LeftButton:
            r = self._rows[i]
            self.pairChosen.emit(r.type_k, r.type_v)
