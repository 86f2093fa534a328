"""Verify with the user's llama.cpp: llama-fit-params' per-device figures beside the estimate.

The exact GPU check any GPU owner can run: their own llama.cpp build (CUDA, Vulkan, Metal…)
loads the header with no_alloc on their devices and prints what it would allocate; kvgui's
estimate for the same devices stands beside it, in the same rounding (MiB, rounded down).
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from kvgui.core.commandline.shellquote import render
from kvgui.core.config.settings import Settings
from kvgui.runtime.qt_fit_params import FitParamsProcess
from kvgui.ui import theme

COLUMNS = ("Device", "Part", "llama.cpp (MiB)", "kvgui (MiB)", "Difference")


class FitParamsDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Verify with your llama.cpp (llama-fit-params)")
        self.resize(760, 460)
        self.process = FitParamsProcess(self)
        self.process.done.connect(self._on_done)
        self.title = QLabel("")
        self.title.setWordWrap(True)
        self.command = QPlainTextEdit()
        self.command.setReadOnly(True)
        self.command.setMaximumHeight(60)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().hide()
        lay = QVBoxLayout(self)
        lay.addWidget(self.title)
        lay.addWidget(self.command)
        lay.addWidget(self.table, 1)
        self.tool: Any = None
        self.model_path = ""
        self.estimate_for: Any = None  # settings -> Estimate on the tool's devices
        self.rows: list[tuple[str, str, int, int | None]] = []

    def run(self, tool: Any, model_path: str, settings: Settings, estimate_for: Any) -> None:
        """``estimate_for(settings)`` gives kvgui's estimate for the tool's devices."""
        self.tool, self.model_path, self.estimate_for = tool, model_path, estimate_for
        self.title.setText(f"<b>{tool.path}</b> — {tool.summary()}<br>running…")
        self.table.setRowCount(0)
        self.process.start(tool, settings, model_path)
        self.command.setPlainText(render(self.process.argv, "posix"))

    def shutdown(self) -> None:
        self.process.shutdown()

    def closeEvent(self, event) -> None:
        self.shutdown()
        super().closeEvent(event)

    def _on_done(self, settings: Settings, rows: Any, error: str) -> None:
        if rows is None:
            self.title.setText(f"<b>llama-fit-params failed:</b> {error}")
            return
        from kvgui.runtime.fit_params import compare

        est = self.estimate_for(settings)
        self.rows = []
        for theirs, mine in compare(rows, est):
            for part, attr in (("model", "model_mib"), ("context", "context_mib"),
                               ("compute", "compute_mib")):
                self.rows.append((theirs.device, part, getattr(theirs, attr),
                                  None if mine is None else getattr(mine, attr)))
        t = theme.current()
        self.table.setRowCount(len(self.rows))
        for r, (dev, part, theirs_mib, mine_mib) in enumerate(self.rows):
            if mine_mib is None:
                diff, color = "not in the estimate", t.warn
            elif mine_mib == theirs_mib:
                diff, color = "same", t.ok
            else:
                diff, color = f"{mine_mib - theirs_mib:+d} MiB", t.warn
            values = [dev, part, str(theirs_mib), "-" if mine_mib is None else str(mine_mib),
                      diff]
            for c, text in enumerate(values):
                item = QTableWidgetItem(text)
                if c >= 2:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight
                                          | Qt.AlignmentFlag.AlignVCenter)
                if c == 4:
                    item.setForeground(color)
                self.table.setItem(r, c, item)
        self.title.setText(f"<b>{self.tool.path}</b> — {self.tool.summary()}<br>"
                           "what your llama.cpp would allocate (no_alloc, -fit off) beside "
                           "kvgui's estimate for the same devices")
