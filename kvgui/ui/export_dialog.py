"""Export: the settings as a llama-cli / llama-server command or llama-cpp-python code.

The argument lists come from kvgui.core.commandline.export (one Settings object, pure
builders) and are rendered for the chosen shell by kvgui.core.commandline.shellquote; copy to
the clipboard or save a script.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from kvgui.core.commandline import export as cmdline
from kvgui.core.commandline import shellquote
from kvgui.core.config.settings import Settings

FORMATS = (("llama-cli", "llama-cli"), ("llama-server", "llama-server"),
           ("Python (llama-cpp-python)", "python"))
SHELLS = (("POSIX shell (bash, zsh)", "posix"), ("PowerShell", "powershell"),
          ("Windows cmd", "cmd"))
SCRIPT_SUFFIX = {"posix": ".sh", "powershell": ".ps1", "cmd": ".cmd"}


def render_export(settings: Settings, model_path: str, fmt: str, shell: str, full: bool,
                  flash_attn_resolved: bool | None = None) -> tuple[str, list[str]]:
    """(text, notes) for one format: a command line, or Python code."""
    if fmt == "python":
        text = cmdline.python_snippet(settings, model_path,
                                      flash_attn_resolved=flash_attn_resolved, full=full)
        return text, cmdline.export_notes(settings, "python")
    if fmt == "llama-server":
        args = cmdline.llama_server_args(settings, model_path, full=full)
    else:
        args = cmdline.llama_cli_args(settings, model_path, full=full)
    notes = cmdline.export_notes(settings, fmt)
    try:
        return shellquote.render(args, shell, multiline=True), notes
    except shellquote.UnsafeForShell as exc:  # shown instead of a command that would misfire
        return f"# cannot be written for {shell}: {exc}", notes


class ExportDialog(QDialog):
    def __init__(self, settings: Settings, model_path: str, flash_attn_resolved: bool | None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export command")
        self.resize(760, 420)
        self._settings = settings
        self._model = model_path
        self._fa = flash_attn_resolved
        self.fmt = QComboBox()
        for label, key in FORMATS:
            self.fmt.addItem(label, key)
        self.shell = QComboBox()
        for label, key in SHELLS:
            self.shell.addItem(label, key)
        self.full = QCheckBox("every flag (not only non-defaults)")
        self.full.setToolTip("-c and -ngl are always written: newer llama.cpp would otherwise "
                             "auto-fit and may change them")
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.notes = QLabel()
        self.notes.setWordWrap(True)
        self.notes.setObjectName("muted")
        copy = QPushButton("Copy")
        copy.setToolTip("Copy to the clipboard")
        copy.clicked.connect(self.copy)
        save = QPushButton("Save as script…")
        save.clicked.connect(self.save)
        top = QHBoxLayout()
        top.addWidget(self.fmt)
        top.addWidget(self.shell)
        top.addWidget(self.full)
        top.addStretch(1)
        bottom = QHBoxLayout()
        bottom.addWidget(copy)
        bottom.addWidget(save)
        bottom.addStretch(1)
        box = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        box.rejected.connect(self.reject)
        bottom.addWidget(box)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.text, 1)
        lay.addWidget(self.notes)
        lay.addLayout(bottom)
        for w in (self.fmt, self.shell):
            w.currentIndexChanged.connect(self.refresh)
        self.full.toggled.connect(self.refresh)
        self.refresh()

    def current(self) -> tuple[str, list[str]]:
        return render_export(self._settings, self._model, self.fmt.currentData(),
                             self.shell.currentData(), self.full.isChecked(), self._fa)

    def refresh(self) -> None:
        self.shell.setEnabled(self.fmt.currentData() != "python")
        text, notes = self.current()
        self.text.setPlainText(text)
        self.notes.setText("\n".join(f"• {n}" for n in notes))

    def copy(self) -> None:
        QGuiApplication.clipboard().setText(self.text.toPlainText())

    def save(self) -> None:
        fmt, shell = self.fmt.currentData(), self.shell.currentData()
        suffix = ".py" if fmt == "python" else SCRIPT_SUFFIX[shell]
        path, _ = QFileDialog.getSaveFileName(self, "Save script", f"run-{fmt}{suffix}")
        if not path:
            return
        if fmt == "python":
            content = self.current()[0]
        else:
            args = (cmdline.llama_server_args if fmt == "llama-server" else
                    cmdline.llama_cli_args)(self._settings, self._model,
                                            full=self.full.isChecked())
            try:
                content = shellquote.script(args, shell)
            except shellquote.UnsafeForShell as exc:
                QMessageBox.warning(self, "Save script", f"Cannot write this for {shell}: {exc}")
                return
        try:
            # written verbatim: shellquote.script already uses CRLF for cmd
            Path(path).write_text(content, encoding="utf-8", newline="")
            if suffix == ".sh":
                Path(path).chmod(0o755)
        except OSError as exc:
            QMessageBox.warning(self, "Save script", f"Could not save: {exc.strerror}")
