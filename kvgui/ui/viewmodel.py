"""What the window shows, as plain data (Qt-free): the controller builds it, widgets draw it.

Every figure here is derived from the core's Estimate and BudgetPlan, part by part in the
core's PARTS order, so a part the estimate has can never be left out of the bar, the legend,
the table or a tooltip (tests draw every catalog model and compare the drawn total with the
estimate's).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from kvgui.core.config.settings import ALL_MOE_LAYERS, N_CTX_PAD, Settings
from kvgui.core.devices.budget import BudgetPlan, DevicePlan
from kvgui.core.memory.estimate import PARTS, Estimate, Verdict
from kvgui.core.quality.notes import QualityNote
from kvgui.core.sizes import format_tokens

DeviceView = DevicePlan  # a device as the window plans for it: name, memory, reserve

# What each part of the bar is, for the legend and the tooltips (one entry per core part;
# tests hold the two in step).
PART_HELP: dict[str, str] = {
    "weights": "the model's tensors placed on this device (from the GGUF header)",
    "kv_k": "keys: layers × KV heads × head size × context, in the K cache type",
    "kv_v": "values: layers × KV heads × head size × context, in the V cache type",
    "state": "recurrent state (Mamba/RWKV/hybrid layers): fixed size per sequence, "
             "whatever the context",
    "compute": "llama.cpp's compute buffer for one micro-batch (grows with context)",
    "output": "logits/embeddings output buffer (vocabulary × sequences, in host RAM)",
}
OTHER_SEGMENTS: tuple[tuple[str, str, str], ...] = (
    ("reserve", "Reserve", "set aside: desktop and other apps, embedding model, mmproj, margin"),
    ("headroom", "Headroom", "free after everything above"),
)
MIN_CTX = 512  # the slider's lower end


def snap(n_ctx: int) -> int:
    """Nearest multiple of 256 (at least 256): llama.cpp pads n_ctx to that anyway."""
    return max(N_CTX_PAD, round(n_ctx / N_CTX_PAD) * N_CTX_PAD)


def segments() -> tuple[tuple[str, str, str], ...]:
    """(key, label, what) of every bar segment in drawing order: the core's parts, then the
    reserve and the headroom."""
    return tuple((key, label, PART_HELP[key]) for key, label in PARTS) + OTHER_SEGMENTS


# GPU layers: every layer, the most that fit (auto-fit), or the settings' number
NGL_ALL, NGL_AUTO, NGL_N = "all", "auto", "n"


@dataclass(frozen=True)
class ControlsState:
    """What the KV-cache controls show: the settings, the GPU-layers mode and what it
    resolves to, and the types llama.cpp would refuse (with the reason)."""

    settings: Settings
    ngl_mode: str
    ngl_value: int  # the layers all / auto-fit resolve to, or the number
    n_layers: int  # layers + the output layer, as -ngl counts
    refused_k: Mapping[str, str] = field(default_factory=dict)
    refused_v: Mapping[str, str] = field(default_factory=dict)
    refusal: str = ""  # why llama.cpp refuses the current settings ("" if it accepts them)
    fixable: bool = False
    gpu_names: tuple[str, ...] = ()  # the plan's GPUs in llama.cpp's order (split / main GPU)
    # the layers whose MoE experts --n-cpu-moe can keep on the CPU: the model's layers, or 0
    # for a model without experts (the control is hidden)
    moe_layers: int = 0


def experts_on_cpu(n_cpu_moe: int, moe_layers: int) -> int:
    """The "experts on the CPU" control's value for Settings.n_cpu_moe: a number of layers
    (--cpu-moe and anything at or past the model's layers count as all of them)."""
    return moe_layers if n_cpu_moe == ALL_MOE_LAYERS else min(n_cpu_moe, moe_layers)


def n_cpu_moe_for(value: int, moe_layers: int) -> int:
    """Settings.n_cpu_moe for the control's value: every layer is --cpu-moe (what llama.cpp
    users write for "all"), fewer the number."""
    return ALL_MOE_LAYERS if moe_layers and value >= moe_layers else max(value, 0)


@dataclass(frozen=True)
class BarRow:
    """One device in a stacked bar: the estimate's parts on it, the reserve set aside there,
    and its memory. ``budget`` (memory less reserve) is the line the bar is judged against."""

    label: str
    parts: tuple[tuple[str, int], ...]  # (part key, bytes), in the core's PARTS order
    reserve: int = 0
    capacity: int | None = None  # the device's memory; None = unknown (no verdict)
    is_gpu: bool = True

    @functools.cached_property
    def used(self) -> int:
        """(Cached: a paint asks for it a few times per row, on every slider step.)"""
        return sum(b for _, b in self.parts)

    @property
    def budget(self) -> int | None:
        return None if self.capacity is None else self.capacity - self.reserve

    @property
    def over(self) -> int:
        """Bytes over the budget (0 when it fits or the budget is unknown)."""
        b = self.budget
        return 0 if b is None else max(0, self.used - b)

    @property
    def headroom(self) -> int:
        b = self.budget
        return 0 if b is None else max(0, b - self.used)

    def part(self, key: str) -> int:
        return dict(self.parts).get(key, 0)


def rows_from_estimate(est: Estimate, views: Sequence[DevicePlan]) -> tuple[BarRow, ...]:
    """One row per device of the estimate, matched to the plan's devices by name.

    Devices with nothing placed on them and no budget (an idle host) are left out."""
    by_name = {v.name: v for v in views}
    rows = []
    for dm in est.devices:
        view = by_name.get(dm.name)
        parts = dm.parts()
        if view is not None:
            row = BarRow(dm.name, parts, view.reserved, view.total, dm.is_gpu)
        else:
            row = BarRow(dm.name, parts, 0, dm.budget, dm.is_gpu)
        if row.used == 0 and row.capacity is None:
            continue
        rows.append(row)
    return tuple(rows)


@dataclass(frozen=True)
class ContextLimit:
    """The longest context that fits, as people should read it: capped at what the model was
    trained on ("≥ 32K (trained)"), with the raw search result kept for tooltips and JSON."""

    raw: int | None  # None: no budget to fit against; 0: nothing fits
    trained: int = 0

    @property
    def beyond_trained(self) -> bool:
        return bool(self.trained) and self.raw is not None and self.raw >= self.trained

    @property
    def shown(self) -> int | None:
        """The figure to draw: the trained context when the raw one is past it."""
        if self.raw is None:
            return None
        return self.trained if self.beyond_trained else self.raw

    @property
    def text(self) -> str:
        if self.raw is None:
            return "—"
        if self.raw <= 0:
            return "none"
        if self.beyond_trained:
            return f"≥ {format_tokens(self.trained)} (trained)"
        return format_tokens(self.raw)

    @property
    def tooltip(self) -> str:
        if self.raw is None:
            return "no budget to fit against"
        if self.raw <= 0:
            return "nothing fits, even at 256 tokens"
        raw = f"{self.raw:,} tokens fit"
        if self.beyond_trained:
            return (f"{raw}; the model was trained on {self.trained:,}, and past that its "
                    "output degrades unless it uses RoPE scaling")
        return raw


@dataclass(frozen=True)
class CompareRow:
    """One K/V pair in the every-cache-type table, exactly as llama.cpp would run it with the
    current settings: refused pairs are shown refused, with the reason."""

    type_k: str
    type_v: str
    bar: BarRow | None  # the main device's bar; None when llama.cpp refuses the pair
    total: int  # on the main device: the same figure as the big bar's
    limit: ContextLimit
    note: QualityNote
    current: bool = False
    error: str = ""
    all_devices: int = 0  # everything llama.cpp allocates, on every device
    speed: str = ""  # predicted decode speed at this context ("41 t/s"), "" when not fitting
    speed_tip: str = ""  # the range, the placement it is for, what it assumes

    @property
    def label(self) -> str:
        return self.type_k if self.type_k == self.type_v else f"{self.type_k} / {self.type_v}"

    @property
    def refused(self) -> bool:
        return self.bar is None

    @property
    def over(self) -> bool:
        return self.bar is not None and self.bar.over > 0

    @property
    def max_ctx(self) -> int | None:
        return self.limit.raw


@dataclass(frozen=True)
class Curves:
    """Primary-device memory against context for each pair; the same for every slider step.
    A refused pair has no curve (it is listed in ``refused``)."""

    xs: tuple[int, ...]
    ys: dict[tuple[str, str], tuple[int, ...]]
    budget: int | None
    limits: dict[tuple[str, str], ContextLimit]
    device: str
    current: tuple[str, str]
    trained: int = 0
    refused: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Headline:
    verdict: str  # the big words
    detail: str
    state: str  # ok / over / error / none (the colour)


@dataclass(frozen=True)
class QualityAdvice:
    """The quality line under the every-cache-type table: which pair the measurements
    recommend within the user's threshold, or that the model is not measured."""

    text: str
    detail: str  # the tooltip: how it was measured, or where the published figures are from
    measured: bool
    threshold: str  # "KL ≤ 0.01"
    pick: tuple[str, str] | None = None  # the cheapest measured pair within the threshold


@dataclass(frozen=True)
class Snapshot:
    """Everything the window shows for one context value."""

    n_ctx: int
    estimate: Estimate | None
    rows: tuple[BarRow, ...]
    compare: tuple[CompareRow, ...]
    plan: BudgetPlan
    headline: Headline
    quality: QualityAdvice | None = None

    @property
    def over(self) -> int:
        return sum(r.over for r in self.rows)

    @property
    def errors(self) -> tuple[str, ...]:
        return self.estimate.errors if self.estimate else ()

    @property
    def verdict(self) -> Verdict | None:
        return self.estimate.verdict if self.estimate else None


@dataclass(frozen=True)
class ChoiceView:
    """One of the planner's choices as the window lists it, with the settings it applies."""

    title: str  # "Fastest at 32K", "Longest context"
    summary: str  # "q8_0 · every layer on the GPU · 32K"
    speed: str  # "41 t/s (29–49)"
    detail: str  # the tooltip: the placement, memory per device, what the speed assumes
    changes: Mapping[str, object]  # Settings changes that apply it
    current: bool = False  # the settings are this choice already


@dataclass(frozen=True)
class PlanView:
    """The planner's answer for the current settings and budget."""

    choices: tuple[ChoiceView, ...]
    note: str = ""  # how it was found / why nothing was


def placement_text(n_gpu_layers: int, n_layers: int, n_cpu_moe: int, n_moe: int,
                   kv_offload: bool) -> str:
    """"every layer on the GPU", "30 of 49 layers on the GPU, experts of 12 on the CPU"."""
    if n_gpu_layers < 0 or n_gpu_layers >= n_layers:
        text = "every layer on the GPU"
    elif n_gpu_layers == 0:
        text = "every layer on the CPU"
    else:
        text = f"{n_gpu_layers} of {n_layers} layers on the GPU"
    if n_moe and n_gpu_layers != 0:
        k = n_moe if n_cpu_moe < 0 else min(n_cpu_moe, n_moe)
        if k >= n_moe:
            text += ", all experts on the CPU"
        elif k:
            text += f", experts of {k} layers on the CPU"
    if not kv_offload:
        text += ", KV cache in RAM"
    return text
