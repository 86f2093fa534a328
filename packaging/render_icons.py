"""Render resources/kvgui.svg to the PNG sizes desktops look up (the freedesktop hicolor theme).

Run after changing the SVG: ``python packaging/render_icons.py``. It writes
``resources/icons/hicolor/<n>x<n>/apps/kvgui.png``, which build.sh copies into the bundle's
``share/icons`` and which Windows/macOS packaging can turn into .ico/.icns. Rendered with Qt's
own SVG renderer, so the PNGs look like the icon the window shows.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

SIZES = (16, 22, 24, 32, 48, 64, 128, 256, 512)
ROOT = Path(__file__).resolve().parents[1]


def render(svg: Path, out_dir: Path, sizes: tuple[int, ...] = SIZES) -> list[Path]:
    """Write one PNG per size under ``out_dir``/<n>x<n>/apps/; returns the paths written."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # fonts for <text>
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"render_icons: {svg} is not a valid SVG")
    written = []
    for n in sizes:
        image = QImage(n, n, QImage.Format.Format_ARGB32_Premultiplied)
        image.fill(Qt.GlobalColor.transparent)
        painter = QPainter(image)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        renderer.render(painter)
        painter.end()
        path = out_dir / f"{n}x{n}" / "apps" / f"{svg.stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not image.save(str(path)):  # format from the .png suffix
            raise SystemExit(f"render_icons: could not write {path}")
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--svg", type=Path, default=ROOT / "resources" / "kvgui.svg")
    parser.add_argument("--out", type=Path, default=ROOT / "resources" / "icons" / "hicolor")
    args = parser.parse_args(argv)
    for path in render(args.svg, args.out):
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
