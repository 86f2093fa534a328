"""Open a model from Hugging Face: search or name a repo, see every quant x K/V pair against
this machine's budget, open one (only its header is read) or download it.

Everything that touches the network runs in a thread (kvgui.sources does the work) and comes
back through Qt signals, so the window never freezes; a download shows progress, speed and
the time left, can be cancelled, and resumes where it stopped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from kvgui.core.config.settings import Settings
from kvgui.core.devices.device_budget import DeviceBudget
from kvgui.core.sizes import format_bytes

log = logging.getLogger(__name__)


def _tokens(n: int | None) -> str:
    if n is None:
        return "refused"
    if n == 0:
        return "no fit"
    return f"{n // 1024}K" if n % 1024 == 0 else f"{n:,}"


class _Bridge(QObject):
    """Signals that carry results from worker threads to the GUI thread."""

    searched = Signal(object, str)  # list[SearchHit], error
    listed = Signal(object, str)  # RepoListing | None, error
    row = Signal(object)  # QuantRow (planned)
    progress = Signal(object)  # download Progress
    downloaded = Signal(object, str)  # OpenedModel | None, error


class HubDialog(QDialog):
    """``modelChosen(str)`` carries the reference to open ("hf:repo:TAG")."""

    modelChosen = Signal(str)

    def __init__(self, settings: Settings, devices: Sequence[DeviceBudget],
                 parent: QWidget | None = None, *, token: str = "") -> None:
        super().__init__(parent)
        from kvgui.sources.quant_table import TABLE_PAIRS

        self.setWindowTitle("Open from Hugging Face")
        self.resize(980, 560)
        self.settings, self.devices = settings, list(devices)
        self.pairs = TABLE_PAIRS
        self.listing: Any = None
        self.rows: list[Any] = []
        self._token = 0  # newer requests supersede older ones
        self._cancel: threading.Event | None = None
        self._bridge = _Bridge(self)
        b = self._bridge
        b.searched.connect(self._on_searched)
        b.listed.connect(self._on_listed)
        b.row.connect(self._on_row)
        b.progress.connect(self._on_progress)
        b.downloaded.connect(self._on_downloaded)

        self.query = QLineEdit()
        self.query.setPlaceholderText("search, or org/repo[:QUANT], or a huggingface.co link")
        self.query.returnPressed.connect(self.go)
        self.go_button = QPushButton("Search / open")
        self.go_button.clicked.connect(self.go)
        self.token = QLineEdit(token)
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("token (hf_…) for gated or private repos; HF_TOKEN works")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.results = QListWidget()
        self.results.itemClicked.connect(
            lambda it: self.list_repo(it.data(Qt.ItemDataRole.UserRole)))
        self.table = QTableWidget(0, 2 + len(self.pairs))
        labels = ["quant", "size"] + [k if k == v else f"{k}/{v}" for k, v in self.pairs]
        self.table.setHorizontalHeaderLabels(labels)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.table.cellDoubleClicked.connect(lambda *_: self.open_selected())
        self.open_button = QPushButton("Open (header only)")
        self.open_button.clicked.connect(self.open_selected)
        self.download_button = QPushButton("Download")
        self.download_button.clicked.connect(self.download_selected)
        self.cancel_button = QPushButton("Cancel download")
        self.cancel_button.clicked.connect(self.cancel_download)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        self.progress_label = QLabel("")

        top = QHBoxLayout()
        top.addWidget(self.query, 3)
        top.addWidget(self.go_button)
        top.addWidget(self.token, 2)
        body = QHBoxLayout()
        body.addWidget(self.results, 1)
        body.addWidget(self.table, 3)
        actions = QHBoxLayout()
        actions.addWidget(self.progress, 1)
        actions.addWidget(self.progress_label, 1)
        actions.addWidget(self.cancel_button)
        actions.addWidget(self.download_button)
        actions.addWidget(self.open_button)
        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.status)
        lay.addLayout(body, 1)
        lay.addLayout(actions)
        self._downloading = False
        self._update_buttons()

    # --- helpers ------------------------------------------------------------------------
    def _config(self) -> Any:
        from kvgui.sources.hub import HubConfig

        return HubConfig.from_env(token=self.token.text().strip() or None)

    def _run(self, work: Any) -> None:
        threading.Thread(target=work, name="kvgui-hub", daemon=True).start()

    def _say(self, text: str) -> None:
        self.status.setText(text)

    def _selected_row(self) -> Any:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not rows:
            return None
        i = rows[0].row()
        return self.rows[i] if 0 <= i < len(self.rows) else None

    def _update_buttons(self) -> None:
        row = self._selected_row()
        ready = row is not None and row.opened is not None
        self.open_button.setEnabled(ready and not self._downloading)
        self.download_button.setEnabled(ready and not self._downloading
                                        and not row.opened.local_path)
        self.cancel_button.setEnabled(self._downloading)

    # --- search and listing -------------------------------------------------------------
    def go(self) -> None:
        from kvgui.sources.modelref import parse_hub_ref

        text = self.query.text().strip()
        cfg = self._config()
        ref = parse_hub_ref(text, hub_hosts=cfg.hub_hosts)
        if ref is not None and "/" in text:
            self.list_repo(ref.repo, ref.revision)
            return
        self._token += 1
        token = self._token
        self._say(f"Searching for {text!r}…")

        def work() -> None:
            from kvgui.sources.hub import search_repos

            try:
                hits = search_repos(text, config=cfg)
                err = ""
            except Exception as exc:  # HubError, or anything unexpected: one line
                log.info("search failed: %s", exc)
                hits, err = [], str(exc)
            if token == self._token:
                self._bridge.searched.emit(hits, err)

        self._run(work)

    def _on_searched(self, hits: list[Any], error: str) -> None:
        self.results.clear()
        for h in hits:
            it = QListWidgetItem(f"{h.repo}  ({h.downloads:,} downloads)"
                                 + ("  · gated" if h.gated else ""))
            it.setData(Qt.ItemDataRole.UserRole, h.repo)
            self.results.addItem(it)
        self._say(error or (f"{len(hits)} GGUF repos" if hits else "No GGUF repos found"))

    def list_repo(self, repo: str, revision: str = "main") -> None:
        self._token += 1
        token = self._token
        cfg = self._config()
        self._say(f"Listing {repo}…")
        self.table.setRowCount(0)
        self.rows = []

        def work() -> None:
            from kvgui.sources.hub import list_repo

            try:
                listing, err = list_repo(repo, revision, config=cfg), ""
            except Exception as exc:
                listing, err = None, str(exc)
            if token != self._token:
                return
            self._bridge.listed.emit(listing, err)
            if listing is None:
                return
            from kvgui.sources.quant_table import plan_rows, read_quants

            groups = sorted((g for g in listing.quants if not g.projector),
                            key=lambda g: (g.size is None, g.size or 0))

            def planned(row: Any) -> None:
                plan_rows([row], self.settings, self.devices, self.pairs)
                if token == self._token:
                    self._bridge.row.emit(row)

            read_quants(listing, groups, config=cfg, on_row=planned)

        self._run(work)

    def _on_listed(self, listing: Any, error: str) -> None:
        self.listing = listing
        if listing is None:
            self._say(error)
            if "token" in error:
                self.token.setFocus()
            return
        projectors = [g.first.path for g in listing.quants if g.projector]
        extra = f"; vision projector: {', '.join(projectors)}" if projectors else ""
        cached = " (from the cache)" if listing.from_cache else ""
        self._say(f"{listing.repo} at {listing.commit[:12]}{cached}: reading each quant's "
                  f"header{extra}")

    def _on_row(self, row: Any) -> None:
        self.rows.append(row)
        self.rows.sort(key=lambda r: (r.group.size is None, r.group.size or 0))
        self._fill_table()

    def _fill_table(self) -> None:
        self.table.setRowCount(len(self.rows))
        for i, r in enumerate(self.rows):
            label = r.group.label + ("  ⬇" if r.opened and r.opened.local_path else "")
            self.table.setItem(i, 0, QTableWidgetItem(label))
            size = format_bytes(r.group.size) if r.group.size is not None else "?"
            self.table.setItem(i, 1, QTableWidgetItem(size))
            if r.error:
                item = QTableWidgetItem(r.error)
                self.table.setItem(i, 2, item)
                self.table.setSpan(i, 2, 1, len(self.pairs))
                continue
            for j, c in enumerate(r.cells):
                mark = "✓" if c.fits else "✗"
                item = QTableWidgetItem(f"{mark} {_tokens(c.max_ctx)}")
                tip = [f"at -c {self.settings.n_ctx}: {'fits' if c.fits else 'does not fit'}"]
                if c.headroom is not None:
                    tip.append(("headroom " if c.headroom >= 0 else "over by ")
                               + format_bytes(abs(c.headroom)))
                if c.error:
                    tip.append(c.error)
                tip.append(f"longest context that fits: {_tokens(c.max_ctx)}")
                item.setToolTip("\n".join(tip))
                item.setForeground(Qt.GlobalColor.darkGreen if c.fits else Qt.GlobalColor.red)
                self.table.setItem(i, 2 + j, item)
        self._update_buttons()

    # --- open and download --------------------------------------------------------------
    def open_selected(self) -> None:
        row = self._selected_row()
        if row is None or row.opened is None:
            return
        self.modelChosen.emit(row.opened.source)
        self.accept()

    def download_selected(self) -> None:
        row = self._selected_row()
        if row is None or row.opened is None or self.listing is None:
            return
        cfg = self._config()
        self._cancel = threading.Event()
        cancel = self._cancel
        self._downloading = True
        self._update_buttons()
        self.progress.setValue(0)
        listing, group = self.listing, row.group
        self.progress_label.setText(f"Downloading {group.label}…")

        def work() -> None:
            from kvgui.sources.download import Cancelled, download
            from kvgui.sources.resolve import open_listed

            try:
                download(listing, group, config=cfg, on_progress=self._bridge.progress.emit,
                         cancel=cancel)
                self._bridge.downloaded.emit(open_listed(listing, group, config=cfg), "")
            except Cancelled:
                self._bridge.downloaded.emit(None, "cancelled: the partial file is kept, "
                                             "Download resumes it")
            except Exception as exc:  # HubError (disk, checksum, network…): one line
                log.info("download failed: %s", exc)
                self._bridge.downloaded.emit(None, str(exc))

        self._run(work)

    def cancel_download(self) -> None:
        if self._cancel is not None:
            self._cancel.set()

    def _on_progress(self, p: Any) -> None:
        self.progress.setValue(int(p.fraction * 1000))
        eta = f", {p.eta / 60:.0f} min left" if p.eta and p.eta >= 90 else \
            (f", {p.eta:.0f} s left" if p.eta is not None else "")
        part = f"part {p.part}/{p.parts}: " if p.parts > 1 else ""
        self.progress_label.setText(f"{part}{format_bytes(p.done)} of {format_bytes(p.total)}"
                                    f" · {format_bytes(int(p.speed))}/s{eta}")

    def _on_downloaded(self, opened: Any, error: str) -> None:
        self._downloading = False
        if opened is None:
            self.progress_label.setText(error)
            self._update_buttons()
            return
        self.progress.setValue(1000)
        self.progress_label.setText(f"Downloaded to {opened.local_path}")
        for r in self.rows:
            if r.group == opened.group:
                r.opened = opened
        self._fill_table()
        self.modelChosen.emit(opened.source)
        self.accept()

    def done(self, result: int) -> None:  # closing cancels a running download
        self.cancel_download()
        super().done(result)


def show_hub_dialog(window: Any) -> HubDialog:
    """The main window's File ▸ Open from Hugging Face: plan for its settings and hardware."""
    ctl = window.ctl
    dlg = HubDialog(ctl.settings, ctl.plan.devices(), window)
    dlg.modelChosen.connect(ctl.open_reference)
    dlg.setObjectName("hubDialog")
    dlg.open()
    return dlg


def show_local_models(window: Any) -> Any:
    from kvgui.ui.local_models_dialog import LocalModelsDialog

    dlg = LocalModelsDialog(window.config.recent_files, window)
    dlg.modelChosen.connect(window.ctl.open_reference)
    dlg.setObjectName("localModelsDialog")
    dlg.open()
    return dlg
