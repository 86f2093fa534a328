"""Models on this machine: the GGUFs the Hub cache, llama.cpp, LM Studio and ollama already
hold, and the recent files -- name, quant, size and where -- to open with one click.

The scan (kvgui.sources.local_models: directory walks and header reads) runs in a thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from kvgui.core.sizes import format_bytes

log = logging.getLogger(__name__)


class _Bridge(QObject):
    found = Signal(object, str)  # list[LocalModel], error


class LocalModelsDialog(QDialog):
    """``modelChosen(str)`` carries what to open: a path, or "hf:repo:TAG"."""

    modelChosen = Signal(str)
    COLUMNS = ("name", "quant", "size", "where", "file")

    def __init__(self, recent: Sequence[str] = (), parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Models on this machine")
        self.resize(900, 480)
        self.models: list[Any] = []
        self._bridge = _Bridge(self)
        self._bridge.found.connect(self._on_found)
        self.status = QLabel("Looking in the Hub cache, llama.cpp's cache, LM Studio, ollama…")
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(
            len(self.COLUMNS) - 1, QHeaderView.ResizeMode.Stretch)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.open_row(row))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open
                                   | QDialogButtonBox.StandardButton.Close)
        buttons.accepted.connect(self._open_selected)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.status)
        lay.addWidget(self.table, 1)
        lay.addWidget(buttons)
        recent = list(recent)

        def work() -> None:
            from kvgui.sources.local_models import find_local_models

            try:
                self._bridge.found.emit(find_local_models(recent), "")
            except Exception as exc:  # a scan must never break the dialog: one line
                log.warning("scanning for local models failed: %s", exc)
                self._bridge.found.emit([], str(exc))

        threading.Thread(target=work, name="kvgui-local-models", daemon=True).start()

    def _on_found(self, models: list[Any], error: str) -> None:
        self.models = models
        self.table.setRowCount(len(models))
        for i, m in enumerate(models):
            for j, text in enumerate((m.name, m.quant, format_bytes(m.size), m.origin,
                                      str(m.path))):
                item = QTableWidgetItem(text)
                item.setToolTip(m.ref)
                self.table.setItem(i, j, item)
        self.table.resizeColumnsToContents()
        self.status.setText(error or f"{len(models)} models found"
                            if models else (error or "No GGUF models found on this machine"))

    def _open_selected(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if rows:
            self.open_row(rows[0].row())

    def open_row(self, row: int) -> None:
        if 0 <= row < len(self.models):
            self.modelChosen.emit(self.models[row].ref)
            self.accept()
