"""Painting one stacked memory bar: shared by the big bar and the per-cache-type table.

Layout along the bar: the estimate's parts from the left, then headroom up to the budget
line, then the reserve (memory the user set aside, so it sits past the line). What does not
fit spills past the line under a translucent red, and the reserve follows it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PySide6.QtCore import QPoint, QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFontMetricsF, QPainter, QPainterPath, QPen
from PySide6.QtWidgets import QToolTip, QWidget

from kvgui.core.sizes import format_bytes
from kvgui.ui.theme import Theme
from kvgui.ui.viewmodel import BarRow, segments

LABELS = {key: (label, what) for key, label, what in segments()}
# Qt's raster engine strokes an antialiased pen of width exactly 1 by its cosmetic-pen path,
# ~30x slower on a curve: a 1200-px rounded outline took 0.7 ms (each cache-type row, every
# slider step), 0.02 ms at 1.01, which draws the same line
HAIRLINE = 1.01


@dataclass(frozen=True)
class HitArea:
    """A hover area: its tooltip, or what makes it (built when hovered, not on each paint)."""

    rect: QRectF
    text: str | Callable[[], str]
    key: str = ""  # the segment drawn here (a part key, "reserve", "over", "headroom")
    nbytes: int = 0

    @property
    def tip(self) -> str:
        return self.text() if callable(self.text) else self.text


def _part_tip(key: str, nbytes: int) -> str:
    label, what = LABELS[key]
    return f"<b>{label}: {format_bytes(nbytes)}</b><br>{what}"


def show_hit_tooltip(widget: QWidget, pos: QPointF, global_pos: QPoint,
                     hits: Sequence[HitArea]) -> bool:
    """The tooltip of the topmost area under ``pos`` (the last painted wins); False if none."""
    for h in reversed(hits):
        if h.rect.contains(pos):
            QToolTip.showText(global_pos, h.tip, widget)
            return True
    return False


def scale_of(row: BarRow) -> int:
    """Bytes the full bar width stands for."""
    top = row.used + row.reserve
    if row.capacity is not None:
        top = max(top, row.capacity)
    return max(top, 1)


def paint_row(p: QPainter, rect: QRectF, row: BarRow, t: Theme, scale: int | None = None,
              show_text: bool = True, radius: float = 4.0) -> list[HitArea]:
    """Draw ``row`` into ``rect``; returns hover areas with tooltips."""
    scale = scale or scale_of(row)
    px = rect.width() / scale
    hits: list[HitArea] = []
    p.save()
    p.setRenderHint(QPainter.RenderHint.Antialiasing, True)
    clip = QRectF(rect)
    path = QPainterPath()
    path.addRoundedRect(clip, radius, radius)
    p.setClipPath(path)
    p.setPen(Qt.PenStyle.NoPen)
    p.setBrush(t.headroom if row.capacity is not None else t.card)
    p.drawRoundedRect(clip, radius, radius)

    fm = QFontMetricsF(p.font())
    x = rect.left()
    budget = row.budget
    for key, nbytes in row.parts:
        if nbytes <= 0:
            continue
        w = nbytes * px
        seg = QRectF(x, rect.top(), w, rect.height())
        p.setBrush(t.segment(key))
        p.drawRect(seg.intersected(clip))
        hits.append(HitArea(seg, functools.partial(_part_tip, key, nbytes), key, nbytes))
        if show_text:
            label = LABELS[key][0]
            text = f"{label} {format_bytes(nbytes, 1)}"
            if fm.horizontalAdvance(text) + 8 > w:
                text = format_bytes(nbytes, 1)
            if fm.horizontalAdvance(text) + 8 <= w:
                p.setPen(QColor("white"))
                p.drawText(seg, Qt.AlignmentFlag.AlignCenter, text)
                p.setPen(Qt.PenStyle.NoPen)
        x += w

    if budget is not None and row.capacity is not None:
        # the reserve, pinned to the right end and hatched
        if row.reserve > 0:
            # right after the budget line, or after what spilled over it: never over a part
            rx = rect.left() + max(budget, row.used) * px
            res = QRectF(rx, rect.top(), row.reserve * px, rect.height())
            p.setBrush(t.reserve)
            p.drawRect(res)
            p.setBrush(QBrush(t.card, Qt.BrushStyle.BDiagPattern))
            p.drawRect(res)
            hits.append(HitArea(res, f"<b>Reserve: {format_bytes(row.reserve)}</b><br>"
                                f"{LABELS['reserve'][1]}"))
            if show_text and fm.horizontalAdvance("Reserve") + 8 <= res.width():
                p.setPen(t.text)
                p.drawText(res, Qt.AlignmentFlag.AlignCenter, "Reserve")
                p.setPen(Qt.PenStyle.NoPen)
        bx = rect.left() + budget * px
        if row.over > 0:
            over = QRectF(bx, rect.top(), row.over * px, rect.height())
            # translucent, so the parts that spill over (usually the cache) stay recognisable
            red = QColor(t.over)
            red.setAlpha(185)
            p.setBrush(QBrush(red))
            p.drawRect(over.intersected(clip))
            p.setBrush(QBrush(QColor(255, 255, 255, 110), Qt.BrushStyle.FDiagPattern))
            p.drawRect(over.intersected(clip))
            hits.append(HitArea(over, f"<b>Over budget by {format_bytes(row.over)}</b><br>"
                                "this much does not fit in the memory left after the reserve"))
            if show_text:
                text = f"over by {format_bytes(row.over, 2)}"
                if fm.horizontalAdvance(text) + 8 <= over.width():
                    p.setPen(QColor("white"))
                    p.drawText(over, Qt.AlignmentFlag.AlignCenter, text)
                    p.setPen(Qt.PenStyle.NoPen)
        else:
            free = QRectF(x, rect.top(), bx - x, rect.height())
            hits.append(HitArea(free, f"<b>Headroom: {format_bytes(row.headroom)}</b><br>"
                                "left inside the budget after everything else"))
            if show_text and row.headroom > 0:
                text = f"free {format_bytes(row.headroom, 1)}"
                if fm.horizontalAdvance(text) + 8 <= free.width():
                    p.setPen(t.ok)
                    p.drawText(free, Qt.AlignmentFlag.AlignCenter, text)
                    p.setPen(Qt.PenStyle.NoPen)
        # the budget line, drawn over everything and a little taller than the bar
        p.setClipping(False)
        pen = QPen(t.over if row.over > 0 else t.budget_line, 2.0)
        p.setPen(pen)
        p.drawLine(QPointF(bx, rect.top() - 3), QPointF(bx, rect.bottom() + 3))
    # outline: red and thick when over budget
    p.setClipping(False)
    p.setBrush(Qt.BrushStyle.NoBrush)
    if row.over > 0:
        p.setPen(QPen(t.over, 2.0))
    else:
        p.setPen(QPen(t.border, HAIRLINE))
    p.drawRoundedRect(clip.adjusted(0.5, 0.5, -0.5, -0.5), radius, radius)
    p.restore()
    return hits
