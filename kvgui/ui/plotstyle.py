"""The house style of kvgui's pyqtgraph plots: a chart to read, not a canvas to pan."""

from __future__ import annotations

from typing import Any


def quiet_plot(plot: Any, left: str, bottom: str, min_height: int) -> Any:
    """No context menu, no auto-range button, no mouse pan/zoom, a faint grid; labelled axes.
    Returns the plot item."""
    pi = plot.getPlotItem()
    pi.setMenuEnabled(False)
    pi.hideButtons()
    pi.showGrid(x=True, y=True, alpha=0.15)
    pi.setLabel("left", left)
    pi.setLabel("bottom", bottom)
    plot.setMouseEnabled(x=False, y=False)
    plot.setMinimumHeight(min_height)
    return pi
