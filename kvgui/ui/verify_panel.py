"""Verify with llama.cpp: its own dry run beside kvgui's estimate, with the differences.

The dry run (kvgui.runtime.dryrun) loads the file's header with no_alloc in a child process,
run by the window's process runner (kvgui.runtime.qt_dryrun) so the window stays live; the
result is shown as a small table: weights, KV cache, compute, output, total — kvgui,
llama.cpp, difference.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QGridLayout, QLabel, QVBoxLayout, QWidget

from kvgui.core.memory.estimate import PARTS
from kvgui.core.sizes import format_bytes
from kvgui.runtime.qt_dryrun import DryRunProcess
from kvgui.ui import theme
from kvgui.ui.labels import plain_label

# every part of the estimate, then the KV sum and the total
ROWS = (*PARTS, ("kv", "KV cache"), ("total", "Total"))


# The dry run on the one process runner (kept under this name for the main window).
VerifyRunner = DryRunProcess


class VerifyPanel(QWidget):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = plain_label()
        self.title.setTextFormat(Qt.TextFormat.PlainText)  # llama.cpp's reason is its text
        self.title.setObjectName("cardTitle")
        self.grid = QGridLayout()
        self.grid.setHorizontalSpacing(22)
        self.grid.setVerticalSpacing(2)
        self.grid.setColumnStretch(4, 1)  # keep the table compact, at the left
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.layout_label = QLabel()
        self.layout_label.setObjectName("muted")
        self.layout_label.setWordWrap(True)
        self.layout_label.setTextFormat(Qt.TextFormat.PlainText)
        lay.addWidget(self.title)
        lay.addWidget(self.layout_label)
        lay.addLayout(self.grid)
        self._cells: dict[tuple[int, int], QLabel] = {}
        for c, head in enumerate(("", "kvgui", "llama.cpp", "difference")):
            self._cell(0, c, head, muted=True)
        for r, (_key, label) in enumerate(ROWS, start=1):
            self._cell(r, 0, label, muted=True)
        self.hide()

    def _cell(self, r: int, c: int, text: str, muted: bool = False) -> QLabel:
        lab = self._cells.get((r, c))
        if lab is None:
            lab = QLabel()
            if c:
                lab.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.grid.addWidget(lab, r, c)
            self._cells[(r, c)] = lab
        if muted:
            lab.setObjectName("muted")
        lab.setText(text)
        return lab

    def show_running(self) -> None:
        self.title.setText("VERIFYING WITH LLAMA.CPP…")
        self.show()

    def show_error(self, reason: str) -> None:
        self.title.setText(f"LLAMA.CPP DRY RUN FAILED: {reason}")
        for r in range(1, len(ROWS) + 1):
            for c in (1, 2, 3):
                self._cell(r, c, "")
        self.show()

    def show_result(self, estimate: Any, llama: Any, layout: str = "") -> None:
        """``estimate``: kvgui Estimate for the dry run's devices; ``llama``: runtime
        LlamaCppMemory; ``layout``: which layout this verifies (one line)."""
        t = theme.current()
        mine = estimate.memory_json()
        theirs = llama.memory()
        self.title.setText(f"LLAMA.CPP DRY RUN — n_ctx {llama.n_ctx or '?'}, flash attention "
                           f"{'on' if llama.flash_attn else 'off'}")
        self.layout_label.setText(layout)
        self.layout_label.setVisible(bool(layout))
        for r, (key, _label) in enumerate(ROWS, start=1):
            a, b = int(mine.get(key, 0)), int(theirs.get(key, 0))
            self._cell(r, 1, format_bytes(a))
            self._cell(r, 2, format_bytes(b))
            d = a - b
            rel = abs(d) / b if b else 0.0
            # llama.cpp logs some buffers in MiB with two decimals: closer than that is "same"
            same = abs(d) < 10 * 1024
            cell = self._cell(r, 3, "same" if same else f"{'+' if d > 0 else '−'}"
                              f"{format_bytes(abs(d))} ({rel:.1%})")
            color = t.ok if rel < 0.01 else (t.warn if rel < 0.05 else t.over)
            cell.setStyleSheet(f"color: {color.name()}")
        self.show()
