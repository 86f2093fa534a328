"""Memory against context, one line per cache type, with the budget line and a cursor.

Both axes are linear (memory grows linearly with context, so the slopes compare the cache
types honestly); y is GiB on the main device. A dot marks where each type stops fitting
(the largest context that fits).
Curves are redrawn only when the model or a setting other than the context changes; a
slider step only moves the cursor.
"""

from __future__ import annotations

import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import QGraphicsItem, QWidget

from kvgui.core.sizes import GiB, format_tokens
from kvgui.ui import theme
from kvgui.ui.plotstyle import quiet_plot
from kvgui.ui.viewmodel import Curves

# one colour per pair, f16 (most memory) to q4_0 (least), mixed last
PAIR_COLORS = ("#e8544e", "#f39c34", "#d8c038", "#8bc34a", "#26a69a", "#29b6f6",
               "#5c6bc0", "#ab47bc", "#8d6e63")


def pair_label(pair: tuple[str, str]) -> str:
    return pair[0] if pair[0] == pair[1] else f"{pair[0]}/{pair[1]}"


class _Cursor(QWidget):
    """The slider's position as a thin line over the plot's viewport.

    A child widget, not a scene item: moving it repaints two thin strips of the plot, not the
    whole scene with its axes and grid, which keeps a slider step well inside one frame.
    """

    WIDTH = 3

    def __init__(self, parent: QWidget) -> None:
        super().__init__(parent)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)
        self.setAttribute(Qt.WidgetAttribute.WA_NoSystemBackground)
        self.color = QColor("#2f7fd8")

    def paintEvent(self, ev) -> None:
        p = QPainter(self)
        p.fillRect(self.rect().adjusted(1, 0, -1, 0), self.color)
        p.end()


class ContextPlot(pg.PlotWidget):
    def __init__(self, curves: Curves | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent=parent)
        self._curves: Curves | None = None
        self._items: list[pg.GraphicsObject] = []
        pi = quiet_plot(self, "memory (GiB)", "context (tokens)", 260)
        self.legend = pi.addLegend(offset=(8, 8), labelTextSize="8pt", colCount=2,
                                   brush=pg.mkBrush(255, 255, 255, 0))
        self.budget_line = pg.InfiniteLine(angle=0, movable=False)
        pi.addItem(self.budget_line, ignoreBounds=True)
        self.cursor = _Cursor(self.viewport())
        self._cursor_x = 0.0
        pi.getViewBox().sigResized.connect(self._place_cursor)
        pi.getViewBox().sigRangeChanged.connect(self._place_cursor)
        self.budget_text = pg.TextItem(anchor=(0, 1))
        pi.addItem(self.budget_text, ignoreBounds=True)
        self.setToolTip("Memory on the main device against context length for each KV cache "
                        "type. The horizontal line is the budget; each curve's dot marks the "
                        "largest context that fits; the vertical line is the slider.")
        self.apply_theme()
        if curves is not None:
            self.set_curves(curves)

    def apply_theme(self) -> None:
        t = theme.current()
        self.setBackground(t.card)
        for name in ("left", "bottom"):
            ax = self.getPlotItem().getAxis(name)
            ax.setPen(pg.mkPen(t.muted))
            ax.setTextPen(pg.mkPen(t.muted))
        self.budget_line.setPen(pg.mkPen(t.budget_line, width=2, style=Qt.PenStyle.DashLine))
        self.cursor.color = t.accent
        self.budget_text.setColor(t.text)
        bg = QColor(t.card)
        bg.setAlpha(215)  # lines stay visible under the legend, its text stays readable
        self.legend.setBrush(pg.mkBrush(bg))
        if self._curves is not None:
            self.set_curves(self._curves, force=True)

    @property
    def curves(self) -> Curves | None:
        return self._curves

    def set_curves(self, curves: Curves, force: bool = False) -> None:
        if curves == self._curves and not force:
            return
        self._curves = curves
        pi = self.getPlotItem()
        for item in self._items:
            pi.removeItem(item)
        self._items = []
        self.legend.clear()
        if not curves.xs:
            return
        xs = [float(x) for x in curves.xs]
        top = 0.0
        for i, (pair, ys) in enumerate(curves.ys.items()):
            pts = [(x, y / GiB) for x, y in zip(xs, ys, strict=False) if y >= 0]
            if not pts:
                continue
            color = QColor(PAIR_COLORS[i % len(PAIR_COLORS)])
            current = pair == curves.current
            pen = QPen(color)
            pen.setWidthF(3.2 if current else 1.6)
            pen.setCosmetic(True)
            item = pi.plot([p[0] for p in pts], [p[1] for p in pts], pen=pen,
                           name=pair_label(pair) + ("  (current)" if current else ""))
            if current:
                item.setZValue(10)
            self._items.append(item)
            top = max(top, max(p[1] for p in pts))
            limit = curves.limits.get(pair)
            m = limit.raw if limit is not None else None
            if m and curves.xs[0] <= m <= curves.xs[-1]:
                y_at = _interp(curves.xs, ys, m) / GiB
                dot = pg.ScatterPlotItem([float(m)], [y_at], size=9, brush=color,
                                         pen=pg.mkPen(theme.current().card, width=1.5))
                dot.setToolTip(f"{pair_label(pair)}: {limit.tooltip}" if limit else "")
                pi.addItem(dot)
                self._items.append(dot)
        budget = curves.budget
        if budget is not None:
            self.budget_line.setValue(budget / GiB)
            self.budget_line.show()
            self.budget_text.setText(f"budget {budget / GiB:.1f} GiB")
            self.budget_text.setPos(curves.xs[-1] * 0.015, budget / GiB)  # clear of the axis
            self.budget_text.show()
            # show the region around the budget: the lines' crossings are what matter
            top = min(max(top, budget / GiB), 2.2 * budget / GiB)
        else:
            self.budget_line.hide()
            self.budget_text.hide()
        if curves.trained and curves.trained <= curves.xs[-1]:
            trained = pg.InfiniteLine(pos=float(curves.trained), angle=90, movable=False,
                                      pen=pg.mkPen(theme.current().muted, width=1,
                                                   style=Qt.PenStyle.DotLine),
                                      label="trained", labelOpts={
                                          "position": 0.04, "color": theme.current().muted})
            pi.addItem(trained, ignoreBounds=True)
            self._items.append(trained)
        ax = pi.getAxis("bottom")
        step = 1024
        while curves.xs[-1] / step > 8:
            step *= 2
        ticks = [(float(n), format_tokens(n)) for n in range(0, curves.xs[-1] + 1, step)]
        ticks[0] = (0.0, "0")
        ax.setTicks([ticks, []])
        pi.setXRange(0, xs[-1], padding=0.01)
        pi.setYRange(0, top * 1.08 if top else 1, padding=0)
        pi.setLabel("left", f"{curves.device} memory (GiB)")
        self._cache_items()

    def _cache_items(self) -> None:
        """Each scene item keeps a pixmap of itself: the repaints a moving cursor causes then
        blit pixmaps instead of replaying axes, grid and nine curves."""
        for item in self.scene().items():
            item.setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)

    def set_cursor(self, n_ctx: int) -> None:
        self._cursor_x = float(n_ctx)
        self._place_cursor()

    @property
    def cursor_value(self) -> float:
        return self._cursor_x

    def _place_cursor(self, *_args: object) -> None:
        vb = self.getPlotItem().getViewBox()
        rect = vb.sceneBoundingRect()
        x_scene = vb.mapViewToScene(QPointF(self._cursor_x, 0)).x()
        top = self.mapFromScene(QPointF(x_scene, rect.top()))
        bottom = self.mapFromScene(QPointF(x_scene, rect.bottom()))
        w = _Cursor.WIDTH
        inside = rect.left() <= x_scene <= rect.right()
        self.cursor.setGeometry(top.x() - w // 2, top.y(), w, max(1, bottom.y() - top.y()))
        self.cursor.setVisible(inside)


def _interp(xs: tuple[int, ...], ys: tuple[int, ...], x: int) -> float:
    for i in range(1, len(xs)):
        if xs[i] >= x:
            x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
            if x1 == x0:
                return float(y1)
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return float(ys[-1])
