"""How many bytes llama.cpp may use on each device: the GPU's memory minus a reserve.

The reserve is what the user keeps for other things: the desktop and other apps (on a real
GPU, by default, whatever is in use now), an embedding model for RAG, a vision projector
(mmproj), and a safety margin (llama.cpp's ``--fit`` keeps 1 GiB free per device:
``common_params.fit_params_target``). The embedding model and mmproj sit on the first GPU,
where llama.cpp puts them; the margin and the apps' share are per GPU.

``add_budget_args``/``devices_from_args`` turn the estimate/fit commands' flags into devices.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from kvgui.core.devices.device_budget import DeviceBudget, cpu
from kvgui.core.devices.gpu_catalog import CatalogGpu, find_gpu, search_gpus, tokens
from kvgui.core.devices.hardware import apple
from kvgui.core.devices.hardware.cpu import PRESETS, HostCpu
from kvgui.core.devices.hardware.cpu import preset as host_preset
from kvgui.core.devices.hardware.types import GpuInfo, HardwareReport, SystemMemory
from kvgui.core.errors import UsageError
from kvgui.core.sizes import GiB, format_bytes, parse_size

DEFAULT_MARGIN = GiB


@dataclass(frozen=True)
class BertShape:
    """An encoder's tensor shapes as in its GGUF header, for its F16 size without the file."""

    name: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_ff: int
    n_pos: int
    n_token_types: int

    def f16_bytes(self) -> int:
        """llama.cpp's converter stores matrices as F16 and vectors (norms, biases) as F32."""
        e, ff = self.n_embd, self.n_ff
        matrices = (self.n_vocab + self.n_pos + self.n_token_types) * e + self.n_layer * (
            4 * e * e + 2 * e * ff
        )
        # embedding norm (w, b); per layer: q/k/v/o biases, 2 norms (w, b), ffn biases
        vectors = 2 * e + self.n_layer * (4 * e + 4 * e + ff + e)
        return 2 * matrices + 4 * vectors


# BGE-M3 (XLM-RoBERTa large): the converter drops the pooler and the 2 padding positions.
BGE_M3 = BertShape(
    "BGE-M3 F16", n_vocab=250002, n_embd=1024, n_layer=24, n_ff=4096, n_pos=8192, n_token_types=1
)
EMBEDDING_PRESETS = {"bge-m3": BGE_M3}


def gguf_weight_bytes(path: str) -> int:
    """The tensor data of a GGUF file (what is loaded to the GPU): the header's tensor sizes
    when kvgui's reader can parse it, else the file's size (a slight overestimate)."""
    try:
        from kvgui.core.gguf.reader import read_gguf

        return int(sum(t.nbytes for t in read_gguf(path).tensors))
    except Exception:
        return os.path.getsize(path)


@dataclass(frozen=True)
class ReserveItem:
    label: str
    bytes: int


@dataclass(frozen=True)
class Reserve:
    """What to keep free. ``other_apps`` None = what is in use now on a real GPU, 0 on a
    planned one."""

    other_apps: int | None = None
    embedding: int = 0
    embedding_name: str = "embedding model"
    mmproj: int = 0
    margin: int = DEFAULT_MARGIN

    def items(self, *, in_use: int = 0, first: bool = True) -> tuple[ReserveItem, ...]:
        items = []
        apps = in_use if self.other_apps is None else self.other_apps
        if apps:
            label = "desktop and other apps"
            if self.other_apps is None:
                label = "in use now (desktop, other apps)"
            items.append(ReserveItem(label, apps))
        if first and self.embedding:
            items.append(ReserveItem(self.embedding_name, self.embedding))
        if first and self.mmproj:
            items.append(ReserveItem("vision projector (mmproj)", self.mmproj))
        if self.margin:
            items.append(ReserveItem("safety margin", self.margin))
        return tuple(items)


@dataclass(frozen=True)
class GpuPlan:
    """One GPU's memory and what is set aside on it; ``budget`` is what llama.cpp may use."""

    name: str
    total: int
    reserve: tuple[ReserveItem, ...] = ()
    split: float = 0.0
    detected: bool = False
    unified: bool = False

    @property
    def reserved(self) -> int:
        return sum(item.bytes for item in self.reserve)

    @property
    def budget(self) -> int:
        return max(0, self.total - self.reserved)

    def device(self) -> DeviceBudget:
        return DeviceBudget(self.name, self.budget, is_gpu=True, split=self.split)


def plan_detected(gpu: GpuInfo, reserve: Reserve, *, first: bool = True) -> GpuPlan:
    """A real GPU: its total minus what is in use now (unless overridden) and the reserve."""
    return GpuPlan(
        gpu.name,
        gpu.total,
        reserve.items(in_use=gpu.in_use, first=first),
        detected=True,
        unified=gpu.unified,
    )


def plan_catalog(entry: CatalogGpu, reserve: Reserve, *, first: bool = True) -> GpuPlan:
    """A GPU from the catalog; an Apple one gets Metal's default share of its unified memory."""
    total = apple.default_working_set(entry.memory) if entry.vendor == "apple" else entry.memory
    return GpuPlan(entry.name, total, reserve.items(first=first), unified=entry.unified)


def plan_vram(size: int, reserve: Reserve, *, first: bool = True) -> GpuPlan:
    return GpuPlan(f"GPU {format_bytes(size)}", size, reserve.items(first=first))


def apply_split(plans: Sequence[GpuPlan], ratios: Sequence[float]) -> list[GpuPlan]:
    """llama.cpp's --tensor-split, read as llama_model_load does: the first value per GPU
    (missing ones are 0, extra ones ignored), normalised; all zero = split by free memory."""
    if any(r < 0 for r in ratios):
        raise ValueError(f"--tensor-split values must be >= 0, not {list(ratios)}")
    used = [float(r) for r in ratios[: len(plans)]]
    used += [0.0] * (len(plans) - len(used))
    total = sum(used)
    if total == 0:
        return list(plans)
    return [replace(p, split=r / total) for p, r in zip(plans, used, strict=True)]


def cpu_budget(
    ram: SystemMemory | int | None, reserve: Reserve, gpus: Sequence[GpuPlan] = (),
    host: HostCpu | None = None,
) -> DeviceBudget:
    """Host RAM available. With no GPU the embedding model and mmproj come out of it; a
    unified-memory GPU's budget does too (the CPU and GPU share the same RAM). ``host``:
    the CPU backend to plan for (None: this machine's)."""
    avail = ram.available if isinstance(ram, SystemMemory) else ram
    if avail is None:
        return cpu(None, host)
    if not gpus:
        avail -= reserve.embedding + reserve.mmproj
    avail -= sum(g.budget for g in gpus if g.unified)
    return cpu(max(0, avail), host)


def _unique_names(plans: list[GpuPlan]) -> list[GpuPlan]:
    names = [p.name for p in plans]
    return [
        replace(p, name=f"{p.name} #{i}") if names.count(p.name) > 1 else p
        for i, p in enumerate(plans)
    ]


@dataclass(frozen=True)
class BudgetPlan:
    """The GPUs (in llama.cpp's order) and the host, with the reserve broken down."""

    gpus: tuple[GpuPlan, ...]
    cpu: DeviceBudget

    def devices(self) -> list[DeviceBudget]:
        return [g.device() for g in self.gpus] + [self.cpu]


def default_gpus(report: HardwareReport) -> list[GpuInfo]:
    """The GPUs a plain llama.cpp run would use: every detected one, minus integrated GPUs
    when a discrete one exists (a CUDA build does not see the APU; Vulkan would put the
    APU last, and usually should not be used)."""
    discrete = [g for g in report.gpus if not g.unified]
    return discrete or list(report.gpus)


def plan_devices(
    report: HardwareReport | None,
    reserve: Reserve,
    *,
    gpus: Sequence[GpuInfo] | None = None,
    planned: Sequence[GpuPlan] | None = None,
    ram: int | None = None,
    split: Sequence[float] | None = None,
    host: HostCpu | None = None,
) -> BudgetPlan:
    """Plans for ``planned`` GPUs, else the chosen real ``gpus``, else what ``report`` found.
    ``host``: the CPU backend to plan for, else the report's, else this machine's."""
    if planned is not None:
        plans = list(planned)
    else:
        chosen = list(gpus) if gpus is not None else (default_gpus(report) if report else [])
        plans = [plan_detected(g, reserve, first=i == 0) for i, g in enumerate(chosen)]
    plans = _unique_names(plans)
    if split:
        plans = apply_split(plans, split)
    memory = ram if ram is not None else (report.system if report else None)
    if host is None and report is not None:
        host = report.host_cpu
    return BudgetPlan(tuple(plans), cpu_budget(memory, reserve, plans, host))


# --- the CLI flags (estimate, fit) --------------------------------------------------------

_TIMES = re.compile(r"^\s*(\d+)\s*[x×*]\s*(\S.*)$", re.IGNORECASE)


def _multiples(values: Sequence[str] | None) -> list[str]:
    """Flag values such as "24GiB,24GiB", "2x24GiB" or repeated flags: one item per GPU."""
    out: list[str] = []
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if not part:
                continue
            m = _TIMES.match(part)
            if m and int(m.group(1)) > 0:
                out += [m.group(2).strip()] * int(m.group(1))
            else:
                out.append(part)
    return out


def add_budget_args(parser: argparse.ArgumentParser) -> None:
    """--gpu / --gpu-model / --vram choose the GPUs; --reserve* and --ram shape the budget."""
    g = parser.add_argument_group(
        "memory budget",
        "Default: the free memory of the GPUs detected now (CPU-only if none), minus the reserve.",
    )
    g.add_argument(
        "--gpu",
        action="append",
        metavar="INDEX",
        help="detected GPU(s) to use, as `kvgui gpus` numbers them: 0, 0,1, all, "
        "or none (CPU only)",
    )
    g.add_argument(
        "--gpu-model",
        action="append",
        metavar="NAME",
        help='plan for a GPU from the catalog: "RTX 4060", "2x RTX 3090", '
        '"M2 Max 64GB" (repeat or comma-separate for several)',
    )
    g.add_argument(
        "--vram",
        action="append",
        metavar="SIZE",
        help="plan for a GPU with this much memory: 8GiB, 8G, 8192M "
        "(24GiB,24GiB or 2x24GiB for two)",
    )
    g.add_argument(
        "--reserve",
        metavar="SIZE",
        help="safety margin kept free on each GPU (default 1GiB, as llama.cpp --fit)",
    )
    g.add_argument(
        "--reserve-apps",
        metavar="SIZE",
        help="memory for the desktop and other apps on each GPU "
        "(default: what is in use now on a detected GPU, 0 on a planned one)",
    )
    g.add_argument(
        "--reserve-embedding",
        metavar="MODEL",
        help="keep room on the first GPU for an embedding model: bge-m3, or a GGUF file",
    )
    g.add_argument(
        "--reserve-mmproj",
        metavar="FILE",
        help="keep room on the first GPU for this vision projector (mmproj) file",
    )
    g.add_argument(
        "--ram", metavar="SIZE", help="host RAM for CPU layers (default: what is available now)"
    )
    g.add_argument(
        "--host-cpu",
        metavar="KIND",
        help="plan for another machine's llama.cpp CPU backend, which decides how much RAM "
        f"the CPU weights take: {', '.join(PRESETS)} (default: this machine's)",
    )


def _size(flag: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc}") from None


def reserve_from_args(args: argparse.Namespace) -> Reserve:
    margin = _size("--reserve", getattr(args, "reserve", None))
    reserve = Reserve(
        other_apps=_size("--reserve-apps", getattr(args, "reserve_apps", None)),
        margin=DEFAULT_MARGIN if margin is None else margin,
    )
    emb = getattr(args, "reserve_embedding", None)
    if emb:
        preset = EMBEDDING_PRESETS.get(emb.strip().lower())
        if preset is not None:
            reserve = replace(reserve, embedding=preset.f16_bytes(), embedding_name=preset.name)
        elif os.path.isfile(emb):
            reserve = replace(
                reserve,
                embedding=gguf_weight_bytes(emb),
                embedding_name=f"embedding model {os.path.basename(emb)}",
            )
        else:
            known = ", ".join(EMBEDDING_PRESETS)
            raise UsageError(f"--reserve-embedding: {emb!r} is neither a file nor one of: {known}")
    mmproj = getattr(args, "reserve_mmproj", None)
    if mmproj:
        if not os.path.isfile(mmproj):
            raise UsageError(f"--reserve-mmproj: no such file: {mmproj}")
        reserve = replace(reserve, mmproj=gguf_weight_bytes(mmproj))
    return reserve


def catalog_gpu(name: str) -> CatalogGpu:
    """``--gpu-model NAME`` -> the catalog entry, or a UsageError that lists candidates."""
    entry = find_gpu(name)
    if entry is not None:
        return entry
    candidates = search_gpus(name, limit=6)
    if not candidates:
        raise UsageError(f'--gpu-model: unknown GPU "{name}" (or give its size with --vram)')
    listed = "; ".join(f"{c.name} ({format_bytes(c.memory, 0)})" for c in candidates)
    if all(tokens(name) <= tokens(c.name) for c in candidates):
        raise UsageError(f'--gpu-model: "{name}" matches several GPUs, say which: {listed}')
    raise UsageError(f'--gpu-model: unknown GPU "{name}"; did you mean: {listed}')


def _split_from_args(args: argparse.Namespace) -> list[float] | None:
    value = getattr(args, "tensor_split", None)
    if not value:
        return None
    try:
        if isinstance(value, str):
            return [float(v) for v in re.split(r"[,/]", value) if v.strip()]
        return [float(v) for v in value]
    except (TypeError, ValueError):
        raise UsageError(f"--tensor-split: not a list of numbers: {value!r}") from None


def _pick_detected(spec: list[str], report: HardwareReport) -> list[GpuInfo]:
    if any(s.lower() in ("none", "cpu") for s in spec):
        return []
    if not report.gpus:
        why = "; ".join(r for r in report.reasons if not r.startswith(("Apple: not", "AMD: no")))
        raise UsageError(
            f"--gpu {','.join(spec)}: no GPU detected ({why or 'none found'}); "
            "plan for one with --gpu-model NAME or --vram SIZE"
        )
    if any(s.lower() == "all" for s in spec):
        return list(report.gpus)
    chosen = []
    for s in spec:
        if not s.isdigit() or int(s) >= len(report.gpus):
            found = ", ".join(f"{i} {g.name}" for i, g in enumerate(report.gpus))
            raise UsageError(f"--gpu {s}: no such GPU (found: {found})")
        chosen.append(report.gpus[int(s)])
    return chosen


def plan_from_args(args: argparse.Namespace, report: HardwareReport | None = None) -> BudgetPlan:
    """The budget plan the flags describe; ``report`` is detect()'s, run here when needed."""
    gpu_spec = _multiples(getattr(args, "gpu", None))
    models = _multiples(getattr(args, "gpu_model", None))
    vrams = _multiples(getattr(args, "vram", None))
    if sum(bool(x) for x in (gpu_spec, models, vrams)) > 1:
        raise UsageError("--gpu, --gpu-model and --vram are alternatives: give one of them")
    reserve = reserve_from_args(args)
    ram = _size("--ram", getattr(args, "ram", None))
    split = _split_from_args(args)
    host = None
    if getattr(args, "host_cpu", None):
        try:
            host = host_preset(args.host_cpu)
        except ValueError as exc:
            raise UsageError(f"--host-cpu: {exc}") from None
    try:
        if models or vrams:
            entries = [catalog_gpu(m) for m in models]
            if ram is None and entries and all(e.unified for e in entries):
                ram = entries[0].memory  # planning a Mac: its RAM is the unified memory
            if report is None and ram is None:
                from kvgui.core.devices.hardware import system

                memory, _ = system.probe()
                report = HardwareReport(system=memory)
            planned = (
                [plan_catalog(e, reserve, first=i == 0) for i, e in enumerate(entries)]
                if entries
                else [
                    plan_vram(_size("--vram", v) or 0, reserve, first=i == 0)
                    for i, v in enumerate(vrams)
                ]
            )
            return plan_devices(report, reserve, planned=planned, ram=ram, split=split,
                                host=host)
        if report is None:
            from kvgui.core.devices.hardware import detect

            report = detect(llama=False)
        chosen = _pick_detected(gpu_spec, report) if gpu_spec else None
        return plan_devices(report, reserve, gpus=chosen, ram=ram, split=split, host=host)
    except ValueError as exc:  # a negative tensor split
        raise UsageError(str(exc)) from None


def devices_from_args(
    args: argparse.Namespace, report: HardwareReport | None = None
) -> list[DeviceBudget]:
    """GPUs first (llama.cpp's order), host RAM last: what estimate()/fit take."""
    return plan_from_args(args, report).devices()
