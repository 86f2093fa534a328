"""The Serve window: the user's llama-server with exactly the exported settings, on 127.0.0.1.

It shows which llama-server runs (path, version, backends and devices from ``--version`` /
``--list-devices``), the command line (the export's, plus host and port), the OpenAI base URL
to copy into other apps, what llama.cpp allocated per device (from its log) beside kvgui's
estimate for the devices that build sees, and the server's log. Stop ends the server and its
process group; so does closing the window.
"""

from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMainWindow,
    QPlainTextEdit,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from kvgui.core.commandline.shellquote import render
from kvgui.core.config.settings import Settings
from kvgui.core.sizes import format_bytes
from kvgui.runtime.llama_log import LOGGED_PRECISION_BYTES
from kvgui.runtime.qt_server import ServerProcess
from kvgui.ui import theme
from kvgui.ui.labels import plain_label

PARTS = (("weights", "Weights"), ("kv", "KV cache"), ("compute", "Compute"),
         ("output", "Output"))
LOG_LINES_SHOWN = 2000


def rows_of(measured: dict[str, dict[str, int]], estimated: dict[str, dict[str, int]]
            ) -> list[tuple[str, str, int | None, int | None]]:
    """(device, part label, estimated, measured) for every device either side names."""
    devices = list(estimated) + [d for d in measured if d not in estimated]
    out = []
    for dev in devices:
        for key, label in PARTS:
            est = estimated.get(dev, {}).get(key)
            meas = measured.get(dev, {}).get(key)
            out.append((dev, label, est, meas))
    return out


class ServePanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.server = ServerProcess(self)
        self.server.ready.connect(self._on_ready)
        self.server.failed.connect(self._on_failed)
        self.server.stopped.connect(self._on_stopped)
        self.server.line.connect(self._on_line)
        self.model_path: str | None = None
        self.settings: Settings | None = None
        self.estimate: Any = None
        self.tool: Any = None
        self._build()
        self._sync()

    def _build(self) -> None:
        self.tool_label = QLabel("")
        self.tool_label.setWordWrap(True)
        self.tool_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status_label = plain_label("")
        self.status_label.setWordWrap(True)
        self.command_edit = QPlainTextEdit()
        self.command_edit.setReadOnly(True)
        self.command_edit.setMaximumHeight(70)
        self.url_label = QLabel("")
        self.url_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.copy_button = QPushButton("Copy URL")
        self.copy_button.clicked.connect(self.copy_url)
        self.start_button = QPushButton("Start")
        self.start_button.clicked.connect(lambda: self.restart())
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(lambda: self.stop())
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(
            ["Device", "Part", "Estimated", "llama-server", "Difference"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(LOG_LINES_SHOWN)
        self.log_view.setAccessibleName("llama-server log")

        url_row = QHBoxLayout()
        url_row.addWidget(QLabel("OpenAI base URL:"))
        url_row.addWidget(self.url_label, 1)
        url_row.addWidget(self.copy_button)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        buttons.addStretch(1)
        lay = QVBoxLayout(self)
        lay.addWidget(self.tool_label)
        lay.addWidget(QLabel("Command (the export's, plus host and port):"))
        lay.addWidget(self.command_edit)
        lay.addLayout(url_row)
        lay.addLayout(buttons)
        lay.addWidget(self.status_label)
        lay.addWidget(QLabel("Memory: what llama-server allocated vs kvgui's estimate"))
        lay.addWidget(self.table, 1)
        lay.addWidget(self.log_view, 1)

    # -- actions -------------------------------------------------------------------------

    def serve(self, tool: Any, model_path: str, settings: Settings, estimate: Any = None,
              port: int | None = None) -> bool:
        """Start llama-server (``tool``: a probed ``llama_bin.ToolInfo``)."""
        self.tool, self.model_path, self.settings, self.estimate = \
            tool, str(model_path), settings, estimate
        self.tool_label.setText(f"<b>{html.escape(str(tool.path))}</b><br>"
                                f"{html.escape(tool.summary())}")
        self.table.setRowCount(0)
        self.log_view.clear()
        self.url_label.setText("")
        started = self.server.start(tool, self.model_path, settings, port=port)
        self.command_edit.setPlainText(render(self.server.argv, "posix"))
        if started:
            self._set_status("loading the model…")
        self._sync()
        return started

    def restart(self) -> bool:
        if self.tool is None or self.model_path is None or self.settings is None:
            return False
        return self.serve(self.tool, self.model_path, self.settings, self.estimate)

    def stop(self) -> None:
        self.server.stop()
        self._sync()

    def copy_url(self) -> None:
        if self.url_label.text():
            QGuiApplication.clipboard().setText(self.url_label.text())

    @property
    def openai_url(self) -> str:
        return self.url_label.text()

    def shutdown(self) -> None:
        self.server.stop()

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    # -- server events -------------------------------------------------------------------

    def _on_ready(self, info: dict) -> None:
        self.url_label.setText(info["openai_url"])
        self._set_status(f"ready in {info['load_s']:.1f} s - point other apps at "
                         f"{info['openai_url']} (any API key)")
        self._fill_table()
        self._sync()

    def _on_failed(self, message: str) -> None:
        first, _, rest = message.partition("\n")
        self._set_status(first, error=True)
        self.status_label.setToolTip(rest)
        self._sync()

    def _on_stopped(self) -> None:
        self.url_label.setText("")
        self._set_status("stopped")
        self._sync()

    def _on_line(self, text: str) -> None:
        self.log_view.appendPlainText(text)

    def estimated(self) -> dict[str, dict[str, int]]:
        """kvgui's estimate for this llama-server: its devices, one output row per slot."""
        from kvgui.core.commandline.llama_params import server_settings
        from kvgui.core.memory.estimate import estimate
        from kvgui.core.model.info import load_model
        from kvgui.runtime.server import device_budgets, estimated_devices

        if self.settings is None or self.model_path is None:
            return {}
        model = self.estimate.model if self.estimate is not None else \
            load_model(self.model_path)
        est = estimate(model, server_settings(self.settings), device_budgets(self.tool))
        return estimated_devices(est)

    def _fill_table(self) -> None:
        t = theme.current()
        rows = rows_of(self.server.measured(), self.estimated())
        self.table.setRowCount(len(rows))
        for r, (dev, label, est, meas) in enumerate(rows):
            cells = [dev, label, "-" if est is None else format_bytes(est),
                     "-" if meas is None else format_bytes(meas)]
            if est is None or meas is None:
                diff, color = "", None
            elif abs(est - meas) <= 2 * LOGGED_PRECISION_BYTES:
                diff, color = "same", t.ok
            else:
                delta = meas - est
                diff = ("+" if delta > 0 else "-") + format_bytes(abs(delta))
                color = t.warn
            for c, text in enumerate([*cells, diff]):
                item = QTableWidgetItem(text)
                if c >= 2:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight
                                          | Qt.AlignmentFlag.AlignVCenter)
                if c == 4 and color is not None:
                    item.setForeground(color)
                self.table.setItem(r, c, item)

    def measured_rows(self) -> list[tuple[str, str, str, str, str]]:
        """The table as text (tests, and the log of a session)."""
        def text(r: int, c: int) -> str:
            item = self.table.item(r, c)
            return "" if item is None else item.text()

        return [(text(r, 0), text(r, 1), text(r, 2), text(r, 3), text(r, 4))
                for r in range(self.table.rowCount())]

    def _set_status(self, text: str, error: bool = False) -> None:
        t = theme.current()
        self.status_label.setStyleSheet(f"color: {(t.over if error else t.muted).name()};")
        self.status_label.setText(text)

    def _sync(self) -> None:
        running = self.server.running
        self.stop_button.setEnabled(running)
        self.start_button.setEnabled(not running and self.tool is not None)
        self.copy_button.setEnabled(bool(self.url_label.text()))


class ServeWindow(QMainWindow):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.panel = ServePanel(self)
        self.setCentralWidget(self.panel)
        self.setWindowTitle("kvgui serve")
        self.resize(980, 760)

    def serve(self, tool: Any, model_path: str, settings: Settings, estimate: Any = None,
              port: int | None = None) -> bool:
        self.setWindowTitle(f"kvgui serve - {model_path}")
        return self.panel.serve(tool, model_path, settings, estimate, port)

    def closeEvent(self, event) -> None:
        self.panel.shutdown()
        super().closeEvent(event)
