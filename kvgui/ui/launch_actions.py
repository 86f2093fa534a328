"""Launching from the main window: chat, Serve, Open in terminal, Verify with your llama.cpp,
and Settings ▸ llama.cpp folder. The main window creates one ``LaunchActions`` and calls it
from a few marked lines; everything else about launching lives here.

One model copy at a time: Launch chat brings an open chat forward rather than loading the
model a second time; when its model or settings differ, it asks first whether to relaunch it
(the running one is stopped first). Serve does the same for its window.

The host (the main window) provides ``ctl.model_source``, ``ctl.settings``,
``ctl.snapshot.estimate``, ``config`` (AppConfig: ``llama_cpp_folder``) and a status bar.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QFileDialog, QMenu, QMessageBox, QWidget

from kvgui.core.config.settings import Settings
from kvgui.runtime.llama_bin import (
    LLAMA_CLI,
    LLAMA_FIT_PARAMS,
    LLAMA_SERVER,
    MISSING_HINT,
    ToolError,
    ToolInfo,
    find_tool,
    require_tool,
)

log = logging.getLogger(__name__)
CATALOG_PREFIX = "catalog:"
BUSY = ("starting", "loading", "ready", "generating")

Ask = Callable[[str, str], bool]


def ask_user(parent: QWidget) -> Ask:
    def ask(title: str, text: str) -> bool:
        answer = QMessageBox.question(
            parent, title, text,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes
    return ask


class LaunchActions(QObject):
    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self.window = window
        self.ask: Ask = ask_user(window)
        self.chats: list[Any] = []
        self.serve_windows: list[Any] = []
        self.dialogs: list[Any] = []
        self.act_serve = self._act("Ser&ve with llama-server…", self.serve,
                                   "Run your llama-server with exactly these settings on "
                                   "127.0.0.1, for other apps (OpenAI API)")
        self.act_terminal = self._act("Open in &terminal", self.open_terminal,
                                      "Run the exported llama-cli command in a terminal")
        self.act_fit = self._act("Verify with &your llama.cpp (llama-fit-params)",
                                 self.verify_with_fit_params,
                                 "Your llama.cpp build's own no_alloc figures on your devices, "
                                 "beside the estimate")
        self.act_folder = self._act("llama.cpp &folder…", self.choose_folder,
                                    "Where your llama.cpp binaries are (llama-server, "
                                    "llama-fit-params, llama-cli)")

    def _act(self, text: str, slot: Callable[[], Any], tip: str) -> QAction:
        a = QAction(text, self.window)
        a.setToolTip(tip)
        a.setStatusTip(tip)
        a.triggered.connect(lambda _checked=False: slot())
        return a

    def install(self, run_menu: QMenu, settings_menu: QMenu) -> None:
        run_menu.addSeparator()
        for a in (self.act_serve, self.act_fit, self.act_terminal):
            run_menu.addAction(a)
        settings_menu.addSeparator()
        settings_menu.addAction(self.act_folder)

    def set_enabled(self, has_file: bool) -> None:
        for a in (self.act_serve, self.act_fit, self.act_terminal):
            a.setEnabled(has_file)

    # -- what to launch ------------------------------------------------------------------

    def _status(self, text: str, ms: int = 8000) -> None:
        self.window.statusBar().showMessage(text, ms)

    def _current(self, what: str) -> tuple[str, Settings, Any] | None:
        src = self.window.ctl.model_source
        if not src or src.startswith(CATALOG_PREFIX):
            self._status(f"{what} needs a real GGUF file: open one first")
            return None
        snap = self.window.ctl.snapshot
        return str(src), self.window.ctl.settings, snap.estimate if snap else None

    @property
    def folder(self) -> str:
        return str(getattr(self.window.config, "llama_cpp_folder", "") or "")

    def tool(self, name: str, *, quiet: bool = False) -> ToolInfo | None:
        try:
            return require_tool(name, self.folder or None)
        except ToolError as exc:
            if not quiet:
                self._status(str(exc), 15000)
                QMessageBox.information(self.window, name, str(exc))
            return None

    # -- Settings ▸ llama.cpp folder ------------------------------------------------------

    def choose_folder(self, folder: str | None = None) -> None:
        if folder is None:
            folder = QFileDialog.getExistingDirectory(
                self.window, "Your llama.cpp folder (with llama-server)", self.folder)
        if not folder:
            return
        self.window.config.llama_cpp_folder = folder
        found = [n for n in (LLAMA_SERVER, LLAMA_FIT_PARAMS, LLAMA_CLI)
                 if find_tool(n, folder, search_path=False) is not None]
        self._status(f"llama.cpp folder: {folder} ({', '.join(found) or 'no tools found'})")
        for chat in self.chats:
            chat.panel.set_server_tool(self.tool(LLAMA_SERVER, quiet=True))

    # -- chat: one model copy ------------------------------------------------------------

    def launch_chat(self) -> Any:
        current = self._current("Chat")
        if current is None:
            return None
        src, settings, est = current
        from kvgui.ui import chat_window

        self.chats = [w for w in self.chats if w.isVisible()]
        server = self.tool(LLAMA_SERVER, quiet=True)
        for win in self.chats:
            panel = win.panel
            if panel.worker.state in BUSY:
                win.raise_()
                win.activateWindow()
                if panel.model_path == src and panel.settings == settings:
                    self._status("the chat is already running this model with these settings")
                    return win
                running = chat_window.settings_summary(panel.settings)
                if not self.ask("Chat", f"A chat is running {panel.model_path} ({running}).\n"
                                "Relaunch it with the new model/settings? The running model "
                                "is stopped first, so only one copy is in memory."):
                    return win
            panel.set_server_tool(server)
            win.launch(src, settings, est)
            win.show()
            return win
        try:
            win = chat_window.ChatWindow()
            win.panel.set_server_tool(server)
            win.launch(src, settings, est)
            win.show()
        except Exception as exc:  # the chat window is another module: never take this one down
            log.exception("could not start the chat")
            QMessageBox.warning(self.window, "Chat", f"Could not start the chat: {exc}")
            return None
        self.chats.append(win)
        return win

    # -- Serve -----------------------------------------------------------------------------

    def serve(self, port: int | None = None) -> Any:
        current = self._current("Serve")
        if current is None:
            return None
        src, settings, est = current
        tool = self.tool(LLAMA_SERVER)
        if tool is None:
            return None
        from kvgui.ui.serve_panel import ServeWindow

        self.serve_windows = [w for w in self.serve_windows if w.isVisible()]
        for win in self.serve_windows:
            panel = win.panel
            if panel.server.running:
                win.raise_()
                if panel.model_path == src and panel.settings == settings:
                    return win
                if not self.ask("Serve", f"llama-server is running {panel.model_path}.\n"
                                "Restart it with the new model/settings?"):
                    return win
            win.serve(tool, src, settings, est, port)
            win.show()
            return win
        win = ServeWindow()
        win.serve(tool, src, settings, est, port)
        win.show()
        self.serve_windows.append(win)
        return win

    # -- Open in terminal ----------------------------------------------------------------------

    def terminal_argv(self) -> list[str] | None:
        current = self._current("Open in terminal")
        if current is None:
            return None
        src, settings, _est = current
        from kvgui.core.commandline.export import llama_cli_args

        path = find_tool(LLAMA_CLI, self.folder or None)
        if path is None:
            msg = f"no {LLAMA_CLI}: " + MISSING_HINT.format(tool=LLAMA_CLI)
            self._status(msg, 15000)
            QMessageBox.information(self.window, "Open in terminal", msg)
            return None
        return llama_cli_args(settings, src, program=str(path))

    def open_terminal(self) -> int | None:
        argv = self.terminal_argv()
        if argv is None:
            return None
        from kvgui.runtime.terminal import NoTerminal, open_in_terminal

        try:
            pid = open_in_terminal(argv)
        except (NoTerminal, OSError) as exc:
            log.warning("open in terminal: %s", exc)
            self._status(f"could not open a terminal: {exc}", 15000)
            return None
        self._status(f"opened {LLAMA_CLI} in a terminal")
        return pid

    # -- Verify with llama-fit-params ----------------------------------------------------------

    def verify_with_fit_params(self) -> Any:
        current = self._current("Verify")
        if current is None:
            return None
        src, settings, est = current
        tool = self.tool(LLAMA_FIT_PARAMS)
        if tool is None:
            return None
        from kvgui.core.memory.estimate import estimate
        from kvgui.runtime.server import device_budgets
        from kvgui.ui.fit_params_dialog import FitParamsDialog

        model = est.model if est is not None else None

        def estimate_for(s: Settings) -> Any:
            from kvgui.core.model.info import load_model

            return estimate(model or load_model(src), s, device_budgets(tool))

        dlg = FitParamsDialog(self.window)
        dlg.run(tool, src, settings, estimate_for)
        dlg.show()
        self.dialogs = [d for d in self.dialogs if d.isVisible()] + [dlg]
        return dlg

    def close_all(self) -> None:
        for w in [*self.chats, *self.serve_windows, *self.dialogs]:
            w.close()
