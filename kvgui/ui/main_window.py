"""The configurator window: pick a model, drag the context, watch memory live.

Layout: a left column of cards (model, hardware, KV cache settings), and on the right the
verdict with the live stacked bar, the context slider, and below them every cache type side
by side next to the memory-vs-context plot. The Controller holds the state; this class
wires widgets to it, and owns menus, drag and drop, persistence and the dialogs.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QObject, QSize, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import (
    QAction,
    QCloseEvent,
    QDesktopServices,
    QDragEnterEvent,
    QDropEvent,
    QIcon,
    QKeySequence,
)
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QToolBar,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from kvgui import __version__
from kvgui.core.config.appconfig import AppConfig, save_config
from kvgui.core.memory.findings import Code, Severity
from kvgui.core.model.info import ModelInfo
from kvgui.core.sizes import format_bytes
from kvgui.core.untrusted import one_line
from kvgui.ui import theme
from kvgui.ui.cache_controls import CacheControls
from kvgui.ui.cache_table import CacheTypeTable
from kvgui.ui.context_plot import ContextPlot
from kvgui.ui.context_slider import ContextControl
from kvgui.ui.controller import CATALOG_PREFIX, PRESETS, Controller, HardwareState
from kvgui.ui.hardware_panel import HardwarePanel
from kvgui.ui.launch_actions import LaunchActions
from kvgui.ui.memory_bar import MemoryBar
from kvgui.ui.model_panel import ModelPanel
from kvgui.ui.plan_panel import PlanPanel
from kvgui.ui.quality_bar import QualityBar
from kvgui.ui.verify_panel import VerifyPanel, VerifyRunner
from kvgui.ui.viewmodel import ControlsState, Curves, Snapshot

log = logging.getLogger(__name__)

REPO_URL = "https://github.com/ggml-org/llama.cpp"


def card(title: str, body: QWidget | None = None) -> tuple[QFrame, QVBoxLayout]:
    frame = QFrame()
    frame.setObjectName("card")
    lay = QVBoxLayout(frame)
    lay.setContentsMargins(14, 12, 14, 12)
    lay.setSpacing(8)
    if title:
        t = QLabel(title)
        t.setObjectName("cardTitle")
        lay.addWidget(t)
    if body is not None:
        lay.addWidget(body)
    return frame, lay


def resource_path(name: str) -> Path:
    """A file in resources/, installed (kvgui.resources) or in a source checkout."""
    try:
        from importlib import resources

        p = Path(str(resources.files("kvgui.resources").joinpath(name)))
        if p.exists():
            return p
    except (ModuleNotFoundError, FileNotFoundError):
        pass
    return Path(__file__).resolve().parents[2] / "resources" / name


def app_icon() -> QIcon:
    return QIcon(str(resource_path("kvgui.svg")))


class _Detected(QObject):
    ready = Signal(object)  # HardwareReport, or the exception detection raised
    bandwidth = Signal(float)  # the host RAM's measured bandwidth, bytes/s


class MainWindow(QMainWindow):
    def __init__(self, config: AppConfig | None = None, *, detect_hardware: bool = True,
                 persist: bool = True, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.config = config or AppConfig()
        self.persist = persist
        self.ctl = Controller(self.config, self)
        self._catalog: dict[str, Any] = {}
        self._hw_report: Any = None
        self._verify = VerifyRunner(self)
        self._det = _Detected(self)  # made here, in the GUI thread; the worker only emits
        self._det.ready.connect(self._on_detected)
        self._det.bandwidth.connect(self.set_host_bandwidth)
        self._shown_rest: Any = None
        self.setWindowTitle("kvgui — will it fit?")
        self.setWindowIcon(app_icon())
        self.setAcceptDrops(True)
        self._build()
        self._wire()
        self._load_catalog()
        self.apply_theme()
        self._restore_geometry()
        self.ctl.recompute(full=True)
        self._poll = QTimer(self)
        self._poll.setInterval(1000)
        self._poll.timeout.connect(self._poll_free)
        if detect_hardware:
            self._start_detection()

    # --- building -----------------------------------------------------------------------
    def _build(self) -> None:
        s = self.config.settings
        self.model_panel = ModelPanel()
        self.hw_panel = HardwarePanel(self.config.hardware, self._gpu_catalog_names())
        self.cache_controls = CacheControls(s)
        self.cache_controls.set_state(self.ctl.controls_state())
        self.cache_controls.set_advanced_open(self.config.advanced_open)
        self.ctx = ContextControl(s.n_ctx, 131072)
        self.bar = MemoryBar()
        self.table = CacheTypeTable()
        self.quality_bar = QualityBar()
        self.quality_bar.set_threshold(self.ctl.threshold)
        self.plot = ContextPlot()
        self.verify_panel = VerifyPanel()
        self.plan_panel = PlanPanel()
        self.headline = QLabel()
        self.headline.setObjectName("headline")
        self.headline.setToolTip("Fits when everything llama.cpp allocates on each device "
                                 "(weights, K and V cache, compute and output buffers) stays "
                                 "within its budget: the device's memory less the reserve.")
        self.detail = QLabel()
        self.detail.setObjectName("subhead")
        self.detail.setWordWrap(True)
        self.plan_label = QLabel()
        self.plan_label.setObjectName("muted")
        self.plan_label.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop)
        self.plan_label.setToolTip("The hardware this plan is for (change it under Hardware)")
        self.warnings = QLabel()
        self.warnings.setObjectName("warnBanner")
        self.warnings.setWordWrap(True)
        self.warnings.hide()

        # left column
        left = QWidget()
        left_lay = QVBoxLayout(left)
        left_lay.setContentsMargins(12, 12, 6, 12)
        left_lay.setSpacing(10)
        for title, body in (("MODEL", self.model_panel), ("HARDWARE", self.hw_panel),
                            ("KV CACHE", self.cache_controls)):
            left_lay.addWidget(card(title, body)[0])
        left_lay.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(left)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        # wide enough for the cards and a vertical scroll bar (a taller column must scroll,
        # not clip its fields on the right)
        scroll.setMinimumWidth(max(390, left.minimumSizeHint().width()
                                   + scroll.verticalScrollBar().sizeHint().width() + 2))
        scroll.setMaximumWidth(max(470, scroll.minimumWidth()))

        # right column
        right = QWidget()
        rl = QVBoxLayout(right)
        rl.setContentsMargins(6, 12, 12, 12)
        rl.setSpacing(10)
        verdict, vl = card("")
        top = QHBoxLayout()
        words = QVBoxLayout()
        words.setSpacing(2)
        words.addWidget(self.headline)
        words.addWidget(self.detail)
        top.addLayout(words, 1)
        top.addWidget(self.plan_label)
        vl.addLayout(top)
        vl.addWidget(self.bar)
        vl.addWidget(self.warnings)
        vl.addWidget(self.verify_panel)
        rl.addWidget(verdict)
        plan_card, _ = card("PLAN · THE FASTEST WAY TO RUN IT (PREDICTED DECODE SPEED)",
                            self.plan_panel)
        plan_card.setToolTip("The planner searches context × cache types × GPU layers × "
                             "experts on the CPU × -nkvo for this budget; the speed is "
                             "predicted from the bytes each device reads per token over its "
                             "memory bandwidth (hover a row for what it assumes)")
        rl.addWidget(plan_card)
        rl.addWidget(card("", self.ctx)[0])
        split = QSplitter(Qt.Orientation.Horizontal)
        tcard, tl = card("EVERY CACHE TYPE AT THIS CONTEXT")
        tl.addWidget(self.table)
        foot = QLabel("Click a row to use that cache type. Notes: measured on this model when "
                      "it has been (Tools ▸ Measure), else published figures for another model "
                      "(hover for the source).")
        foot.setObjectName("muted")
        foot.setWordWrap(True)
        tl.addWidget(self.quality_bar)
        tl.addStretch(1)
        tl.addWidget(foot)
        pcard, _ = card("MEMORY VS CONTEXT", self.plot)
        split.addWidget(tcard)
        split.addWidget(pcard)
        split.setChildrenCollapsible(False)
        split.setStretchFactor(0, 11)
        split.setStretchFactor(1, 9)
        self.splitter = split
        rl.addWidget(split, 1)

        # the right column scrolls too, so the window fits a small laptop screen
        right.setMinimumHeight(740)
        rscroll = QScrollArea()
        rscroll.setWidget(right)
        rscroll.setWidgetResizable(True)
        rscroll.setFrameShape(QFrame.Shape.NoFrame)
        rscroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        rscroll.setMinimumWidth(640)
        central = QWidget()
        cl = QHBoxLayout(central)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.setSpacing(0)
        cl.addWidget(scroll)
        cl.addWidget(rscroll, 1)
        self.setCentralWidget(central)
        self._build_actions()
        self.statusBar().setSizeGripEnabled(True)

    def _build_actions(self) -> None:
        def act(text: str, slot: Any, shortcut: Any = None, tip: str = "") -> QAction:
            a = QAction(text, self)
            if shortcut is not None:
                a.setShortcut(QKeySequence(shortcut))
            if tip:
                a.setToolTip(tip)
                a.setStatusTip(tip)
            a.triggered.connect(slot)
            return a

        def icon(name: str) -> QIcon:
            return QIcon(str(resource_path(f"icons/{name}.svg")))

        self.act_open = act("&Open GGUF…", self.open_dialog, QKeySequence.StandardKey.Open,
                            "Open a .gguf model (only the header is read)")
        self.act_export = act("&Export command…", self.export_dialog, "Ctrl+E",
                              "The llama-cli / llama-server command or Python code for these "
                              "settings")
        self.act_import = act("&Import command…", self.import_dialog, "Ctrl+I",
                              "Paste a llama.cpp command line: the controls take its values")
        self.act_save_preset = act("&Save preset…", self.save_preset_dialog, "Ctrl+S",
                                   "Save the model and every setting as a JSON preset")
        self.act_load_preset = act("&Load preset…", self.load_preset_dialog, "Ctrl+Shift+O",
                                   "Load a JSON preset saved by kvgui (or `kvgui export "
                                   "--format json`)")
        self.act_verify = act("&Verify with llama.cpp", self.verify, "Ctrl+R",
                              "Ask the bundled llama.cpp what it would allocate (dry run: no "
                              "weights read, no cache allocated)")
        self.act_chat = act("Launch &chat", self.launch_chat, "Ctrl+L",
                            "Chat with the model through llama.cpp with exactly these settings")
        self.act_measure = act("&Measure cache quality…", self.measure, "Ctrl+M",
                               "Run your model over a text with each KV cache type: perplexity, "
                               "KL divergence against f16, speed and memory")
        for a, name in ((self.act_open, "open"), (self.act_import, "import"),
                        (self.act_export, "export"), (self.act_verify, "verify"),
                        (self.act_chat, "chat")):
            a.setIcon(icon(name))
        self.act_quit = act("&Quit", self.close, QKeySequence.StandardKey.Quit)
        self.act_about = act("&About kvgui", self.about)
        self.act_log = act("Show &log", self.show_log, None,
                           "What kvgui logged: failures with their details, for a bug report")
        self.act_adv = act("Show &advanced settings", self.cache_controls.set_advanced_open)
        self.act_adv.setCheckable(True)
        self.act_adv.setChecked(self.config.advanced_open)
        self.cache_controls.adv_toggle.toggled.connect(self.act_adv.setChecked)
        from kvgui.ui import hub_dialog  # issue 16: the Hub and the models on this machine
        self.act_hub = act("Open from &Hugging Face…", lambda: hub_dialog.show_hub_dialog(self),
                           "Ctrl+Shift+H", "Plan any GGUF on the Hub before downloading it")
        self.act_local = act("Models on this &machine…",
                             lambda: hub_dialog.show_local_models(self), None,
                             "GGUFs in the Hub cache, llama.cpp's cache, LM Studio, ollama")
        self.recent_menu = QMenu("Open &recent", self)
        self.recent_menu.aboutToShow.connect(self._fill_recent)
        self.preset_actions: list[QAction] = []
        for i, p in enumerate(PRESETS, start=1):
            a = act(p.title, lambda _c=False, k=p.key: self.ctl.apply_preset(k), f"Ctrl+{i}",
                    p.blurb)
            self.preset_actions.append(a)

        mb = self.menuBar()
        m = mb.addMenu("&File")
        m.addAction(self.act_open)
        m.addMenu(self.recent_menu)
        m.addAction(self.act_hub)
        m.addAction(self.act_local)
        m.addSeparator()
        m.addAction(self.act_import)
        m.addAction(self.act_export)
        m.addSeparator()
        m.addAction(self.act_load_preset)
        m.addAction(self.act_save_preset)
        m.addSeparator()
        m.addAction(self.act_quit)
        m = settings_menu = mb.addMenu("&Settings")
        for a in self.preset_actions:
            m.addAction(a)
        m.addSeparator()
        m.addAction(self.act_adv)
        m = mb.addMenu("&Run")
        m.addAction(self.act_verify)
        m.addAction(self.act_chat)
        m.addAction(self.act_measure)
        self.launch = LaunchActions(self)  # launch hook: chat, Serve, terminal, llama.cpp folder
        self.launch.install(m, settings_menu)  # launch hook
        m = mb.addMenu("&Help")
        m.addAction(self.act_log)
        m.addAction(self.act_about)

        tb = QToolBar("Main")
        tb.setObjectName("mainToolbar")
        tb.setMovable(False)
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        tb.setIconSize(QSize(18, 18))
        tb.addAction(self.act_open)
        tb.addSeparator()
        label = QLabel("  Presets: ")
        label.setObjectName("muted")
        tb.addWidget(label)
        self.preset_buttons: list[QToolButton] = []
        for a in self.preset_actions:
            b = QToolButton()
            b.setDefaultAction(a)
            b.setObjectName("preset")
            tb.addWidget(b)
            self.preset_buttons.append(b)
        spacer = QWidget()
        spacer.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        tb.addWidget(spacer)
        tb.addAction(self.act_import)
        tb.addAction(self.act_export)
        tb.addAction(self.act_verify)
        tb.addAction(self.act_chat)
        tb.addAction(self.launch.act_serve)  # launch hook
        self.addToolBar(tb)

    def _wire(self) -> None:
        c = self.ctl
        c.snapshotReady.connect(self._on_snapshot)
        c.curvesReady.connect(self._on_curves)
        c.modelChanged.connect(self._on_model)
        c.settingsChanged.connect(self._on_settings)
        c.controlsChanged.connect(self._on_controls)
        c.planChanged.connect(self._on_plan)
        c.loadingChanged.connect(self._on_loading)
        c.loadFailed.connect(self._on_load_failed)
        c.message.connect(lambda m: self.statusBar().showMessage(m, 8000))
        self.ctx.ctxChanged.connect(c.set_n_ctx)
        self.table.pairChosen.connect(c.choose_pair)
        c.choicesReady.connect(self.plan_panel.set_view)
        self.plan_panel.choiceApplied.connect(c.apply_choice)
        self.quality_bar.thresholdChanged.connect(self._on_threshold)
        self.cache_controls.settingsEdited.connect(lambda changes: c.update_settings(**changes))
        self.cache_controls.nglModeChanged.connect(c.set_ngl_mode)
        self.cache_controls.fixRequested.connect(c.fix)
        self.hw_panel.choiceChanged.connect(c.set_hardware_choice)
        self.model_panel.openRequested.connect(self.open_dialog)
        self.model_panel.catalogChosen.connect(self.open_catalog)
        self._verify.done.connect(self._on_verified)
        QApplication.styleHints().colorSchemeChanged.connect(lambda _s: self.apply_theme())

    def apply_theme(self) -> None:
        t = theme.refresh()
        self.setStyleSheet(theme.stylesheet(t))
        self.plot.apply_theme()
        self.cache_controls.restyle()
        for w in (self.bar, self.table, self.ctx.slider):
            w.update()
        self._show_headline()

    # --- catalog and hardware -----------------------------------------------------------
    def _load_catalog(self) -> None:
        try:
            from kvgui.core.model.catalog import load_catalog

            entries = load_catalog()
        except Exception as exc:  # the catalog is a convenience; the window works without it
            log.warning("model catalog unavailable", exc_info=True)
            self.statusBar().showMessage(f"model catalog unavailable: {exc}", 8000)
            entries = []
        self._catalog = {e.label: e for e in entries}
        self.model_panel.set_catalog([(e.label, e.label) for e in entries])

    def _gpu_catalog_names(self) -> list[str]:
        try:
            from kvgui.core.devices.gpu_catalog import catalog

            return [g.name for g in catalog()]
        except Exception:  # the GPU catalog is a convenience too
            log.warning("GPU catalog unavailable", exc_info=True)
            return []

    def _start_detection(self) -> None:
        import threading

        def work() -> None:
            report: object
            try:
                from kvgui.runtime.llama_backend import detect_all

                report = detect_all()
            except Exception as exc:  # shown in the status bar; the window plans without it
                log.warning("hardware detection failed", exc_info=True)
                report = exc
            self._det.ready.emit(report)
            try:  # the host RAM's bandwidth, for the speed prediction (cached after once)
                from kvgui.core.devices.hardware.membw import host_bandwidth

                found = host_bandwidth()
                if found is not None:
                    self._det.bandwidth.emit(found.bytes_per_s)
            except Exception:  # the prediction then says it assumed a bandwidth
                log.warning("host bandwidth probe failed", exc_info=True)

        threading.Thread(target=work, name="kvgui-detect", daemon=True).start()

    def set_hardware_report(self, report: Any) -> None:
        """Use a HardwareReport (kvgui.core.devices.hardware.detect) for the detected devices."""
        self._hw_report = report
        gpus = tuple(report.gpus)
        ram = report.system.available if report.system else None
        reasons = tuple(report.reasons)
        self.ctl.set_hardware_state(HardwareState(
            gpus, ram, reasons, tuple(report.advice), report.host_cpu,
            self.ctl.hardware.host_bandwidth, self.ctl.hardware.rpc_info))
        self.hw_panel.set_detected(gpus, reasons)
        if report.advice:
            self.statusBar().showMessage(report.advice[0], 15000)
        if gpus:
            self._poll.start()

    def set_host_bandwidth(self, bytes_per_s: float) -> None:
        """The host RAM's measured bandwidth (the speed prediction's host figure)."""
        from dataclasses import replace as dc_replace

        self.ctl.set_hardware_state(dc_replace(self.ctl.hardware, host_bandwidth=bytes_per_s))

    def _on_detected(self, report: Any) -> None:
        if isinstance(report, Exception):
            self.statusBar().showMessage(f"hardware detection failed: {report}", 10000)
            return
        self.set_hardware_report(report)

    def _poll_free(self) -> None:
        report = self._hw_report
        if report is None or not report.gpus:
            return
        from kvgui.core.devices.hardware.detect import free_memory

        self.ctl.update_free([free_memory(g) for g in report.gpus])

    # --- model --------------------------------------------------------------------------
    def open_path(self, path: str) -> None:
        self.ctl.open_path(path)

    def open_catalog(self, label: str) -> None:
        entry = self._catalog.get(label)
        if entry is None:
            self.statusBar().showMessage(f"no catalog model {label!r}", 8000)
            return

        def load() -> ModelInfo:
            md, tensors, file_bytes = entry.header()
            return ModelInfo.from_header(md, tensors, file_bytes=file_bytes)

        self.ctl.open_header(load, CATALOG_PREFIX + label)

    def open_initial(self, path: str | None) -> None:
        """The command line's model, else the last one, else the first catalog model."""
        if path:
            self.ctl.open_reference(path)  # a file, or a Hub model (repo:quant, a URL)
            return
        last = self.config.last_model
        if last.startswith(CATALOG_PREFIX) and last[len(CATALOG_PREFIX):] in self._catalog:
            self.open_catalog(last[len(CATALOG_PREFIX):])
        elif last.startswith("hf:"):
            self.ctl.open_reference(last)  # from the header cache when offline
        elif last and os.path.exists(last):
            self.open_path(last)
        elif self._catalog:
            self.open_catalog(next(iter(self._catalog)))

    def open_dialog(self) -> None:
        start = os.path.dirname(self.config.recent_files[0]) if self.config.recent_files else ""
        path, _ = QFileDialog.getOpenFileName(self, "Open a GGUF model", start,
                                              "GGUF models (*.gguf);;All files (*)")
        if path:
            self.open_path(path)

    def _fill_recent(self) -> None:
        self.recent_menu.clear()
        for p in self.config.recent_files:
            a = self.recent_menu.addAction(p)
            a.triggered.connect(lambda _c=False, p=p: self.open_path(p))
        if not self.config.recent_files:
            self.recent_menu.addAction("(none yet)").setEnabled(False)
        else:
            self.recent_menu.addSeparator()
            self.recent_menu.addAction("Clear list", self._clear_recent)

    def _clear_recent(self) -> None:
        self.config.recent_files = []
        self._save()

    def dragEnterEvent(self, ev: QDragEnterEvent) -> None:
        if self._dropped_path(ev) is not None:
            ev.acceptProposedAction()
        else:
            ev.ignore()

    def dropEvent(self, ev: QDropEvent) -> None:
        path = self._dropped_path(ev)
        if path is not None:
            ev.acceptProposedAction()
            self.ctl.open_reference(path)

    @staticmethod
    def _dropped_path(ev: Any) -> str | None:
        md = ev.mimeData()
        if not md.hasUrls():
            return None
        for url in md.urls():
            if url.isLocalFile() and url.toLocalFile().lower().endswith(".gguf"):
                return str(url.toLocalFile())
            if not url.isLocalFile():  # a link dragged from the Hub's page of a model
                from kvgui.sources.resolve import looks_like_hub_reference

                text = url.toString()
                if looks_like_hub_reference(text):
                    return text
        return None

    def _on_loading(self, loading: bool) -> None:
        self.model_panel.set_loading(loading)
        if loading:
            self.statusBar().showMessage("Reading the model header and planning it…")

    def _on_load_failed(self, source: str, reason: str) -> None:
        self.model_panel.set_model(self.ctl.model, self.ctl.model_source)
        name = os.path.basename(source) or source
        self.statusBar().showMessage(f"Could not open {name}: {reason}", 15000)
        # not exec(): the window stays live (and a test or a second drop is not blocked)
        box = QMessageBox(QMessageBox.Icon.Warning, "Could not open the model",
                          f"Could not open {name}", QMessageBox.StandardButton.Ok, self)
        box.setInformativeText(reason)
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.setObjectName("loadError")
        box.open()

    def _on_model(self, model: ModelInfo | None) -> None:
        src = self.ctl.model_source
        self.verify_panel.hide()
        self.model_panel.set_model(model, src)
        if model is not None:
            self.ctx.set_trained(model.n_ctx_train or 0)
            self.config.last_model = src
            if not src.startswith(CATALOG_PREFIX):
                self.config.add_recent(src)
            name = one_line(model.name, 80)  # the file's text: printable, one line
            self.statusBar().showMessage(f"Opened {name}", 5000)
            self.setWindowTitle(f"{name} — kvgui")
            self._save()
        self.act_verify.setEnabled(model is not None and not src.startswith(CATALOG_PREFIX))
        self.act_chat.setEnabled(model is not None and not src.startswith(CATALOG_PREFIX))
        self.launch.set_enabled(model is not None and not src.startswith(CATALOG_PREFIX))  # hook
        panel = self._measure_panel()
        if panel is not None:  # the Measure window follows the model (never mixes two)
            panel.set_model(src if model is not None and not src.startswith(CATALOG_PREFIX)
                            else None)
            self._measure_budget(panel)

    # --- settings -----------------------------------------------------------------------
    def _on_settings(self, s: Any) -> None:
        """Settings changed by something other than the slider (a preset, an import, a fix,
        a control): show the context, and drop dry-run figures made for other settings."""
        self.ctx.set_ctx(s.n_ctx)
        if self.verify_panel.isVisible() and not self._verify.running:
            self.verify_panel.hide()
        panel = self._measure_panel()
        if panel is not None:
            panel.set_settings(s)
            self._measure_budget(panel)

    def _on_threshold(self, threshold: Any) -> None:
        self.ctl.set_quality_threshold(threshold)
        panel = self._measure_panel()
        if panel is not None:
            panel.set_threshold(threshold)

    def _measure_panel(self) -> Any:
        win = getattr(self, "_measure_window", None)
        return win.centralWidget() if win is not None else None

    def _measure_budget(self, panel: Any) -> None:
        budget = self.ctl.measure_budget()
        panel.set_budget(budget[0] if budget is not None else None)

    def _on_controls(self, state: ControlsState) -> None:
        self.cache_controls.set_state(state)

    def _on_plan(self, plan: Any) -> None:
        gpus = list(plan.gpus)
        self.hw_panel.set_reserve_total(sum(v.reserved for v in plan.views))
        live = ""
        if self._hw_report is not None and not plan.planned and gpus:
            parts = [f"{format_bytes(gpus[0].total or 0)} total"]
            in_use = [g.in_use for g in self.ctl.hardware.detected]
            if in_use:
                parts.append(f"{format_bytes(in_use[0])} in use by other programs now")
            live = " · ".join(parts)
        elif self._hw_report is not None and not plan.planned and not gpus:
            reasons = list(self._hw_report.reasons)[:2]
            live = "No GPU found. " + " ".join(reasons) if reasons else "No GPU found."
        self.hw_panel.set_live(live)

    # --- drawing ------------------------------------------------------------------------
    def _on_snapshot(self, snap: Snapshot) -> None:
        self.bar.set_rows(snap.rows, "; ".join(snap.errors))
        self.table.set_rows(snap.compare)
        self.quality_bar.set_advice(snap.quality)
        self.plot.set_cursor(snap.n_ctx)
        self._show_headline()
        est = snap.estimate
        # the slider marks the trained context itself; the rest of the warnings go here
        found = est.findings if est else ()
        warns = [f.message for f in found
                 if f.severity is Severity.WARNING and f.code is not Code.BEYOND_TRAINED]
        notes = [f.message for f in found if f.severity is Severity.NOTE]
        text = "\n".join([*(f"⚠ {w}" for w in warns), *(f"Note: {n}" for n in notes)])
        if text != self.warnings.text():
            self.warnings.setText(text)
            self.warnings.setVisible(bool(text))

    def _on_curves(self, curves: Curves) -> None:
        self.plot.set_curves(curves)
        self.plot.set_cursor(self.ctl.settings.n_ctx)

    def _show_headline(self) -> None:
        verdict, detail, state = self.ctl.headline()
        t = theme.current()
        color = {"ok": t.ok, "over": t.over, "error": t.over}.get(state, t.text)
        if verdict != self.headline.text():
            self.headline.setText(verdict)
        style = f"color: {color.name()}"
        if self.headline.styleSheet() != style:
            self.headline.setStyleSheet(style)
        if detail != self.detail.text():
            self.detail.setText(detail)
        plan = self.ctl.plan.title
        if plan != self.plan_label.text():
            self.plan_label.setText(plan)

    # --- actions ------------------------------------------------------------------------
    def export_dialog(self) -> None:
        from kvgui.ui.export_dialog import ExportDialog

        est = self.ctl.snapshot.estimate if self.ctl.snapshot else None
        from kvgui.sources.resolve import hf_model_args

        dlg = ExportDialog(self.ctl.settings, self.ctl.export_model_path(),
                           est.flash_attn if est else None, self,
                           model_args=hf_model_args(self.ctl.model_source))
        dlg.exec()

    def import_dialog(self) -> None:
        from kvgui.ui.import_dialog import ImportDialog

        dlg = ImportDialog(self.ctl.settings, self)
        if dlg.exec() and dlg.parsed is not None:
            self.apply_import(dlg.parsed)

    def save_preset_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save preset", "kvgui-preset.json",
                                              "kvgui presets (*.json)")
        if path:
            self.save_preset_to(path)

    def save_preset_to(self, path: str) -> None:
        from kvgui.core.commandline.preset import Preset, save_preset

        src = self.ctl.model_source
        model_path = src if src and not src.startswith(CATALOG_PREFIX) else None
        try:
            save_preset(path, Preset(self.ctl.settings, model_path=model_path))
        except OSError as exc:
            self.statusBar().showMessage(f"Could not save the preset: {exc.strerror}", 15000)
            return
        self.statusBar().showMessage(f"Saved the preset to {path}", 8000)

    def load_preset_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load preset", "", "kvgui presets (*.json)")
        if path:
            self.load_preset_from(path)

    def load_preset_from(self, path: str) -> bool:
        """Every setting of the preset (and its model, if the file is there) into the window."""
        import dataclasses

        from kvgui.core.commandline.parse import ParsedCommand
        from kvgui.core.commandline.preset import PresetError, load_preset
        from kvgui.core.config.settings import Settings

        try:
            preset = load_preset(path)
        except PresetError as exc:
            self.statusBar().showMessage(f"Not loaded: {exc}", 15000)
            return False
        fields = frozenset(f.name for f in dataclasses.fields(Settings))
        self.apply_import(ParsedCommand(program=None, model_path=preset.model_path,
                                        settings=preset.settings, given=fields,
                                        extras=dict(preset.extras),
                                        unknown=[]))
        return True

    def apply_import(self, parsed: Any) -> None:
        path = self.ctl.apply_import(parsed)
        if path:
            self.open_path(path)

    def verify(self) -> None:
        src = self.ctl.model_source
        if not src or src.startswith(CATALOG_PREFIX):
            self.statusBar().showMessage("Verify needs a real GGUF file: open one first", 8000)
            return
        if self._verify.start(src, self.ctl.settings):
            self.verify_panel.show_running()
            self.statusBar().showMessage("Asking llama.cpp (dry run, no weights read)…")

    def _on_verified(self, settings: Any, result: Any, error: str) -> None:
        if error:
            self.verify_panel.show_error(error)
            self.statusBar().showMessage(f"llama.cpp dry run failed: {error}", 15000)
            return

        if self.ctl.model is None:
            return
        from kvgui.runtime.verification import dry_run_gpus, estimate_as_verified, layout_note

        est = estimate_as_verified(self.ctl.model, settings, result)
        planned = [g.name for g in self.ctl.plan.gpus]
        self.verify_panel.show_result(est, result, layout_note(planned, dry_run_gpus(result)))
        self.statusBar().showMessage("llama.cpp's own figures are beside the estimate", 8000)

    def launch_chat(self) -> None:
        self.launch.launch_chat()  # launch hook: reuses an open chat, asks first

    def measure(self) -> None:
        src = self.ctl.model_source
        if not src or src.startswith(CATALOG_PREFIX):
            self.statusBar().showMessage("Measuring needs a real GGUF file: open one first", 8000)
            return
        try:
            from kvgui.ui.measure_panel import MeasurePanel
        except ImportError as exc:
            QMessageBox.information(self, "Measure", f"Not available in this build: {exc}")
            return
        win = getattr(self, "_measure_window", None)
        if win is None:
            win = QMainWindow(self)
            win.setWindowTitle("kvgui — measure cache quality")
            new = MeasurePanel(win)
            win.setCentralWidget(new)
            win.resize(1200, 860)
            self._measure_window = win
            new.set_recommender(self.ctl.measure_recommendation)
            new.runFinished.connect(self.ctl.set_measured)
            new.textChanged.connect(self.ctl.set_measure_text)
            if self.config.measure_text:
                new.set_text_file(self.config.measure_text)
        panel = win.centralWidget()
        assert isinstance(panel, MeasurePanel)
        panel.set_threshold(self.ctl.threshold)
        panel.set_settings(self.ctl.settings)
        panel.set_model(src)
        self._measure_budget(panel)
        win.show()

    def about(self) -> None:
        QMessageBox.about(
            self, "About kvgui",
            f"<h3>kvgui {__version__}</h3>"
            "<p>Will this GGUF model fit on my GPU, at this context, with which KV cache "
            "type?</p><p>Memory figures follow the bundled llama.cpp's own allocation rules "
            "(KV cache, compute buffer, output buffer) and can be checked against llama.cpp "
            "itself with <i>Verify</i>.</p><p>Quality notes are measured on your model "
            "(<i>Measure</i>) or, until then, quote published measurements: llama.cpp PRs "
            "#6183, #7412, #7527, #21551 and localbench's KV cache benchmark.</p>"
            f"<p>Qt {self._qt_version()} · MIT licence</p>")

    def show_log(self) -> None:
        """The log's last lines, plain text, with the file's place to attach to a report."""
        from PySide6.QtWidgets import QDialog, QDialogButtonBox, QPlainTextEdit

        from kvgui.logs import log_path, tail

        dlg = QDialog(self)
        dlg.setObjectName("logDialog")
        dlg.setWindowTitle("kvgui log")
        lay = QVBoxLayout(dlg)
        where = QLabel(f"{log_path()}")
        where.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        where.setTextFormat(Qt.TextFormat.PlainText)
        text = QPlainTextEdit()
        text.setReadOnly(True)
        text.setPlainText(tail() or "(nothing logged yet)")
        text.moveCursor(text.textCursor().MoveOperation.End)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        folder = buttons.addButton("Open folder", QDialogButtonBox.ButtonRole.ActionRole)
        folder.clicked.connect(lambda: self.open_url(QUrl.fromLocalFile(
            str(log_path().parent)).toString()))
        buttons.rejected.connect(dlg.reject)
        lay.addWidget(where)
        lay.addWidget(text, 1)
        lay.addWidget(buttons)
        dlg.resize(900, 520)
        dlg.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dlg.open()
        self._log_dialog = dlg

    @staticmethod
    def _qt_version() -> str:
        from PySide6 import QtCore

        return str(QtCore.qVersion())

    @staticmethod
    def open_url(url: str) -> None:
        QDesktopServices.openUrl(QUrl(url))

    # --- persistence --------------------------------------------------------------------
    def _restore_geometry(self) -> None:
        c = self.config
        restored = False
        if c.geometry:
            try:
                restored = self.restoreGeometry(QByteArray(base64.b64decode(c.geometry)))
            except ValueError:
                restored = False
        if c.window_state:
            with contextlib.suppress(ValueError):
                self.restoreState(QByteArray(base64.b64decode(c.window_state)))
        self.geometry_restored = restored
        if not restored:
            screen = QApplication.primaryScreen()
            avail = screen.availableGeometry() if screen else None
            w, h = 1560, 960
            if avail is not None:
                w, h = min(w, int(avail.width() * 0.95)), min(h, int(avail.height() * 0.92))
            self.resize(w, h)

    def _save(self) -> None:
        if not self.persist:
            return
        c = self.config
        c.settings = self.ctl.settings
        c.ngl_mode = self.ctl.ngl_mode
        c.hardware = self.hw_panel.choice()
        c.advanced_open = self.cache_controls.advanced.isVisible() or \
            self.cache_controls.adv_toggle.isChecked()
        c.geometry = base64.b64encode(bytes(self.saveGeometry().data())).decode("ascii")
        c.window_state = base64.b64encode(bytes(self.saveState().data())).decode("ascii")
        try:
            save_config(c)
        except OSError as exc:
            self.statusBar().showMessage(f"could not save settings: {exc.strerror}", 8000)

    def closeEvent(self, ev: QCloseEvent) -> None:
        self._poll.stop()
        self._save()
        win = getattr(self, "_measure_window", None)
        if win is not None:  # no measuring worker outlives the window
            panel = win.centralWidget()
            if hasattr(panel, "shutdown"):
                panel.shutdown()
        self.launch.close_all()  # launch hook: chats, servers, llama-fit-params
        super().closeEvent(ev)
