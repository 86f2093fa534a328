"""The live stacked bar: one row per device, a legend, and a refusal state.

It draws a list of BarRow and nothing else; hover any segment for what it is and its size.
"""

from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import QEvent, QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QFont, QFontMetricsF, QHelpEvent, QPainter, QPen, QPixmap
from PySide6.QtWidgets import QSizePolicy, QToolTip, QWidget

from kvgui.core.sizes import format_bytes
from kvgui.ui import theme
from kvgui.ui.barpaint import HitArea, paint_row, scale_of, show_hit_tooltip
from kvgui.ui.viewmodel import PART_HELP, BarRow, segments

ROW_H = 34
ROW_GAP = 22
LABEL_W = 190
LEGEND_H = 26


class MemoryBar(QWidget):
    def __init__(self, rows: Sequence[BarRow] = (), parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._rows: tuple[BarRow, ...] = tuple(rows)
        self._error = ""
        self._hits: list[HitArea] = []
        self._legend = QPixmap()
        self._legend_key: tuple[object, ...] = ()
        self._legend_hits: list[HitArea] = []
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMouseTracking(True)
        self.setAccessibleName("Memory per device")
        self._fix_height()

    # --- model ------------------------------------------------------------------------
    @property
    def rows(self) -> tuple[BarRow, ...]:
        return self._rows

    @property
    def error(self) -> str:
        return self._error

    def set_rows(self, rows: Sequence[BarRow], error: str = "") -> None:
        rows = tuple(rows)
        if rows == self._rows and error == self._error:
            return
        n_before = len(self._rows)
        self._rows, self._error = rows, error
        if len(rows) != n_before:
            self._fix_height()
        self.update()

    def _fix_height(self) -> None:
        n = max(1, len(self._rows))
        self.setFixedHeight(n * ROW_H + (n - 1) * ROW_GAP + 14 + LEGEND_H)

    def sizeHint(self) -> QSize:
        return QSize(700, self.height())

    # --- drawing ------------------------------------------------------------------------
    def paintEvent(self, ev) -> None:
        t = theme.current()
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.TextAntialiasing, True)
        self._hits = []
        w = self.width()
        y = 4.0
        base = p.font()
        bold = p.font()
        bold.setBold(True)
        small = p.font()
        small.setPointSizeF(base.pointSizeF() * 0.9)
        common = max((scale_of(r) for r in self._rows), default=1)
        for row in self._rows or (BarRow("—", ()),):
            # left: device name and "used / budget"
            p.setFont(bold)
            p.setPen(t.text)
            fm = QFontMetricsF(bold)
            label = row.label if row.is_gpu else f"{row.label} (host RAM)"
            name = fm.elidedText(label, Qt.TextElideMode.ElideMiddle, LABEL_W - 12)
            p.drawText(QRectF(0, y, LABEL_W - 8, ROW_H / 2), Qt.AlignmentFlag.AlignLeft
                       | Qt.AlignmentFlag.AlignBottom, name)
            p.setFont(small)
            if row.budget is not None:
                sub = f"{format_bytes(row.used)} of {format_bytes(row.budget)}"
            else:
                sub = f"{format_bytes(row.used)} (no budget)"
            p.setPen(t.over if row.over else t.muted)
            p.drawText(QRectF(0, y + ROW_H / 2, LABEL_W - 8, ROW_H / 2),
                       Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop, sub)
            p.setFont(base)
            rect = QRectF(LABEL_W, y, w - LABEL_W - 4, ROW_H)
            if self._error:
                p.setPen(QPen(t.over, 1.5, Qt.PenStyle.DashLine))
                p.setBrush(Qt.BrushStyle.NoBrush)
                p.drawRoundedRect(rect, 4, 4)
                p.setPen(t.over)
                p.drawText(rect, Qt.AlignmentFlag.AlignCenter,
                           "llama.cpp would refuse these settings — see above")
            elif row.parts:
                # a row with no capacity is drawn to the others' scale, so sizes compare
                scale = None if row.capacity is not None else common
                self._hits += paint_row(p, rect, row, t, scale)
                if row.capacity is not None:
                    # the capacity scale under the bar, at the budget line
                    p.setFont(small)
                    p.setPen(t.muted)
                    cap = f"{format_bytes(row.capacity, 1)} device"
                    # under the device's end, which is short of the bar's end when over
                    cap_x = rect.left() + rect.width() * row.capacity / scale_of(row)
                    p.drawText(QRectF(cap_x - 200, rect.bottom() + 1, 200, 16),
                               Qt.AlignmentFlag.AlignRight, cap)
                    p.setFont(base)
            y += ROW_H + ROW_GAP
        # the legend: the same on every slider step, so drawn once into a pixmap
        present = frozenset(key for r in self._rows for key, nbytes in r.parts if nbytes)
        dpr = self.devicePixelRatioF()
        top = self.height() - LEGEND_H
        key = (w, top, dpr, t.dark, present, p.font().toString())
        if key != self._legend_key:
            self._legend_key = key
            pix = QPixmap(QSize(w, LEGEND_H) * dpr)
            pix.setDevicePixelRatio(dpr)
            pix.fill(Qt.GlobalColor.transparent)
            lp = QPainter(pix)
            lp.setFont(p.font())
            lp.setRenderHint(QPainter.RenderHint.TextAntialiasing, True)
            self._legend = pix
            self._legend_hits = [HitArea(h.rect.translated(0, top), h.text)
                                 for h in self._paint_legend(lp, t, small, present)]
            lp.end()
        p.drawPixmap(0, top, self._legend)
        self._hits += self._legend_hits
        p.end()

    def _paint_legend(self, p: QPainter, t: theme.Theme, small: QFont,
                      present: frozenset[str]) -> list[HitArea]:
        """The parts' colours and names (those some device has) and the budget line, at
        y 0 of ``p``; returns their hover areas."""
        hits: list[HitArea] = []
        y = 4.0
        x = float(LABEL_W)
        p.setFont(small)
        fm = QFontMetricsF(small)
        for key, label, what in segments():
            if key in PART_HELP and key not in present and key != "weights":
                continue  # a part no device has (e.g. recurrent state of a dense model)
            sw = QRectF(x, y + 4, 12, 12)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(t.segment(key))
            p.drawRoundedRect(sw, 3, 3)
            if key == "headroom":
                p.setPen(QPen(t.ok, 1))
                p.setBrush(Qt.BrushStyle.NoBrush)
                p.drawRoundedRect(sw, 3, 3)
            p.setPen(t.text)
            tw = fm.horizontalAdvance(label)
            p.drawText(QRectF(x + 16, y, tw + 4, 20), Qt.AlignmentFlag.AlignVCenter, label)
            hits.append(HitArea(QRectF(x, y, tw + 20, 20), f"<b>{label}</b><br>{what}"))
            x += tw + 34
        # the budget line's legend entry
        p.setPen(QPen(t.budget_line, 2))
        p.drawLine(int(x + 6), int(y + 2), int(x + 6), int(y + 18))
        p.setPen(t.text)
        p.drawText(QRectF(x + 14, y, 200, 20), Qt.AlignmentFlag.AlignVCenter, "Budget")
        hits.append(HitArea(QRectF(x, y, 80, 20),
                            "<b>Budget</b><br>the device's memory less the reserve: "
                            "everything llama.cpp allocates must stay left of it"))
        return hits

    def event(self, ev: QEvent) -> bool:
        if ev.type() == QEvent.Type.ToolTip and isinstance(ev, QHelpEvent):
            pos = QPointF(ev.pos())
            if show_hit_tooltip(self, pos, ev.globalPos(), self._hits):
                return True
            QToolTip.hideText()
            ev.ignore()
            return True
        return super().event(ev)
