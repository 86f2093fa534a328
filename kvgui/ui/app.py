"""Start the window: the QApplication, HiDPI, the app icon, persisted settings, the model."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QApplication

from kvgui import __version__
from kvgui.core.config.appconfig import load_config


def make_app(argv: Sequence[str] = ()) -> QApplication:
    app = QApplication.instance()
    if isinstance(app, QApplication):
        return app
    # fractional scale factors as the OS reports them (no rounding to 1x/2x): sharp on HiDPI
    QGuiApplication.setHighDpiScaleFactorRoundingPolicy(
        Qt.HighDpiScaleFactorRoundingPolicy.PassThrough)
    app = QApplication([sys.argv[0] if sys.argv else "kvgui", *argv])
    app.setApplicationName("kvgui")
    app.setApplicationDisplayName("kvgui")
    app.setApplicationVersion(__version__)
    app.setOrganizationName("kvgui")
    app.setDesktopFileName("io.github.kvgui")
    if sys.platform.startswith("linux") and app.style().name().lower() == "windows":
        app.setStyle("Fusion")  # Qt's bare fallback style looks dated; Fusion follows palettes
    return app


def run(model_path: str | None = None) -> int:
    """Open the window (on ``model_path`` if given) and run until it closes."""
    app = make_app()
    from kvgui.ui.main_window import MainWindow, app_icon

    app.setWindowIcon(app_icon())
    loaded = load_config()
    win = MainWindow(loaded.config)
    screen = app.primaryScreen()
    small = screen is not None and screen.availableGeometry().width() < 1700
    if small and not win.geometry_restored:
        win.showMaximized()  # first start on a laptop-sized screen: use all of it
    else:
        win.show()
    if loaded.warning:
        win.statusBar().showMessage(loaded.warning, 20000)
    win.open_initial(model_path)
    return int(app.exec())
