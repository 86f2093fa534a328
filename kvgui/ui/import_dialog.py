"""Import: paste a llama-cli / llama-server command line and the controls take its values.

Parsing is kvgui.core.commandline.parse.parse_command; flags kvgui does not model are listed, not
dropped, so the user sees what the estimate leaves out.
"""

from __future__ import annotations

import dataclasses

from PySide6.QtCore import QMimeData, Qt, Signal
from PySide6.QtGui import QFontDatabase
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QVBoxLayout,
    QWidget,
)

from kvgui.core.commandline.arg_table import split_for_tool
from kvgui.core.commandline.parse import (
    MAX_COMMAND_CHARS,
    CommandParseError,
    ParsedCommand,
    parse_command,
)
from kvgui.core.config.settings import Settings

FIELDS = tuple(f.name for f in dataclasses.fields(Settings))  # every one: none is dropped


def describe(parsed: ParsedCommand) -> str:
    """What the command sets, and what kvgui keeps aside, as a few lines of text."""
    s = parsed.settings
    lines = []
    if parsed.model_path:
        lines.append(f"model: {parsed.model_path}")
    for name in FIELDS:
        if name in parsed.given and name != "extra_args":
            value = getattr(s, name)
            lines.append(f"{name}: {getattr(value, 'value', value)}")
    if parsed.ctx_from_model:
        lines.append("n_ctx: the model's trained context (no -c)")
    if s.extra_args:
        _, not_cli = split_for_tool("llama-cli", s.extra_args)
        _, not_server = split_for_tool("llama-server", s.extra_args)
        lines.append("kept and passed on (not modelled): " + " ".join(s.extra_args))
        if not_cli:
            lines.append("  llama-cli does not take: " + " ".join(not_cli))
        if not_server:
            lines.append("  llama-server does not take: " + " ".join(not_server))
    lines += [f"⚠ {w}" for w in parsed.warnings]
    return "\n".join(lines) or "nothing kvgui models is set by this command"


class CommandEdit(QPlainTextEdit):
    """The paste box. A paste that would make the text longer than any command kvgui reads
    is not inserted (laying out a 1 MB line froze the dialog for seconds, 140 s before the
    parser's own cap); ``refused`` says why, and the text already there stays."""

    refused = Signal(str)

    def insertFromMimeData(self, source: QMimeData) -> None:
        if source.hasText():
            incoming = len(source.text())
            if len(self.toPlainText()) + incoming > MAX_COMMAND_CHARS:
                self.refused.emit(f"Not pasted: {incoming:,} characters; kvgui reads a "
                                  f"command of up to {MAX_COMMAND_CHARS:,} (paste a single "
                                  "command)")
                return
        super().insertFromMimeData(source)


class ImportDialog(QDialog):
    def __init__(self, base: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Import a llama.cpp command")
        self.resize(720, 400)
        self._base = base
        self.parsed: ParsedCommand | None = None
        self.edit = CommandEdit()
        self.edit.setPlaceholderText("llama-server -m model.gguf -c 32768 -ctk q8_0 -ctv q8_0 "
                                     "-fa on -ngl 99")
        self.edit.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.preview = QLabel()
        self.preview.setTextFormat(Qt.TextFormat.PlainText)  # the pasted text is data
        self.preview.setWordWrap(True)
        self.box = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                    | QDialogButtonBox.StandardButton.Cancel)
        self.box.button(QDialogButtonBox.StandardButton.Ok).setText("Apply")
        self.box.accepted.connect(self.accept)
        self.box.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(QLabel("Paste a llama-cli or llama-server command line (POSIX shell, "
                             "PowerShell or cmd):"))
        lay.addWidget(self.edit, 1)
        lay.addWidget(self.preview)
        lay.addWidget(self.box)
        self.edit.textChanged.connect(self.reparse)
        self.edit.refused.connect(self.preview.setText)
        self.reparse()

    def reparse(self) -> None:
        ok = self.box.button(QDialogButtonBox.StandardButton.Ok)
        text = self.edit.toPlainText()
        if not text.strip():
            self.parsed = None
            self.preview.setText("")
            ok.setEnabled(False)
            return
        try:
            self.parsed = parse_command(text, base=self._base)
        except CommandParseError as exc:
            self.parsed = None
            self.preview.setText(f"Cannot read this command: {exc}")
            ok.setEnabled(False)
            return
        self.preview.setText(describe(self.parsed))
        ok.setEnabled(True)

