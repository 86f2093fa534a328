"""Labels for text kvgui does not write itself.

A QLabel guesses: text that looks like HTML is rendered as HTML (Qt::AutoText). A model path
or name, a llama.cpp log line or a worker's error is data from elsewhere -- a file named
``<b style="color:green">FITS ✔</b>.gguf`` must show as those characters (issue 18: "Untrusted
text is data"). Every label that shows such text is made here, in plain text.
"""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QWidget


def plain_label(text: str = "", parent: QWidget | None = None) -> QLabel:
    label = QLabel(parent)
    label.setTextFormat(Qt.TextFormat.PlainText)
    label.setText(text)
    return label
