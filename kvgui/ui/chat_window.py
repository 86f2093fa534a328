"""The chat window: talk to the model launched with exactly the chosen settings, and see
what llama.cpp really allocated next to what kvgui estimated.

The model runs either in kvgui's worker process (kvgui.runtime.qt_worker, llama-cpp-python)
or in the user's own llama-server (kvgui.runtime.qt_server, over its HTTP API): the same
signals, the same Stop / New conversation / stats. A llama.cpp abort or an out-of-memory kill
shows up here as a message with llama.cpp's last log lines, and "Relaunch" starts it again.
Closing the window ends the process.

A GGUF without a chat template (a base model) is said so: its architecture's usual format is
picked instead of llama-cpp-python's silent llama-2 fallback, any other can be chosen, and
Completion mode lets the model continue the text. A message sent while a reply streams is
queued and sent when it ends.
"""

from __future__ import annotations

import html
import logging
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QKeySequence, QShortcut, QStandardItemModel, QTextCursor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from kvgui.core.config.settings import ALL_LAYERS, Settings
from kvgui.core.memory.estimate import PART_KEYS, PARTS
from kvgui.core.sizes import format_bytes
from kvgui.runtime.protocol import Sampling
from kvgui.runtime.qt_worker import FAILED, GENERATING, IDLE, READY, QtWorker
from kvgui.ui import theme
from kvgui.ui.labels import plain_label
from kvgui.ui.memory_bar import MemoryBar
from kvgui.ui.viewmodel import BarRow

log = logging.getLogger(__name__)

# rows of the measured-vs-estimated table: (key, label)
MEMORY_ROWS = (*PARTS, ("kv", "KV cache"), ("total", "Total"), ("n_ctx", "Context (tokens)"))
# llama.cpp logs sizes as "%.2f MiB": closer than this is the same figure
LOGGED_TOLERANCE = int(0.0051 * 1024 * 1024)


def settings_summary(settings: Settings) -> str:
    ngl = "all" if settings.n_gpu_layers == ALL_LAYERS else str(settings.n_gpu_layers)
    parts = [f"-c {settings.n_ctx}", f"-ctk {settings.type_k}", f"-ctv {settings.type_v}",
             f"-fa {settings.flash_attn.value}", f"-ngl {ngl}", f"-b {settings.n_batch}",
             f"-ub {settings.n_ubatch}"]
    if settings.n_parallel != 1:
        parts.append(f"-np {settings.n_parallel}")
    if settings.swa_full:
        parts.append("--swa-full")
    if settings.kv_unified:
        parts.append("-kvu")
    if not settings.kv_offload:
        parts.append("-nkvo")
    if not settings.mmap:
        parts.append("--no-mmap")
    if settings.mlock:
        parts.append("--mlock")
    if settings.split_mode.value != "layer":
        parts.append(f"-sm {settings.split_mode.value}")
    if settings.main_gpu:
        parts.append(f"-mg {settings.main_gpu}")
    if settings.n_threads > 0:
        parts.append(f"-t {settings.n_threads}")
    if not settings.repack:
        parts.append("-nr")
    return " ".join(parts)


WORKER, SERVER = "worker", "server"
BACKENDS = ((WORKER, "in kvgui's worker (llama-cpp-python)"),
            (SERVER, "in llama-server (your llama.cpp)"))
MODES = (("chat", "Chat"), ("completion", "Completion (continue the text)"))
GGUF_TEMPLATE = ""  # the format box's "the GGUF's own template" entry


def differs(key: str, measured: int | None, estimated: int | None) -> bool:
    if measured is None or estimated is None:
        return False
    if key == "n_ctx":
        return measured != estimated
    return abs(measured - estimated) > LOGGED_TOLERANCE


def _fmt(key: str, value: int | None) -> str:
    if value is None:
        return "-"
    return str(value) if key == "n_ctx" else format_bytes(value)


def _gpu_used() -> list[tuple[str, int]]:
    """(name, used bytes) per NVIDIA GPU via NVML; [] without one."""
    from kvgui.runtime.client import detected_gpus

    return [(str(g.name), int(g.in_use)) for g in detected_gpus()]


class ChatPanel(QWidget):
    """Transcript, input, Stop / New conversation, sampling, and measured vs estimated."""

    closed = Signal()
    backendChanged = Signal(str)

    def __init__(self, worker: Any = None, parent: QWidget | None = None,
                 server_tool: Any = None) -> None:
        super().__init__(parent)
        self.worker: Any = None
        self.server_tool = server_tool  # kvgui.runtime.llama_bin.ToolInfo of llama-server
        self.loaded: dict[str, Any] | None = None
        self._server_estimate: Any = None  # worked out at launch, for the memory table
        self._queued: str | None = None
        self.model_path: str | None = None
        self.settings: Settings | None = None
        self.estimate: Any = None
        self.measured: dict[str, int | None] | None = None
        self.estimated: dict[str, int | None] | None = None
        self.last_finished: dict[str, Any] | None = None
        self._gpu_before: list[tuple[str, int]] = []
        self._reply_start: int | None = None
        self._build()
        self._attach(worker or QtWorker(self))
        self.set_server_tool(server_tool)
        self._sync_buttons()

    # -- the backend -----------------------------------------------------------------------

    _SIGNALS = ("started", "progress", "measured", "token", "contextUsed", "finished",
                "failed", "stateChanged")

    def _slots(self) -> dict[str, Any]:
        return {"started": self._on_started, "progress": self._on_progress,
                "measured": self._on_loaded, "token": self._on_token,
                "contextUsed": self._on_context_used, "finished": self._on_finished,
                "failed": self._on_failed, "stateChanged": self._sync_buttons}

    def _attach(self, worker: Any) -> None:
        old, self.worker = self.worker, worker
        slots = self._slots()
        if old is not None:
            for name in self._SIGNALS:
                getattr(old, name).disconnect(slots[name])
            old.shutdown()
            old.deleteLater()
        for name in self._SIGNALS:
            getattr(worker, name).connect(slots[name])
        i = self.backend_box.findData(getattr(worker, "kind", WORKER))
        if i >= 0 and i != self.backend_box.currentIndex():
            self.backend_box.blockSignals(True)
            self.backend_box.setCurrentIndex(i)
            self.backend_box.blockSignals(False)

    @property
    def backend(self) -> str:
        return str(getattr(self.worker, "kind", WORKER))

    def set_server_tool(self, tool: Any) -> None:
        """The llama-server to offer (None: the choice is shown, disabled, with how to get
        one)."""
        from kvgui.runtime.llama_bin import LLAMA_SERVER, MISSING_HINT

        self.server_tool = tool
        model = self.backend_box.model()
        assert isinstance(model, QStandardItemModel)  # QComboBox's own model
        item = model.item(self.backend_box.findData(SERVER))
        item.setEnabled(tool is not None)
        item.setToolTip(tool.summary() if tool is not None
                        else "no llama-server: " + MISSING_HINT.format(tool=LLAMA_SERVER))
        if self.backend == SERVER and tool is not None:
            self.worker.tool = tool

    def use_backend(self, kind: str) -> bool:
        """Run the model in kvgui's worker or in llama-server; a loaded model is launched
        again in the other one (one copy of the model at a time)."""
        if kind == self.backend:
            return True
        if kind == SERVER:
            if self.server_tool is None:
                self._set_status("no llama-server: choose your llama.cpp folder in Settings",
                                 error=True)
                return False
            from kvgui.runtime.qt_server import ServerChatBackend

            self._attach(ServerChatBackend(self, tool=self.server_tool))
        else:
            self._attach(QtWorker(self))
        self.backendChanged.emit(kind)
        if self.model_path is not None and self.settings is not None:
            self.launch(self.model_path, self.settings, self.estimate)
        else:
            self._sync_buttons()
        return True

    # -- layout --------------------------------------------------------------------------

    def _build(self) -> None:
        self.settings_label = plain_label("no model launched")
        self.settings_label.setObjectName("subhead")
        self.settings_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.status_label = plain_label("")
        self.status_label.setWordWrap(True)
        self.status_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.backend_box = QComboBox()
        for kind, label in BACKENDS:
            self.backend_box.addItem(label, kind)
        self.backend_box.setAccessibleName("Run the model")
        self.backend_box.currentIndexChanged.connect(
            lambda _i: self.use_backend(str(self.backend_box.currentData())))
        self.mode_box = QComboBox()
        for mode, label in MODES:
            self.mode_box.addItem(label, mode)
        self.mode_box.currentIndexChanged.connect(lambda _i: self._mode_changed())
        self.format_box = QComboBox()
        self.format_box.setAccessibleName("Chat template")
        self.format_box.setToolTip("the prompt format: the GGUF's own template, or another")
        self.notice_label = QLabel("")
        self.notice_label.setWordWrap(True)
        self.notice_label.hide()
        self.url_label = QLabel("")
        self.url_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.url_label.hide()
        self.load_bar = QProgressBar()
        self.load_bar.setRange(0, 1000)
        self.load_bar.setFormat("loading %p%")
        self.load_bar.hide()

        self.transcript = QTextBrowser()
        self.transcript.setOpenExternalLinks(False)
        self.transcript.setAccessibleName("Conversation")
        self.system_edit = QLineEdit()
        self.system_edit.setPlaceholderText("System prompt (optional)")
        self.input = QPlainTextEdit()
        self.input.setPlaceholderText("Message - Ctrl+Enter to send")
        self.input.setFixedHeight(72)
        self.send_button = QPushButton("Send")
        self.stop_button = QPushButton("Stop")
        self.new_button = QPushButton("New conversation")
        self.relaunch_button = QPushButton("Relaunch")
        self.send_button.clicked.connect(lambda: self.send())
        self.stop_button.clicked.connect(lambda: self.stop())
        self.new_button.clicked.connect(lambda: self.new_conversation())
        self.relaunch_button.clicked.connect(lambda: self.relaunch())
        self._send_shortcut = QShortcut(QKeySequence("Ctrl+Return"), self.input)
        self._send_shortcut.activated.connect(lambda: self.send())

        self.context_bar = QProgressBar()
        self.context_bar.setFormat("context: %v / %m tokens")
        self.context_bar.setRange(0, 1)
        self.context_bar.setValue(0)
        self.stats_label = plain_label("")
        self.stats_label.setObjectName("muted")

        # sampling
        s = Sampling()
        self.temperature = QDoubleSpinBox(decimals=2, minimum=0.0, maximum=5.0, singleStep=0.05,
                                          value=s.temperature)
        self.top_p = QDoubleSpinBox(decimals=2, minimum=0.0, maximum=1.0, singleStep=0.05,
                                    value=s.top_p)
        self.min_p = QDoubleSpinBox(decimals=2, minimum=0.0, maximum=1.0, singleStep=0.01,
                                    value=s.min_p)
        self.top_k = QSpinBox(minimum=0, maximum=1000, value=s.top_k)
        self.max_tokens = QSpinBox(minimum=-1, maximum=1_000_000, value=s.max_tokens)
        self.max_tokens.setSpecialValueText("until the context is full")
        self.seed = QSpinBox(minimum=-1, maximum=2**31 - 1, value=s.seed)
        self.seed.setSpecialValueText("random")
        sampling_box = QGroupBox("Sampling")
        form = QFormLayout(sampling_box)
        form.addRow("Temperature", self.temperature)
        form.addRow("Top-p", self.top_p)
        form.addRow("Top-k", self.top_k)
        form.addRow("Min-p", self.min_p)
        form.addRow("Max tokens", self.max_tokens)
        form.addRow("Seed", self.seed)

        # measured vs estimated
        self.memory_table = QTableWidget(len(MEMORY_ROWS), 3)
        self.memory_table.setHorizontalHeaderLabels(["Estimated", "Measured", "Difference"])
        self.memory_table.setVerticalHeaderLabels([label for _, label in MEMORY_ROWS])
        self.memory_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.memory_table.horizontalHeader().setSectionResizeMode(
            QHeaderView.ResizeMode.Stretch)
        self.memory_bar = MemoryBar()
        self.gpu_label = QLabel("")
        self.gpu_label.setObjectName("muted")
        self.gpu_label.setWordWrap(True)
        memory_box = QGroupBox("Memory: measured by llama.cpp vs estimated by kvgui")
        mv = QVBoxLayout(memory_box)
        mv.addWidget(self.memory_bar)
        mv.addWidget(self.memory_table)
        mv.addWidget(self.gpu_label)

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(self.transcript, 1)
        lv.addWidget(self.system_edit)
        lv.addWidget(self.input)
        buttons = QHBoxLayout()
        for b in (self.send_button, self.stop_button, self.new_button, self.relaunch_button):
            buttons.addWidget(b)
        buttons.addStretch(1)
        lv.addLayout(buttons)
        lv.addWidget(self.context_bar)
        lv.addWidget(self.stats_label)

        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addWidget(memory_box, 1)
        rv.addWidget(sampling_box)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)

        top = QVBoxLayout(self)
        top.addWidget(self.settings_label)
        choices = QHBoxLayout()
        choices.addWidget(QLabel("Run:"))
        choices.addWidget(self.backend_box)
        choices.addWidget(QLabel("Mode:"))
        choices.addWidget(self.mode_box)
        choices.addWidget(QLabel("Template:"))
        choices.addWidget(self.format_box)
        choices.addStretch(1)
        top.addLayout(choices)
        top.addWidget(self.notice_label)
        top.addWidget(self.url_label)
        top.addWidget(self.status_label)
        top.addWidget(self.load_bar)
        top.addWidget(split, 1)

    # -- actions -------------------------------------------------------------------------

    def launch(self, model_path: str, settings: Settings, estimate: Any = None) -> bool:
        """Start the worker with these settings; False when refused before launch."""
        self.model_path, self.settings, self.estimate = str(model_path), settings, estimate
        self.measured = self.estimated = None
        self.loaded = None
        self._queued = None
        self.settings_label.setText(f"{model_path}   {settings_summary(settings)}")
        self.transcript.clear()
        self._reply_start = None
        self.last_finished = None
        self.stats_label.setText("")  # the last launch's figures are not this one's
        self.context_bar.setRange(0, 1)
        self.context_bar.setValue(0)
        self.notice_label.hide()
        self.url_label.hide()
        self.format_box.clear()
        self._fill_table()
        self._gpu_before = _gpu_used()
        self._set_status("starting llama-server…" if self.backend == SERVER
                         else "starting llama.cpp…")
        started = bool(self.worker.launch(self.model_path, settings))
        # the estimate to compare with llama-server's log is worked out while it loads (tens
        # of ms): done at "ready", it held up the first message by as much
        self._server_estimate = self._estimate_for_server() \
            if started and self.backend == SERVER else None
        return started

    def relaunch(self) -> None:
        if self.model_path is None or self.settings is None:
            return
        self.launch(self.model_path, self.settings, self.estimate)

    def sampling(self) -> Sampling:
        max_tokens = self.max_tokens.value()
        return Sampling(temperature=self.temperature.value(), top_p=self.top_p.value(),
                        top_k=self.top_k.value(), min_p=self.min_p.value(),
                        max_tokens=max_tokens if max_tokens != 0 else 1,
                        seed=self.seed.value())

    @property
    def mode(self) -> str:
        return str(self.mode_box.currentData())

    @property
    def chat_format(self) -> str | None:
        data = self.format_box.currentData()
        return None if not data else str(data)

    def send(self, text: str | None = None) -> bool:
        """Send a message; while a reply streams it is queued (one) and sent when it ends."""
        typed = text is None
        text = self.input.toPlainText() if text is None else text
        if not text.strip():
            return False
        if self.worker.state == GENERATING:
            self._queued = text
            if typed:
                self.input.clear()
            self._set_status("queued: your message is sent when this reply ends")
            return True
        if self.worker.state != READY:
            return False
        self._append_block("You", text)
        self._append_block("Model", "")
        self._reply_start = self.transcript.textCursor().position()
        if typed:
            self.input.clear()
        self._set_status("generating…")
        return bool(self.worker.chat(text, system=self.system_edit.text(),
                                     sampling=self.sampling(), mode=self.mode,
                                     chat_format=self.chat_format))

    def _mode_changed(self) -> None:
        """One history per mode (the worker starts a new one too)."""
        self.format_box.setEnabled(self.mode == "chat" and self.format_box.count() > 1)
        if self.worker.state == READY:
            self.new_conversation()

    def stop(self) -> None:
        self._queued = None
        self.worker.stop()

    def new_conversation(self) -> None:
        self._queued = None
        self.worker.reset(self.system_edit.text())
        self.transcript.clear()
        self._reply_start = None
        self.last_finished = None
        self.context_bar.setValue(0)
        self.stats_label.setText("")
        self._set_status("new conversation")

    def shutdown(self) -> None:
        self.worker.shutdown()

    def closeEvent(self, event) -> None:
        self.shutdown()
        self.closed.emit()
        super().closeEvent(event)

    # -- worker events -------------------------------------------------------------------

    def _on_started(self, _msg: dict) -> None:
        self.load_bar.setValue(0)
        self.load_bar.show()
        self._set_status("loading the model…")

    def _on_progress(self, fraction: float) -> None:
        self.load_bar.setValue(int(fraction * 1000))

    def _on_loaded(self, loaded: dict) -> None:
        from kvgui.runtime.client import estimated_memory, measured_memory

        self.load_bar.hide()
        self.measured = measured_memory(loaded)
        offload = bool(loaded.get("gpu_offload"))
        est = self.estimate
        planned_gpu = est is not None and any(d.is_gpu for d in est.devices)
        if loaded.get("kind") == SERVER:
            est = self._server_estimate
        elif est is None or planned_gpu != offload:
            # compare with what this llama.cpp build did: a CPU-only build puts it all on
            # the CPU whatever GPU the main window plans for
            est = self._estimate_for(offload)
        self.estimated = None if est is None else estimated_memory(est)
        self._fill_table()
        n_ctx = int(loaded.get("n_ctx_seq") or loaded.get("n_ctx") or 1)
        self.context_bar.setRange(0, n_ctx)
        self.context_bar.setValue(0)
        self._show_gpu()
        self.loaded = loaded
        self._show_template(loaded)
        if loaded.get("openai_url"):
            url = html.escape(str(loaded["openai_url"]))
            self.url_label.setText(f"llama-server: OpenAI API at <b>{url}</b>"
                                   f" · {html.escape(str(loaded.get('tool', '')))}")
            self.url_label.show()
        self._set_status(f"ready - loaded in {float(loaded.get('load_s', 0)):.1f} s, "
                         f"chat format {loaded.get('chat_format')}")
        self.input.setFocus()

    def _show_template(self, loaded: dict) -> None:
        """The template picker, and the notice for a GGUF that has none."""
        self.format_box.clear()
        formats = [str(f) for f in loaded.get("formats") or []]
        has_template = loaded.get("chat_template", True)
        broken = loaded.get("template_error")
        usual = loaded.get("usual_format")
        if has_template and not broken:
            self.format_box.addItem("the GGUF's template", GGUF_TEMPLATE)
        for f in formats:
            self.format_box.addItem(f + ("  (usual for this model)" if f == usual else ""), f)
        if broken:  # still choosable, to see its error again; the worker chats in another
            self.format_box.addItem("the GGUF's template (broken)", "chat_template.default")
            chosen = self.format_box.findData(loaded.get("chat_format"))
            self.format_box.setCurrentIndex(max(chosen, 0))
        self.format_box.setEnabled(self.mode == "chat" and self.format_box.count() > 1)
        if broken:
            self.notice_label.setText(
                f"<b>This GGUF's chat template cannot be used</b>: {html.escape(str(broken))}"
                f". Chatting uses the <b>{html.escape(str(loaded.get('chat_format')))}</b> "
                "format instead; pick another in Template, or Completion mode.")
            self.notice_label.setStyleSheet(f"color: {theme.current().warn.name()};")
            self.notice_label.show()
            return
        if has_template:
            self.notice_label.hide()
            return
        arch = loaded.get("architecture") or "this"
        picked = formats[0] if formats else None
        self.notice_label.setText(
            f"<b>This GGUF has no chat template</b> - probably a base model. Chatting uses "
            f"the <b>{picked or 'llama-2'}</b> format ({arch}'s usual one"
            f"{'' if picked else ': none known, llama-cpp-python falls back to llama-2'}); "
            "pick another in Template, or Completion mode to let the model continue your "
            "text.")
        self.notice_label.setStyleSheet(f"color: {theme.current().warn.name()};")
        self.notice_label.show()

    def _estimate_for_server(self) -> Any:
        """The estimate for llama-server on the devices this build sees (it reserves one
        output row per slot: ``server_settings``)."""
        from kvgui.core.commandline.llama_params import server_settings
        from kvgui.core.memory.estimate import estimate
        from kvgui.core.model.info import load_model
        from kvgui.runtime.server import device_budgets

        if self.model_path is None or self.settings is None or self.server_tool is None:
            return None
        try:
            model = self.estimate.model if self.estimate is not None else \
                load_model(self.model_path)
            return estimate(model, server_settings(self.settings),
                            device_budgets(self.server_tool))
        except Exception as exc:  # the header was read before launch; keep the chat usable
            self._set_status(f"no estimate: {exc}", error=True)
            return None

    def _estimate_for(self, gpu_offload: bool) -> Any:
        from kvgui.core.memory.estimate import estimate
        from kvgui.core.model.info import load_model
        from kvgui.runtime.client import estimate_devices

        if self.model_path is None or self.settings is None:
            return None
        try:
            model = self.estimate.model if self.estimate is not None else \
                load_model(self.model_path)
            return estimate(model, self.settings, estimate_devices(gpu_offload))
        except Exception as exc:  # the header was read before launch; keep the chat usable
            log.warning("no estimate for the chat's model", exc_info=True)
            self._set_status(f"no estimate: {exc}", error=True)
            return None

    def _on_context_used(self, n_past: int) -> None:
        if n_past > self.context_bar.maximum() > 1:
            n_past = self.context_bar.maximum()
        self.context_bar.setValue(n_past)

    def _on_token(self, text: str) -> None:
        cursor = self.transcript.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        cursor.insertText(text)
        self.transcript.setTextCursor(cursor)
        self.transcript.ensureCursorVisible()

    def _on_finished(self, done: dict) -> None:
        self.last_finished = done
        self._settle_reply(str(done.get("reply", "")))
        n_ctx = int(done.get("n_ctx") or self.context_bar.maximum() or 1)
        self.context_bar.setRange(0, n_ctx)
        self.context_bar.setValue(min(int(done.get("n_past") or 0), n_ctx))

        def rate(v: Any) -> str:
            return "-" if v is None else f"{float(v):.1f} t/s"

        ttft = done.get("ttft_s")
        self.stats_label.setText(
            f"{done.get('tokens')} tokens · generation {rate(done.get('tokens_per_s'))} · "
            f"prompt {rate(done.get('prompt_tokens_per_s'))} · first token "
            f"{'-' if ttft is None else f'{1000 * float(ttft):.0f} ms'}")
        reason = str(done.get("stop_reason"))
        note = {"stopped": "stopped", "context": "the context is full: the oldest turns are "
                "dropped from the next message on (or start a new conversation)",
                "max_tokens": "reached max tokens", "eos": "done"}.get(reason, reason)
        if reason == "eos" and not done.get("tokens") and not str(done.get("reply", "")):
            note = "the model ended its turn at once (an empty reply)"
            if self.loaded is not None and self.loaded.get("chat_template") is False:
                note += ": this GGUF has no chat template - try another Template, or " \
                        "Completion mode"
        if done.get("dropped_turns"):
            note += f" · {done['dropped_turns']} oldest turn(s) dropped to fit the context"
        self._set_status(note)
        if self._queued is not None:
            queued, self._queued = self._queued, None
            self.send(queued)

    def _on_failed(self, message: str, fatal: bool) -> None:
        self.load_bar.hide()
        self._queued = None
        self._reply_start = None
        first, _, rest = message.partition("\n")
        self._set_status(first, error=True)
        if rest:
            self.status_label.setToolTip(rest)
        self._append_block("Error", message)

    # -- helpers -------------------------------------------------------------------------

    def _settle_reply(self, reply: str) -> None:
        """The final reply is the authority (llama-cpp-python cuts it at a stop string); an
        empty one never erases what was streamed (a stopped reply is what was streamed)."""
        if self._reply_start is None:
            return
        if not reply:
            self._reply_start = None
            return
        cursor = self.transcript.textCursor()
        cursor.setPosition(self._reply_start)
        cursor.movePosition(QTextCursor.MoveOperation.End, QTextCursor.MoveMode.KeepAnchor)
        if cursor.selectedText().replace("\u2029", "\n") != reply:
            cursor.insertText(reply)
        self._reply_start = None

    def _set_status(self, text: str, error: bool = False) -> None:
        t = theme.current()
        color = t.over.name() if error else t.muted.name()
        self.status_label.setStyleSheet(f"color: {color};")
        self.status_label.setText(text)
        if not error:
            self.status_label.setToolTip("")

    def _append_block(self, who: str, text: str) -> None:
        cursor = self.transcript.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        if not self.transcript.document().isEmpty():
            cursor.insertBlock()
        cursor.insertHtml(f"<b>{html.escape(who)}:</b> ")
        cursor.insertText(text)
        self.transcript.setTextCursor(cursor)

    def _sync_buttons(self, *_: Any) -> None:
        state = self.worker.state
        self.send_button.setEnabled(state in (READY, GENERATING))
        self.send_button.setText("Queue" if state == GENERATING else "Send")
        self.backend_box.setEnabled(state in (READY, FAILED, IDLE))
        self.stop_button.setEnabled(state == GENERATING)
        self.new_button.setEnabled(state == READY)
        self.relaunch_button.setEnabled(state == FAILED and self.model_path is not None)

    def _fill_table(self) -> None:
        t = theme.current()
        for row, (key, _label) in enumerate(MEMORY_ROWS):
            est = None if self.estimated is None else self.estimated.get(key)
            meas = None if self.measured is None else self.measured.get(key)
            items = [QTableWidgetItem(_fmt(key, est)), QTableWidgetItem(_fmt(key, meas))]
            if est is None or meas is None:
                diff = QTableWidgetItem("")
            elif differs(key, meas, est):
                delta = meas - est
                pct = f" ({100 * delta / est:+.1f}%)" if est else ""
                sign = "+" if delta > 0 else "-"
                diff = QTableWidgetItem(
                    (f"{delta:+d}" if key == "n_ctx" else f"{sign}{format_bytes(abs(delta))}")
                    + pct)
                for item in (*items, diff):
                    item.setBackground(QColor(t.warn.red(), t.warn.green(), t.warn.blue(), 60))
                diff.setForeground(t.warn)
            else:
                diff = QTableWidgetItem("same")
                diff.setForeground(t.ok)
            for col, item in enumerate((*items, diff)):
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.memory_table.setItem(row, col, item)
        rows = []
        for label, fig in (("Estimated", self.estimated), ("Measured", self.measured)):
            if fig is not None:
                rows.append(BarRow(label, tuple((k, int(fig.get(k) or 0)) for k in PART_KEYS),
                                   is_gpu=False))
        self.memory_bar.set_rows(rows)

    def _show_gpu(self) -> None:
        after = _gpu_used()
        if not after:
            self.gpu_label.setText("")
            return
        before = dict(self._gpu_before)
        lines = []
        for name, used in after:
            was = before.get(name)
            if was is None:
                lines.append(f"{name}: {format_bytes(used)} used after the load")
            else:
                lines.append(f"{name}: {format_bytes(was)} used before the load, "
                             f"{format_bytes(used)} after (+{format_bytes(max(0, used - was))})")
        self.gpu_label.setText("\n".join(lines))


class ChatWindow(QMainWindow):
    """A top-level window around ChatPanel; closing it ends the worker."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.panel = ChatPanel(parent=self)
        self.setCentralWidget(self.panel)
        self.setWindowTitle("kvgui chat")
        self.resize(1100, 720)

    def launch(self, model_path: str, settings: Settings, estimate: Any = None) -> bool:
        self.setWindowTitle(f"kvgui chat - {model_path}")
        return self.panel.launch(model_path, settings, estimate)

    def closeEvent(self, event) -> None:
        self.panel.shutdown()
        super().closeEvent(event)
