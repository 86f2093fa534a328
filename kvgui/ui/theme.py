"""Colours and style for the window, for light and dark system palettes.

The segment colours are the product's visual language (the same in the big bar, the
per-type bars and the legend), so they live in one place. Dark or light follows the
system: Qt's colour-scheme hint where the platform has one, else the palette's lightness.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette


@dataclass(frozen=True)
class Theme:
    dark: bool
    weights: QColor
    kv_k: QColor
    kv_v: QColor
    state: QColor
    compute: QColor
    output: QColor
    reserve: QColor
    headroom: QColor
    over: QColor
    ok: QColor
    warn: QColor
    text: QColor
    muted: QColor
    card: QColor
    border: QColor
    budget_line: QColor
    accent: QColor

    def segment(self, key: str) -> QColor:
        color: QColor = getattr(self, key)
        return color

    def css(self, color: QColor) -> str:
        return color.name()


LIGHT = Theme(
    dark=False,
    weights=QColor("#5b6b82"),
    kv_k=QColor("#2f7fd8"),
    kv_v=QColor("#16a3a0"),
    state=QColor("#c2417a"),
    compute=QColor("#e3a21a"),
    output=QColor("#a066d3"),
    reserve=QColor("#b9bec7"),
    headroom=QColor("#e7f3ea"),
    over=QColor("#d93025"),
    ok=QColor("#1e8e3e"),
    warn=QColor("#b06000"),
    text=QColor("#1f2329"),
    muted=QColor("#6b7280"),
    card=QColor("#ffffff"),
    border=QColor("#d8dce3"),
    budget_line=QColor("#1f2329"),
    accent=QColor("#2f7fd8"),
)

DARK = Theme(
    dark=True,
    weights=QColor("#7d8ca3"),
    kv_k=QColor("#4c9bf0"),
    kv_v=QColor("#2cc4bf"),
    state=QColor("#e0609a"),
    compute=QColor("#f0b43c"),
    output=QColor("#b98ae6"),
    reserve=QColor("#535a66"),
    headroom=QColor("#1f3327"),
    over=QColor("#ff5a4f"),
    ok=QColor("#4cc26a"),
    warn=QColor("#f0a640"),
    text=QColor("#e6e8eb"),
    muted=QColor("#9aa3ae"),
    card=QColor("#24272d"),
    border=QColor("#3a3f47"),
    budget_line=QColor("#f2f3f5"),
    accent=QColor("#4c9bf0"),
)

def is_dark() -> bool:
    app = QGuiApplication.instance()
    if app is None:
        return False
    scheme = QGuiApplication.styleHints().colorScheme()
    if scheme == Qt.ColorScheme.Dark:
        return True
    if scheme == Qt.ColorScheme.Light:
        return False
    return QGuiApplication.palette().color(QPalette.ColorRole.Window).lightness() < 128


_current: Theme | None = None


def current() -> Theme:
    global _current
    if _current is None:
        _current = DARK if is_dark() else LIGHT
    return _current


def refresh() -> Theme:
    """Re-read the system scheme (on QStyleHints.colorSchemeChanged)."""
    global _current
    _current = None
    return current()


def stylesheet(t: Theme) -> str:
    """A light touch over the platform style: card frames, headline type, banners."""
    return f"""
    QFrame#card {{
        background: {t.card.name()};
        border: 1px solid {t.border.name()};
        border-radius: 8px;
    }}
    QLabel#cardTitle {{
        font-weight: 600; letter-spacing: 0.5px; color: {t.muted.name()};
    }}
    QLabel#headline {{ font-size: 17pt; font-weight: 600; }}
    QLabel#subhead {{ color: {t.muted.name()}; }}
    QLabel#muted {{ color: {t.muted.name()}; }}
    QLabel#ctxValue {{ font-size: 15pt; font-weight: 600; }}
    QLabel#errorBanner {{
        background: {t.over.name()}; color: white; border-radius: 6px; padding: 8px 10px;
        font-weight: 600;
    }}
    QLabel#warnBanner {{
        color: {t.warn.name()}; padding: 2px 0;
    }}
    QToolButton#preset {{
        padding: 5px 10px; border: 1px solid {t.border.name()}; border-radius: 6px;
    }}
    QToolButton#preset:hover {{ border-color: {t.accent.name()}; }}
    """
