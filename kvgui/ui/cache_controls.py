"""The KV cache card: K and V types, flash attention, GPU layers, and the advanced settings.

Types llama.cpp would refuse for the open model (a quantized V without flash attention, a
block size that does not divide the head size) stay selectable but are marked in the lists
with the reason, and choosing one shows the refusal in the window: nothing is silent.
"""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from kvgui.core.config.settings import ALL_LAYERS, FlashAttn, Settings, SplitMode
from kvgui.core.gguf import ggml_types
from kvgui.ui import theme
from kvgui.ui.viewmodel import (
    NGL_ALL,
    NGL_AUTO,
    NGL_N,
    ControlsState,
    experts_on_cpu,
    n_cpu_moe_for,
)

__all__ = ["NGL_ALL", "NGL_AUTO", "NGL_N", "CacheControls"]

TYPE_TIPS = {
    "f32": "32-bit float: twice f16's memory, no quality gain in practice",
    "f16": "16-bit float: llama.cpp's default, the reference quality",
    "bf16": "bfloat16: same size as f16, wider range, less precision",
    "q8_0": "8-bit (8.5 bits/value): ≈ f16 quality at about half the memory",
    "q5_1": "5-bit with offset (6 bits/value)",
    "q5_0": "5-bit (5.5 bits/value)",
    "q4_1": "4-bit with offset (5 bits/value)",
    "iq4_nl": "4-bit non-linear (4.5 bits/value): better than q4_0 at the same size",
    "q4_0": "4-bit (4.5 bits/value): the smallest; noticeably lossy for K",
}

# the order people think in: most to least memory
TYPE_ORDER = ("f32", "f16", "bf16", "q8_0", "q5_1", "q5_0", "q4_1", "iq4_nl", "q4_0")


def bits_per_value(name: str) -> float:
    t = ggml_types.by_name(name)
    return t.type_size * 8 / t.block_size


class CacheControls(QWidget):
    settingsEdited = Signal(dict)  # changes for Settings.replace
    nglModeChanged = Signal(str)  # all / auto / n
    fixRequested = Signal()

    def __init__(self, settings: Settings | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        assert set(TYPE_ORDER) == set(ggml_types.CACHE_TYPE_NAMES)
        self._updating = False
        self.type_k = self._type_combo("K cache type (-ctk): keys are the more sensitive half")
        self.type_v = self._type_combo("V cache type (-ctv): a quantized V needs flash "
                                       "attention")
        self.fa = QComboBox()
        for label, v in (("auto", FlashAttn.AUTO), ("on", FlashAttn.ON), ("off", FlashAttn.OFF)):
            self.fa.addItem(label, v)
        self.fa.setToolTip("Flash attention (-fa on|off|auto). llama.cpp's auto turns it on "
                           "where the backend supports it; a quantized V cache requires it. "
                           "Without it the V cache is stored transposed and padded.")
        self.ngl_mode = QComboBox()
        self.ngl_mode.addItem("all layers", NGL_ALL)
        self.ngl_mode.addItem("auto (fastest)", NGL_AUTO)
        self.ngl_mode.addItem("number:", NGL_N)
        self.ngl_mode.setToolTip("GPU layers (-ngl): 'all' offloads every layer; 'auto' lets "
                                 "the planner pick the fastest placement that fits at this "
                                 "context (-ngl, a MoE's experts on the CPU with --n-cpu-moe, "
                                 "-nkvo); or set a number. Layers left on the CPU run much "
                                 "slower.")
        self.ngl = QSpinBox()
        self.ngl.setRange(0, 999)
        self.ngl.setToolTip("Layers on the GPU, counting the output layer as llama.cpp does")
        self.experts_cpu = QSpinBox()
        self.experts_cpu.setRange(0, 1)
        self.experts_cpu.setSpecialValueText("none")
        self.experts_cpu.setSuffix(" layers")
        self.experts_cpu.setToolTip(
            "MoE expert weights kept in host RAM (--n-cpu-moe N: those of the first N layers; "
            "all of them: --cpu-moe). The rest of each layer stays on the GPU; the experts "
            "are read from RAM, so decoding slows with each layer, but far less than moving "
            "whole layers off the GPU (-ngl)")
        self.n_batch = QSpinBox()
        self.n_batch.setRange(1, 1 << 16)
        self.n_batch.setToolTip("Logical batch (-b): tokens submitted per decode call")
        self.n_ubatch = QSpinBox()
        self.n_ubatch.setRange(1, 1 << 16)
        self.n_ubatch.setToolTip("Physical micro-batch (-ub): sizes the compute buffer")
        self.n_parallel = QSpinBox()
        self.n_parallel.setRange(1, 256)
        self.n_parallel.setToolTip("Parallel sequences (-np): the context is shared between "
                                   "them (each gets n_ctx / np) unless the KV cache is unified")
        self.swa_full = QCheckBox("full-size cache for sliding-window layers (--swa-full)")
        self.swa_full.setToolTip("Sliding-window layers normally keep only the window; "
                                 "--swa-full keeps the whole context (more memory, allows "
                                 "context shifting and cache reuse)")
        self.kv_offload = QCheckBox("KV cache on the GPU (uncheck for -nkvo)")
        self.kv_offload.setToolTip("With -nkvo the KV cache stays in host RAM")
        self.kv_unified = QCheckBox("one unified KV cache for all sequences (-kvu)")
        self.split_mode = QComboBox()
        for label, mode in (("by layers (-sm layer)", SplitMode.LAYER),
                            ("by rows (-sm row)", SplitMode.ROW),
                            ("main GPU only (-sm none)", SplitMode.NONE)):
            self.split_mode.addItem(label, mode)
        self.split_mode.setToolTip("How llama.cpp spreads the model over several GPUs: whole "
                                   "layers per GPU (the default), each matrix split by rows "
                                   "(CUDA; kvgui shows the layer split's figures), or "
                                   "everything on the main GPU")
        self.main_gpu = QComboBox()
        self.main_gpu.setToolTip("-mg: the GPU that holds everything with -sm none (and the "
                                 "KV cache and small tensors with -sm row)")
        self._gpu_names: tuple[str, ...] = ()
        self.repack = QCheckBox("repacked CPU weights, AMX (uncheck for -nr)")
        self.repack.setToolTip("llama.cpp copies CPU weights into faster layouts (AMX, "
                               "CPU_REPACK) where the CPU has the kernels; -nr / --no-repack "
                               "keeps the file's layout (needed where those kernels crash)")
        self.banner = QLabel()
        self.banner.setObjectName("errorBanner")
        self.banner.setWordWrap(True)
        self.banner.hide()
        self.fix = QToolButton()
        self.fix.setText("Fix it")
        self.fix.setToolTip("Change the one setting that makes llama.cpp accept this")
        self.fix.clicked.connect(self.fixRequested)
        self.fix.hide()

        form = QFormLayout()
        form.setHorizontalSpacing(14)
        form.setVerticalSpacing(4)
        kv = QHBoxLayout()
        kv.addWidget(QLabel("K"))
        kv.addWidget(self.type_k, 1)
        kv.addSpacing(8)
        kv.addWidget(QLabel("V"))
        kv.addWidget(self.type_v, 1)
        form.addRow("Cache types", kv)
        form.addRow("Flash attention", self.fa)
        ngl = QHBoxLayout()
        ngl.addWidget(self.ngl_mode, 1)
        ngl.addWidget(self.ngl)
        form.addRow("GPU layers", ngl)
        form.addRow("Experts on the CPU", self.experts_cpu)
        self._split_label = QLabel("Split over GPUs")
        form.addRow(self._split_label, self.split_mode)
        self._main_label = QLabel("Main GPU")
        form.addRow(self._main_label, self.main_gpu)
        for combo in (self.split_mode, self.main_gpu):
            combo.setSizeAdjustPolicy(
                QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(14)
        self._form = form
        self.adv_toggle = QToolButton()
        self.adv_toggle.setText("Advanced")
        self.adv_toggle.setCheckable(True)
        self.adv_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.adv_toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.adv_toggle.setAutoRaise(True)
        self.adv_toggle.toggled.connect(self.set_advanced_open)
        self.advanced = QWidget()
        adv = QFormLayout(self.advanced)
        adv.setContentsMargins(0, 0, 0, 0)
        adv.setHorizontalSpacing(14)
        adv.setVerticalSpacing(4)
        adv.addRow("Batch / micro-batch", _pair(self.n_batch, self.n_ubatch))
        adv.addRow("Parallel sequences", self.n_parallel)
        adv.addRow(self.swa_full)
        adv.addRow(self.kv_offload)
        adv.addRow(self.kv_unified)
        adv.addRow(self.repack)
        self.advanced.hide()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(form)
        lay.addWidget(self.adv_toggle)
        lay.addWidget(self.advanced)
        banner_row = QHBoxLayout()
        banner_row.addWidget(self.banner, 1)
        banner_row.addWidget(self.fix)
        lay.addLayout(banner_row)

        for combo, name in ((self.type_k, "type_k"), (self.type_v, "type_v")):
            combo.activated.connect(lambda _i, c=combo, n=name: self._edit(**{n: c.currentData()}))
        self.fa.activated.connect(lambda _i: self._edit(flash_attn=self.fa.currentData()))
        self.ngl_mode.activated.connect(self._ngl_mode_changed)
        self.ngl.valueChanged.connect(lambda v: self._edit(n_gpu_layers=v))
        self.experts_cpu.valueChanged.connect(self._experts_changed)
        self.n_batch.valueChanged.connect(lambda v: self._edit(n_batch=v))
        self.n_ubatch.valueChanged.connect(lambda v: self._edit(n_ubatch=v))
        self.n_parallel.valueChanged.connect(lambda v: self._edit(n_parallel=v))
        self.swa_full.toggled.connect(lambda v: self._edit(swa_full=v))
        self.kv_offload.toggled.connect(lambda v: self._edit(kv_offload=v))
        self.kv_unified.toggled.connect(lambda v: self._edit(kv_unified=v))
        self.repack.toggled.connect(lambda v: self._edit(repack=v))
        self.split_mode.activated.connect(
            lambda _i: self._edit(split_mode=self.split_mode.currentData()))
        self.main_gpu.activated.connect(lambda i: self._edit(main_gpu=i))
        self._state: ControlsState | None = None
        self.set_state(ControlsState(settings or Settings(), NGL_ALL, 0, 1))

    def _type_combo(self, tip: str) -> QComboBox:
        c = QComboBox()
        for name in TYPE_ORDER:
            c.addItem(f"{name}  ·  {bits_per_value(name):g} bits", name)
            c.setItemData(c.count() - 1, TYPE_TIPS[name], Qt.ItemDataRole.ToolTipRole)
        c.setToolTip(tip)
        return c

    def set_advanced_open(self, open_: bool) -> None:
        self.advanced.setVisible(open_)
        self.adv_toggle.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)
        if self.adv_toggle.isChecked() != open_:
            self.adv_toggle.setChecked(open_)

    def set_state(self, state: ControlsState) -> None:
        """Show ``state`` (from the controller); nothing is emitted back."""
        if state == self._state:
            return
        self._state = state
        s = state.settings
        self._updating = True
        self.type_k.setCurrentIndex(self.type_k.findData(s.type_k))
        self.type_v.setCurrentIndex(self.type_v.findData(s.type_v))
        self.fa.setCurrentIndex(self.fa.findData(s.flash_attn))
        self.ngl_mode.setCurrentIndex(self.ngl_mode.findData(state.ngl_mode))
        self.ngl.setMaximum(max(state.n_layers, 1))
        self.ngl.setValue(state.ngl_value if s.n_gpu_layers == ALL_LAYERS or
                          state.ngl_mode != NGL_N else s.n_gpu_layers)
        self.ngl.setEnabled(state.ngl_mode == NGL_N)
        moe = state.moe_layers
        self._form.setRowVisible(self.experts_cpu, bool(moe))
        self.experts_cpu.setMaximum(max(moe, 1))
        self.experts_cpu.setValue(experts_on_cpu(s.n_cpu_moe, moe))
        # under auto the planner chooses these with -ngl: shown, not edited
        auto = state.ngl_mode == NGL_AUTO
        self.experts_cpu.setEnabled(not auto)
        self.kv_offload.setEnabled(not auto)
        self.n_batch.setValue(s.n_batch)
        self.n_ubatch.setValue(s.n_ubatch)
        self.n_parallel.setValue(s.n_parallel)
        self.swa_full.setChecked(s.swa_full)
        self.kv_offload.setChecked(s.kv_offload)
        self.kv_unified.setChecked(s.kv_unified)
        self.repack.setChecked(s.repack)
        if state.gpu_names != self._gpu_names:
            self._gpu_names = state.gpu_names
            self.main_gpu.clear()
            for i, name in enumerate(state.gpu_names):
                self.main_gpu.addItem(f"{i}: {name}")
        several = len(state.gpu_names) > 1
        for w in (self._split_label, self.split_mode, self._main_label, self.main_gpu):
            w.setVisible(several)
        self.split_mode.setCurrentIndex(self.split_mode.findData(s.split_mode))
        self.main_gpu.setCurrentIndex(min(s.main_gpu, max(0, self.main_gpu.count() - 1)))
        self._mark_refused(state)
        if state.refusal:
            self.banner.setText("llama.cpp would refuse this: " + state.refusal)
        self.banner.setVisible(bool(state.refusal))
        self.fix.setVisible(bool(state.refusal) and state.fixable)
        self._updating = False

    def _mark_refused(self, state: ControlsState) -> None:
        """Mark the types llama.cpp would refuse, with the reason in the item's tooltip."""
        bad = QBrush(theme.current().over)
        for combo, refusals in ((self.type_k, state.refused_k), (self.type_v, state.refused_v)):
            for i in range(combo.count()):
                name = combo.itemData(i)
                why = refusals.get(name, "")
                base = f"{name}  ·  {bits_per_value(name):g} bits"
                combo.setItemText(i, base + ("  ⚠" if why else ""))
                combo.setItemData(i, f"refused: {why}" if why else TYPE_TIPS[name],
                                  Qt.ItemDataRole.ToolTipRole)
                combo.setItemData(i, bad if why else QBrush(QColor()),
                                  Qt.ItemDataRole.ForegroundRole)

    def restyle(self) -> None:
        """Re-mark refusals in the current theme's colours."""
        if self._state is not None:
            self._mark_refused(self._state)

    def _ngl_mode_changed(self, _i: int) -> None:
        mode = self.ngl_mode.currentData()
        self.ngl.setEnabled(mode == NGL_N)
        self.experts_cpu.setEnabled(mode != NGL_AUTO)
        self.kv_offload.setEnabled(mode != NGL_AUTO)
        if self._updating:
            return
        self.nglModeChanged.emit(mode)

    def _experts_changed(self, value: int) -> None:
        moe = self._state.moe_layers if self._state else 0
        self.experts_cpu.setSuffix(" layers (all: --cpu-moe)" if moe and value >= moe
                                   else " layers")
        self._edit(n_cpu_moe=n_cpu_moe_for(value, moe))

    def _edit(self, **changes: object) -> None:
        if not self._updating:
            self.settingsEdited.emit(changes)


def _pair(a: QWidget, b: QWidget) -> QHBoxLayout:
    h = QHBoxLayout()
    h.addWidget(a, 1)
    h.addWidget(QLabel("/"))
    h.addWidget(b, 1)
    return h
