"""The hardware card: which GPU to plan for, and what to set aside (the reserve).

Detected GPUs show their live free memory; any GPU from the catalog, or a custom size, plans
for hardware the user does not own. It edits a HardwareChoice and emits it; the controller
turns it into device budgets.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QCompleter,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from kvgui.core.devices.budget import (
    ALL_GPUS,
    HW_CATALOG,
    HW_CUSTOM,
    HW_DETECTED,
    HardwareChoice,
    parse_rpc_specs,
)
from kvgui.core.devices.budget import (
    EMBEDDING_PRESETS as CORE_EMBEDDINGS,
)
from kvgui.core.devices.hardware.types import GpuInfo
from kvgui.core.errors import UsageError
from kvgui.core.sizes import GiB, format_bytes, parse_size

# the same embedding models, with the same sizes, as the CLI's --reserve-embedding
EMBEDDING_PRESETS: tuple[tuple[str, int, str], ...] = (
    ("none", 0, "embedding model"),
    *((f"{e.name} ≈ {format_bytes(e.f16_bytes(), 1)}", e.f16_bytes(), e.name)
      for e in CORE_EMBEDDINGS.values()),
)


def _rpc_text(spec: str) -> str:
    """A HardwareChoice.rpc entry as typed: HOST:PORT or HOST:PORT=24GiB."""
    ep, eq, size = spec.partition("=")
    return f"{ep}={format_bytes(parse_size(size))}".replace(" ", "") if eq else ep


def _gib_spin(tip: str, maximum: float = 1024.0) -> QDoubleSpinBox:
    s = QDoubleSpinBox()
    s.setRange(0.0, maximum)
    s.setDecimals(2)
    s.setSingleStep(0.25)
    s.setSuffix(" GiB")
    s.setKeyboardTracking(False)
    s.setToolTip(tip)
    return s


class HardwarePanel(QWidget):
    choiceChanged = Signal(object)  # HardwareChoice

    def __init__(self, choice: HardwareChoice | None = None,
                 catalog_names: Sequence[str] = (), parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._choice = choice or HardwareChoice()
        self._detected: list[GpuInfo] = []
        self._updating = False
        self.target = QComboBox()
        self.target.setToolTip("Plan for a GPU in this machine (live free memory), a GPU from "
                               "the catalog, or any memory size")
        self.target.activated.connect(self._target_changed)
        self.catalog = QComboBox()
        self.catalog.setEditable(True)
        self.catalog.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.catalog.addItems(list(catalog_names))
        comp = QCompleter(list(catalog_names), self.catalog)
        comp.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        comp.setFilterMode(Qt.MatchFlag.MatchContains)
        self.catalog.setCompleter(comp)
        self.catalog.setToolTip("Type to search: RTX 4060, 3090, M2 Max 64 GB, RX 7900 XTX …")
        self.catalog.activated.connect(self._emit)
        self.custom = _gib_spin("Memory of the GPU you plan for")
        self.custom.setRange(0.5, 4096)
        self.custom.valueChanged.connect(self._emit)
        self.live = QLabel()
        self.live.setObjectName("muted")
        self.live.setWordWrap(True)
        self.desktop = _gib_spin("Desktop, browser and other apps' GPU memory. 'auto' uses "
                                 "what is in use on a detected GPU at this moment (none on a "
                                 "planned GPU).")
        self.desktop.setMinimum(-0.01)
        self.desktop.setSpecialValueText("auto")
        self.desktop.valueChanged.connect(self._emit)
        self.embedding = QComboBox()
        self.embedding.setToolTip("An embedding model loaded beside the chat model (RAG); "
                                  "BGE-M3 is 568M parameters")
        for label, nbytes, _name in EMBEDDING_PRESETS:
            self.embedding.addItem(label, nbytes)
        self.embedding.activated.connect(self._emit)
        self.mmproj = _gib_spin("A vision projector (mmproj) file loaded with the model: its "
                                "file size")
        self.mmproj_btn = QToolButton()
        self.mmproj_btn.setText("…")
        self.mmproj_btn.setToolTip("Take the size from an mmproj .gguf file")
        self.mmproj_btn.clicked.connect(self._pick_mmproj)
        self.margin = _gib_spin("Safety margin kept free (llama.cpp's --fit keeps 1 GiB)")
        self.margin.valueChanged.connect(self._emit)
        self.reserve_total = QLabel()
        self.reserve_total.setObjectName("muted")
        self.rpc = QLineEdit()
        self.rpc.setPlaceholderText("host:port[=24GiB], …")
        self.rpc.setToolTip("llama.cpp RPC servers (ggml-rpc-server on other machines) to "
                            "plan for, as llama.cpp's --rpc takes them: their devices come "
                            "before this machine's GPUs. kvgui asks each server for its "
                            "memory; add =SIZE for one it cannot reach from here. Exported "
                            "as --rpc.")
        self.rpc.editingFinished.connect(self._rpc_edited)
        self.rpc_error = QLabel()
        self.rpc_error.setObjectName("errorText")
        self.rpc_error.setWordWrap(True)
        self.rpc_error.hide()

        form = QFormLayout()
        form.setHorizontalSpacing(14)
        form.setVerticalSpacing(4)
        form.addRow("Plan for", self.target)
        self._catalog_row = QLabel("GPU model")
        form.addRow(self._catalog_row, self.catalog)
        self._custom_row = QLabel("Memory")
        form.addRow(self._custom_row, self.custom)
        form.addRow("", self.live)
        form.addRow("RPC servers", self.rpc)
        form.addRow("", self.rpc_error)
        title = QLabel("RESERVE")
        title.setObjectName("cardTitle")
        title.setToolTip("Memory set aside before llama.cpp: it comes off the budget")
        form.addRow(title)
        form.addRow("Desktop / apps", self.desktop)
        form.addRow("Embedding model", self.embedding)
        mm = QHBoxLayout()
        mm.addWidget(self.mmproj, 1)
        mm.addWidget(self.mmproj_btn)
        form.addRow("Vision projector", mm)
        form.addRow("Safety margin", self.margin)
        form.addRow("", self.reserve_total)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(form)
        self._form = form
        self.set_detected([], ())
        self.set_choice(self._choice)

    # --- state in -----------------------------------------------------------------------
    def set_detected(self, gpus: Sequence[GpuInfo], reasons: Sequence[str]) -> None:
        self._detected = list(gpus)
        self._updating = True
        self.target.clear()
        if gpus:
            for i, g in enumerate(gpus):
                self.target.addItem(f"{g.name} ({format_bytes(g.total, 0)})", (HW_DETECTED, i))
            if len(gpus) > 1:
                self.target.addItem(f"All {len(gpus)} GPUs (layer split)",
                                    (HW_DETECTED, ALL_GPUS))
        else:
            self.target.addItem("This machine: CPU only", (HW_DETECTED, 0))
            self.target.setItemData(0, "\n".join(reasons) or "no GPU found",
                                    Qt.ItemDataRole.ToolTipRole)
        self.target.addItem("A GPU from the catalog…", (HW_CATALOG, 0))
        self.target.addItem("Custom memory size…", (HW_CUSTOM, 0))
        self._updating = False
        self.set_choice(self._choice)

    def set_choice(self, choice: HardwareChoice) -> None:
        self._choice = choice
        self._updating = True
        want = (choice.mode, choice.detected_index if choice.mode == HW_DETECTED else 0)
        idx = next((i for i in range(self.target.count()) if self.target.itemData(i) == want),
                   0)
        self.target.setCurrentIndex(idx)
        if choice.catalog_name:
            self.catalog.setCurrentText(choice.catalog_name)
        self.custom.setValue(choice.custom_bytes / GiB)
        self.desktop.setValue(-0.01 if choice.desktop is None else choice.desktop / GiB)
        e = self.embedding.findData(choice.embedding)
        if e < 0:
            self.embedding.addItem(f"{format_bytes(choice.embedding)}", choice.embedding)
            e = self.embedding.count() - 1
        self.embedding.setCurrentIndex(e)
        self.mmproj.setValue(choice.mmproj / GiB)
        self.margin.setValue(choice.margin / GiB)
        text = ", ".join(_rpc_text(r) for r in choice.rpc)
        if text != self.rpc.text():
            self.rpc.setText(text)
        self._updating = False
        self._sync_visibility()

    def set_live(self, text: str) -> None:
        self.live.setText(text)
        self.live.setVisible(bool(text))

    def set_reserve_total(self, nbytes: int) -> None:
        self.reserve_total.setText(f"Reserve in all: {format_bytes(nbytes)}")

    # --- state out ----------------------------------------------------------------------
    def choice(self) -> HardwareChoice:
        mode, index = self.target.currentData() or (HW_DETECTED, 0)
        desktop = None if self.desktop.value() < 0 else int(self.desktop.value() * GiB)
        return dataclasses.replace(
            self._choice, mode=mode,
            detected_index=index if mode == HW_DETECTED else self._choice.detected_index,
            catalog_name=self.catalog.currentText().strip(),
            custom_bytes=int(self.custom.value() * GiB), desktop=desktop,
            embedding=int(self.embedding.currentData() or 0),
            embedding_name=next((name for _l, n, name in EMBEDDING_PRESETS
                                 if n == int(self.embedding.currentData() or 0)),
                                "embedding model"),
            mmproj=int(self.mmproj.value() * GiB), margin=int(self.margin.value() * GiB),
            rpc=self._rpc_specs())

    def _rpc_specs(self) -> tuple[str, ...]:
        """The RPC field as HardwareChoice.rpc ("HOST:PORT" or "HOST:PORT=BYTES"); the last
        valid value while the text does not read (the error says why)."""
        try:
            specs = parse_rpc_specs(self.rpc.text())
        except UsageError as exc:
            self.rpc_error.setText(str(exc))
            self.rpc_error.show()
            return self._choice.rpc
        self.rpc_error.hide()
        return tuple(sp.endpoint if sp.memory is None else f"{sp.endpoint}={sp.memory}"
                     for sp in specs)

    def _rpc_edited(self) -> None:
        if self._rpc_specs() != self._choice.rpc:
            self._emit()

    def _sync_visibility(self) -> None:
        mode = (self.target.currentData() or (HW_DETECTED, 0))[0]
        self._catalog_row.setVisible(mode == HW_CATALOG)
        self.catalog.setVisible(mode == HW_CATALOG)
        self._custom_row.setVisible(mode == HW_CUSTOM)
        self.custom.setVisible(mode == HW_CUSTOM)

    def _target_changed(self, _index: int) -> None:
        self._sync_visibility()
        self._emit()

    def _emit(self, *_args: object) -> None:
        if self._updating:
            return
        self._choice = self.choice()
        self.choiceChanged.emit(self._choice)

    def _pick_mmproj(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Vision projector (mmproj)", "",
                                              "GGUF files (*.gguf);;All files (*)")
        if path:
            import os

            self.mmproj.setValue(os.path.getsize(path) / GiB)
