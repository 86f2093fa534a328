"""The model card: what is open, and a summary of what llama.cpp will see in its header."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from kvgui.core import untrusted
from kvgui.core.model.info import ModelInfo
from kvgui.core.sizes import format_bytes


def params_text(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f} B"
    if n >= 1e6:
        return f"{n / 1e6:.0f} M"
    return f"{n:,}"


def summary_rows(m: ModelInfo) -> list[tuple[str, str, str]]:
    """(label, value, tooltip) for the summary form."""
    rows = [
        ("Architecture", m.arch, "general.architecture: which llama.cpp graph builds it"),
        ("Parameters", params_text(m.n_params) if m.n_params else "—",
         "counted from the tensor shapes in the header"),
        ("File type", m.file_type or "—", "general.file_type: the weights' quantization mix"),
        ("File size", format_bytes(m.file_bytes) if m.file_bytes else "—",
         "all split parts together"),
        ("Layers", f"{m.n_layer}", "block_count: transformer blocks"),
        ("Heads / KV heads", f"{m.n_head} / {m.n_head_kv}",
         "attention heads / key-value heads (fewer KV heads = grouped-query attention, a "
         "smaller KV cache)"),
        ("Head size", f"{m.n_embd_head_k}" if m.n_embd_head_k == m.n_embd_head_v
         else f"K {m.n_embd_head_k}, V {m.n_embd_head_v}",
         "elements per head; quantized cache types need it divisible by their block size"),
        ("Trained context", f"{m.n_ctx_train:,}" if m.n_ctx_train else "—",
         "context_length: what the model was trained for"),
    ]
    if m.n_swa:
        rows.append(("Sliding window", f"{m.n_swa:,} tokens on {m.n_swa_layers} layers",
                     "those layers keep only the last window of the cache (llama.cpp iSWA)"))
    if m.n_expert:
        rows.append(("Experts", f"{m.n_expert_used} of {m.n_expert} active",
                     "mixture of experts: all experts' weights are loaded"))
    return rows


class ModelPanel(QWidget):
    openRequested = Signal()
    recentChosen = Signal(str)
    catalogChosen = Signal(str)  # catalog entry id

    def __init__(self, model: ModelInfo | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.name = QLabel("No model")
        self.name.setTextFormat(Qt.TextFormat.PlainText)  # a model's name is the file's data
        self.name.setObjectName("modelName")
        f = self.name.font()
        f.setPointSizeF(f.pointSizeF() * 1.25)
        f.setBold(True)
        self.name.setFont(f)
        self.name.setWordWrap(True)
        self.name.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.source = QLabel()
        self.source.setTextFormat(Qt.TextFormat.PlainText)
        self.source.setObjectName("muted")
        self.source.setWordWrap(True)
        self.open_btn = QPushButton("Open GGUF…")
        self.open_btn.setToolTip("Open a .gguf file (only its header is read; any part of a "
                                 "split model opens the whole model). You can also drop a "
                                 "file on the window. Ctrl+O")
        self.open_btn.clicked.connect(self.openRequested)
        self.catalog = QComboBox()
        self.catalog.setToolTip("Well-known models described by their public configs: plan "
                                "before downloading")
        self.catalog.setMinimumContentsLength(14)
        self.catalog.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.catalog.activated.connect(self._catalog_activated)
        self.form = QFormLayout()
        self.form.setLabelAlignment(Qt.AlignmentFlag.AlignLeft)
        self.form.setHorizontalSpacing(14)
        self.form.setVerticalSpacing(3)
        self.notes = QLabel()
        self.notes.setTextFormat(Qt.TextFormat.PlainText)
        self.notes.setWordWrap(True)
        self.notes.setObjectName("muted")
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_btn)
        buttons.addWidget(self.catalog, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.name)
        lay.addWidget(self.source)
        lay.addLayout(buttons)
        lay.addLayout(self.form)
        lay.addWidget(self.notes)
        self.set_model(model, "")

    def set_catalog(self, entries: list[tuple[str, str]]) -> None:
        """(id, title) pairs for the catalog picker."""
        self.catalog.blockSignals(True)
        self.catalog.clear()
        self.catalog.addItem("Model catalog…", "")
        for key, title in entries:
            self.catalog.addItem(title, key)
        self.catalog.blockSignals(False)
        self.catalog.setVisible(bool(entries))

    def _catalog_activated(self, index: int) -> None:
        key = self.catalog.itemData(index)
        if key:
            self.catalogChosen.emit(str(key))
        self.catalog.setCurrentIndex(0)

    def set_loading(self, loading: bool) -> None:
        self.open_btn.setEnabled(not loading)
        if loading:
            self.source.setText("Reading the header, planning…")

    def set_model(self, model: ModelInfo | None, source: str) -> None:
        while self.form.rowCount():
            self.form.removeRow(0)
        if model is None:
            self.name.setText("No model open")
            self.source.setText("Open a .gguf file, drop one here, or pick from the catalog.")
            self.notes.setText("")
            return
        self.name.setText(untrusted.one_line(model.name, 200) or "(unnamed model)")
        if source.startswith("catalog:"):
            self.source.setText("From the catalog (header data, no file needed)")
            self.source.setToolTip("")
        else:
            self.source.setText(source)
            self.source.setToolTip(untrusted.html_text(source, 400))
        for label, value, tip in summary_rows(model):
            lab = QLabel(label)
            lab.setTextFormat(Qt.TextFormat.PlainText)
            lab.setObjectName("muted")
            val = QLabel(value)
            val.setTextFormat(Qt.TextFormat.PlainText)
            val.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            lab.setToolTip(untrusted.html_text(tip, 400))
            val.setToolTip(untrusted.html_text(tip, 400))
            self.form.addRow(lab, val)
        notes = list(model.notes)
        if model.is_mla:
            notes.append("MLA: the cache stores a compressed latent; K and V types must match")
        if model.is_recurrent or model.is_hybrid:
            notes.append("recurrent state is a fixed size, independent of the context")
        self.notes.setText("\n".join(f"• {n}" for n in notes))
