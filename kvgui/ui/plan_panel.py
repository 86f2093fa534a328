"""The planner's choices: the fastest way to run this cache type, the fastest at this context,
the longest context — each with its predicted decode speed and a button that applies it.

It draws a PlanView (kvgui.ui.viewmodel) and emits which choice was asked for; the
controller applies it. The speed is a prediction from memory bandwidth, so every row says
its range, and the tooltip what it is made of.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QGridLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from kvgui.ui.viewmodel import PlanView


class PlanPanel(QWidget):
    choiceApplied = Signal(int)  # index into PlanView.choices

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._view = PlanView(())
        self._grid = QGridLayout()
        self._grid.setHorizontalSpacing(12)
        self._grid.setVerticalSpacing(4)
        self._grid.setColumnStretch(1, 1)
        self.note = QLabel()
        self.note.setObjectName("muted")
        self.note.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(self._grid)
        lay.addWidget(self.note)
        self._rows: list[tuple[QLabel, QLabel, QLabel, QPushButton]] = []
        self.setAccessibleName("The planner's choices")

    @property
    def view(self) -> PlanView:
        return self._view

    def set_view(self, view: PlanView) -> None:
        if view == self._view:
            return
        self._view = view
        while len(self._rows) < len(view.choices):
            i = len(self._rows)
            title, summary, speed = QLabel(), QLabel(), QLabel()
            title.setObjectName("planTitle")
            font = title.font()
            font.setBold(True)
            title.setFont(font)
            summary.setWordWrap(True)
            speed.setFont(font)
            speed.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            use = QPushButton("Use")
            use.setToolTip("Apply this: context, cache types and placement")
            use.clicked.connect(lambda _c=False, i=i: self.choiceApplied.emit(i))
            for col, w in enumerate((title, summary, speed, use)):
                self._grid.addWidget(w, i, col)
            self._rows.append((title, summary, speed, use))
        for i, (title, summary, speed, use) in enumerate(self._rows):
            shown = i < len(view.choices)
            for w in (title, summary, speed, use):
                w.setVisible(shown)
            if not shown:
                continue
            c = view.choices[i]
            title.setText(c.title)
            summary.setText(c.summary)
            speed.setText(c.speed)
            for w in (title, summary, speed):
                w.setToolTip(c.detail)
            use.setEnabled(not c.current)
            use.setText("In use" if c.current else "Use")
        self.note.setText(view.note)
        self.note.setVisible(bool(view.note))
