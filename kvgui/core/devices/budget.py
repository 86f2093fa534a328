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
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from kvgui.core.devices.device_budget import CPU_NAME, DeviceBudget
from kvgui.core.devices.gpu_catalog import CatalogGpu, find_gpu, search_gpus, tokens
from kvgui.core.devices.hardware import apple
from kvgui.core.devices.hardware.cpu import PRESETS, HostCpu
from kvgui.core.devices.hardware.cpu import preset as host_preset
from kvgui.core.devices.hardware.rpc import RpcServerInfo
from kvgui.core.devices.hardware.types import GpuInfo, HardwareReport, SystemMemory
from kvgui.core.errors import UsageError
from kvgui.core.sizes import GiB, format_bytes, parse_size

log = logging.getLogger(__name__)

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
    except Exception:  # any reader failure: the file's size is a safe overestimate
        log.info("cannot read %s's header; using its file size", path, exc_info=True)
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
class DevicePlan:
    """One device's memory and what is set aside on it; ``budget`` is what llama.cpp may use.

    ``total`` is the GPU's memory, or for the host the RAM available now (None: unknown, no
    verdict for it)."""

    name: str
    total: int | None
    reserve: tuple[ReserveItem, ...] = ()
    split: float = 0.0
    detected: bool = False
    unified: bool = False
    is_gpu: bool = True
    host: HostCpu | None = None  # the host's llama.cpp CPU backend (None: this machine's)
    bandwidth: float = 0.0  # bytes/s: spec sheet (GPU), probe (host); 0 = unknown
    buft: str = ""  # llama.cpp's buffer type name where it is not the local GPUs' default
    alignment: int = 0  # an RPC device's, as its server reports it

    @property
    def reserved(self) -> int:
        return sum(item.bytes for item in self.reserve)

    @property
    def budget(self) -> int | None:
        return None if self.total is None else max(0, self.total - self.reserved)

    @property
    def is_rpc(self) -> bool:
        return self.buft.startswith("RPC")

    def device(self) -> DeviceBudget:
        return DeviceBudget(self.name, self.budget, is_gpu=self.is_gpu, split=self.split,
                            host=self.host, buft=self.buft, bandwidth=self.bandwidth,
                            alignment=self.alignment)


GpuPlan = DevicePlan  # a GPU's plan (is_gpu=True)


def plan_detected(gpu: GpuInfo, reserve: Reserve, *, first: bool = True) -> DevicePlan:
    """A real GPU: its total minus what is in use now (unless overridden) and the reserve;
    its bandwidth from the catalog entry of its name (0 when the catalog lacks it)."""
    entry = find_gpu(gpu.name)
    return DevicePlan(gpu.name, gpu.total, reserve.items(in_use=gpu.in_use, first=first),
                      detected=True, unified=gpu.unified,
                      bandwidth=float(entry.bandwidth) if entry else 0.0)


def plan_catalog(entry: CatalogGpu, reserve: Reserve, *, first: bool = True) -> DevicePlan:
    """A GPU from the catalog; an Apple one gets Metal's default share of its unified memory."""
    total = apple.default_working_set(entry.memory) if entry.vendor == "apple" else entry.memory
    return DevicePlan(entry.name, total, reserve.items(first=first), unified=entry.unified,
                      bandwidth=float(entry.bandwidth))


def plan_vram(size: int, reserve: Reserve, *, first: bool = True,
              bandwidth: float = 0.0) -> DevicePlan:
    return DevicePlan(f"GPU {format_bytes(size)}", size, reserve.items(first=first),
                      bandwidth=bandwidth)


@dataclass(frozen=True)
class RpcSpec:
    """An RPC server to plan for: ``HOST:PORT``, and its memory when typed in (else asked
    from the server: devices/hardware/rpc.py)."""

    endpoint: str
    memory: int | None = None

    @property
    def text(self) -> str:
        return self.endpoint if self.memory is None else \
            f"{self.endpoint}={format_bytes(self.memory)}"


def parse_rpc_specs(values: Sequence[str] | str | None) -> tuple[RpcSpec, ...]:
    """``HOST:PORT[=SIZE]`` items, comma-separated or repeated: the devices llama.cpp's
    ``--rpc`` adds, with kvgui's optional ``=SIZE`` for a server it cannot ask."""
    from kvgui.core.devices.hardware.rpc import parse_endpoint

    items = values.split(",") if isinstance(values, str) else [
        p for v in (values or ()) for p in v.split(",")]
    out: list[RpcSpec] = []
    for item in items:
        if not item.strip():
            continue
        ep, eq, size = item.partition("=")
        try:
            host, port = parse_endpoint(ep)
            memory = parse_size(size) if eq else None
        except ValueError as exc:
            raise UsageError(f"--rpc: {exc}") from None
        if f"{host}:{port}" in [o.endpoint for o in out]:
            continue  # llama.cpp registers a server once
        out.append(RpcSpec(f"{host}:{port}", memory))
    return tuple(out)


def plan_rpc(specs: Sequence[RpcSpec], servers: Mapping[str, RpcServerInfo],
             reserve: Reserve) -> list[DevicePlan]:
    """The RPC servers' devices in llama.cpp's order and names (RPC0, RPC1, … over all
    servers, the first device of all first): each its total less what is in use there now
    (as asked) or the typed-in size, less the reserve. A server asked for is in ``servers``
    (kvgui asks before planning, with a timeout); one that is not raises UsageError."""
    plans: list[DevicePlan] = []
    for spec in specs:
        if spec.memory is not None:
            sizes = [(spec.memory, spec.memory, 0)]
        else:
            info = servers.get(spec.endpoint)
            if info is None:
                raise UsageError(f"RPC server {spec.endpoint}: its memory is unknown: kvgui "
                                 "could not ask it; give it as HOST:PORT=SIZE")
            sizes = [(d.total, d.free, d.alignment) for d in info.devices]
        for ind, (total, free, align) in enumerate(sizes):
            n = len(plans)  # ggml-rpc: devices RPC<n> over all servers, buffer types
            plans.append(DevicePlan(  # RPC<index on its server>[endpoint]
                f"RPC{n} ({spec.endpoint})", total,
                reserve.items(in_use=max(0, total - free), first=n == 0),
                detected=spec.memory is None, buft=f"RPC{ind}[{spec.endpoint}]",
                alignment=align))
    return plans


def apply_split(plans: Sequence[DevicePlan], ratios: Sequence[float]) -> list[DevicePlan]:
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


def plan_host(ram: SystemMemory | int | None, reserve: Reserve,
              gpus: Sequence[DevicePlan] = (), host: HostCpu | None = None,
              bandwidth: float = 0.0) -> DevicePlan:
    """Host RAM available now. With no GPU the embedding model, mmproj and the safety margin
    come out of it (llama.cpp's --fit keeps the margin free on the host when it has no GPU:
    common/fit.cpp, the nd == 0 case); a unified-memory GPU's budget does too (the CPU and
    GPU share the same RAM)."""
    avail = ram.available if isinstance(ram, SystemMemory) else ram
    if avail is None:
        return DevicePlan(CPU_NAME, None, is_gpu=False, host=host, bandwidth=bandwidth)
    items: list[ReserveItem] = []
    if not gpus:
        if reserve.embedding:
            items.append(ReserveItem(reserve.embedding_name, reserve.embedding))
        if reserve.mmproj:
            items.append(ReserveItem("vision projector (mmproj)", reserve.mmproj))
        if reserve.margin:
            items.append(ReserveItem("safety margin", reserve.margin))
    shared = sum(g.budget or 0 for g in gpus if g.unified)
    if shared:
        items.append(ReserveItem("the GPU's share of unified memory", shared))
    return DevicePlan(CPU_NAME, avail, tuple(items), is_gpu=False, host=host,
                      bandwidth=bandwidth)


def cpu_budget(ram: SystemMemory | int | None, reserve: Reserve,
               gpus: Sequence[DevicePlan] = ()) -> DeviceBudget:
    return plan_host(ram, reserve, gpus).device()


def _unique_names(plans: list[DevicePlan]) -> list[DevicePlan]:
    names = [p.name for p in plans]
    return [
        replace(p, name=f"{p.name} #{i}") if names.count(p.name) > 1 else p
        for i, p in enumerate(plans)
    ]


@dataclass(frozen=True)
class BudgetPlan:
    """The GPUs (in llama.cpp's order) and the host, with the reserve broken down: what the
    window draws and every command estimates against."""

    gpus: tuple[DevicePlan, ...]
    host: DevicePlan
    planned: bool = False  # hardware the user may not own (catalog / a size)

    @property
    def cpu(self) -> DeviceBudget:
        return self.host.device()

    @property
    def views(self) -> tuple[DevicePlan, ...]:
        return (*self.gpus, self.host)

    def devices(self) -> list[DeviceBudget]:
        return [g.device() for g in self.gpus] + [self.host.device()]

    @property
    def rpc_servers(self) -> tuple[str, ...]:
        """The RPC servers of the plan, in order: what llama.cpp's --rpc takes."""
        out: list[str] = []
        for g in self.gpus:
            if g.is_rpc:
                ep = g.buft[g.buft.index("[") + 1:-1]
                if ep not in out:
                    out.append(ep)
        return tuple(out)

    @property
    def primary(self) -> DevicePlan:
        return self.gpus[0] if self.gpus else self.host

    @property
    def title(self) -> str:
        """"RTX 4060 (8 GiB)", "2 GPUs (48 GiB)", "CPU only": the plan in a few words."""
        if not self.gpus:
            return "CPU only"
        total = sum(g.total or 0 for g in self.gpus)
        what = self.gpus[0].name if len(self.gpus) == 1 else f"{len(self.gpus)} GPUs"
        gib = total / GiB
        size = f"{gib:.0f} GiB" if abs(gib - round(gib)) < 0.05 else f"{gib:.1f} GiB"
        return f"{what} ({size})"


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
    planned: Sequence[DevicePlan] | None = None,
    ram: int | None = None,
    split: Sequence[float] | None = None,
    host: HostCpu | None = None,
    rpc: Sequence[DevicePlan] = (),
    host_bandwidth: float = 0.0,
) -> BudgetPlan:
    """Plans for ``planned`` GPUs, else the chosen real ``gpus``, else what ``report`` found;
    ``rpc``: RPC servers' devices, which llama.cpp puts before the local GPUs.
    ``host``: the CPU backend to plan for, else the report's, else this machine's;
    ``host_bandwidth``: the host RAM's (membw.py)."""
    if planned is not None:
        plans = list(planned)
    else:
        chosen = list(gpus) if gpus is not None else (default_gpus(report) if report else [])
        plans = [plan_detected(g, reserve, first=i == 0 and not rpc)
                 for i, g in enumerate(chosen)]
    plans = [*rpc, *_unique_names(plans)]
    if split:
        plans = apply_split(plans, split)
    memory = ram if ram is not None else (report.system if report else None)
    if host is None and report is not None:
        host = report.host_cpu
    return BudgetPlan(tuple(plans), plan_host(memory, reserve, plans, host, host_bandwidth),
                      planned=planned is not None)


# --- the hardware choice: the window's and every command's -------------------------------

HW_DETECTED = "detected"
HW_CATALOG = "catalog"
HW_CUSTOM = "custom"
ALL_GPUS = -1  # detected_index: every detected GPU


@dataclass(frozen=True)
class HardwareChoice:
    """Which memory the plan is for: detected GPUs, GPUs from the catalog, or sizes.

    The window edits one of these; the CLI's flags are read into one (``choice_from_args``);
    ``plan_hardware`` turns either into a BudgetPlan, so the two never disagree.
    Reserve sizes are bytes; ``desktop`` None means "what other processes use now" on a
    detected GPU (0 elsewhere). ``catalog_name`` may name several GPUs ("2x RTX 3090");
    ``custom_bytes`` is one size, ``custom_more`` further GPUs of given sizes.
    """

    mode: str = HW_DETECTED
    detected_index: int = ALL_GPUS  # one GPU by index, or ALL_GPUS: every discrete one
    catalog_name: str = ""
    custom_bytes: int = 8 * GiB
    desktop: int | None = None
    embedding: int = 0
    embedding_name: str = "embedding model"
    mmproj: int = 0
    margin: int = DEFAULT_MARGIN  # llama.cpp's --fit keeps 1 GiB free
    custom_more: tuple[int, ...] = ()
    detected_list: tuple[int, ...] = ()  # several detected GPUs by index (the CLI's --gpu 0,2)
    cpu_only: bool = False  # --gpu none
    ram: int | None = None  # host RAM to plan for; None = this machine's, available now
    host_cpu: str = ""  # a CPU backend to plan for (cpu.PRESETS); "" = this machine's
    # llama.cpp RPC servers, before the GPUs: "HOST:PORT" (memory asked) or "HOST:PORT=SIZE"
    rpc: tuple[str, ...] = ()
    custom_bandwidth: float = 0.0  # a custom-size GPU's memory bandwidth, bytes/s (0: unknown)

    @property
    def reserve(self) -> Reserve:
        return Reserve(other_apps=self.desktop, embedding=self.embedding,
                       embedding_name=self.embedding_name, mmproj=self.mmproj,
                       margin=self.margin)

    def to_dict(self) -> dict[str, object]:
        d = dict(self.__dict__)
        d["custom_more"] = list(self.custom_more)
        d["detected_list"] = list(self.detected_list)
        d["rpc"] = list(self.rpc)
        return d

    @property
    def rpc_specs(self) -> tuple[RpcSpec, ...]:
        return parse_rpc_specs(self.rpc)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> HardwareChoice:
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in known}
        for name in ("custom_more", "detected_list"):
            if name in kwargs:
                value = kwargs[name]
                if not isinstance(value, list) or not all(type(x) is int for x in value):
                    raise ValueError(f"hardware.{name} is not a list of whole numbers")
                kwargs[name] = tuple(value)
        if "rpc" in kwargs:
            value = kwargs["rpc"]
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise ValueError("hardware.rpc is not a list of HOST:PORT strings")
            kwargs["rpc"] = tuple(value)
            try:
                parse_rpc_specs(kwargs["rpc"])  # type: ignore[arg-type]
            except UsageError as exc:
                raise ValueError(f"hardware.rpc: {exc}") from None
        if "custom_bandwidth" in kwargs:
            bw = kwargs["custom_bandwidth"]
            if isinstance(bw, bool) or not isinstance(bw, (int, float)) or not bw >= 0:
                raise ValueError("hardware.custom_bandwidth is not a bandwidth")
        out = cls(**kwargs)  # type: ignore[arg-type]
        if out.mode not in (HW_DETECTED, HW_CATALOG, HW_CUSTOM):
            raise ValueError(f"unknown hardware mode {out.mode!r}")
        for name in ("detected_index", "custom_bytes", "embedding", "mmproj", "margin"):
            if type(getattr(out, name)) is not int:
                raise ValueError(f"hardware.{name} is not a whole number")
        for name in ("desktop", "ram"):
            if getattr(out, name) is not None and type(getattr(out, name)) is not int:
                raise ValueError(f"hardware.{name} is not a whole number")
        if not isinstance(out.catalog_name, str) or not isinstance(out.embedding_name, str):
            raise ValueError("hardware.catalog_name is not text")
        if type(out.cpu_only) is not bool:
            raise ValueError("hardware.cpu_only is not true or false")
        if not isinstance(out.host_cpu, str) or (out.host_cpu and out.host_cpu not in PRESETS):
            raise ValueError(f"hardware.host_cpu is not one of {', '.join(PRESETS)}")
        return out


def plan_hardware(choice: HardwareChoice, detected: Sequence[GpuInfo] = (),
                  ram: SystemMemory | int | None = None,
                  split: Sequence[float] | None = None,
                  host: HostCpu | None = None,
                  rpc_servers: Mapping[str, RpcServerInfo] | None = None,
                  host_bandwidth: float = 0.0) -> BudgetPlan:
    """The devices and budgets for ``choice``: the one planner of the window and the CLI.

    ``detected``: the GPUs found on this machine (with what is in use on them now); ``ram``:
    this machine's RAM (used unless the choice names its own); ``host``: this machine's
    llama.cpp CPU backend (used unless the choice names a preset; None: the estimate's
    own guess); ``rpc_servers``: what the choice's RPC servers answered (rpc.query_server);
    ``host_bandwidth``: the host RAM's measured bandwidth. Raises UsageError for a catalog
    name that matches no GPU, or an RPC server whose memory is neither typed nor known."""
    reserve = choice.reserve
    if choice.host_cpu:
        host = host_preset(choice.host_cpu)
    host_ram: SystemMemory | int | None = choice.ram if choice.ram is not None else ram
    rpc = plan_rpc(choice.rpc_specs, rpc_servers or {}, reserve)
    if choice.mode == HW_CATALOG:
        entries = [catalog_gpu(name) for name in _multiples([choice.catalog_name])]
        if not entries:
            raise UsageError("no GPU named: give a catalog name such as RTX 4060")
        if choice.ram is None and all(e.unified for e in entries):
            host_ram = entries[0].memory  # planning a Mac: its RAM is the unified memory
        planned = [plan_catalog(e, reserve, first=i == 0 and not rpc)
                   for i, e in enumerate(entries)]
        return plan_devices(None, reserve, planned=planned,
                            ram=_available(host_ram), split=split, host=host, rpc=rpc,
                            host_bandwidth=host_bandwidth)
    if choice.mode == HW_CUSTOM:
        sizes = [choice.custom_bytes, *choice.custom_more]
        planned = [plan_vram(n, reserve, first=i == 0 and not rpc,
                             bandwidth=choice.custom_bandwidth) for i, n in enumerate(sizes)]
        return plan_devices(None, reserve, planned=planned, ram=_available(host_ram),
                            split=split, host=host, rpc=rpc,
                            host_bandwidth=host_bandwidth)
    if choice.cpu_only or not detected:
        chosen: list[GpuInfo] = []
    elif choice.detected_list:
        chosen = [detected[i] for i in choice.detected_list if 0 <= i < len(detected)]
    elif choice.detected_index == ALL_GPUS:  # as llama.cpp would: every discrete GPU
        chosen = [g for g in detected if not g.unified] or list(detected)
    else:
        chosen = [detected[min(max(choice.detected_index, 0), len(detected) - 1)]]
    return plan_devices(None, reserve, gpus=chosen, ram=_available(host_ram), split=split,
                        host=host, rpc=rpc, host_bandwidth=host_bandwidth)


def _available(ram: SystemMemory | int | None) -> int | None:
    return ram.available if isinstance(ram, SystemMemory) else ram


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
        "--rpc-mem",
        action="append",
        metavar="SIZE",
        help="the memory of each --rpc server, in order (24GiB,16GiB), for servers kvgui "
        "cannot ask (default: each server is asked, as llama.cpp asks it)",
    )
    g.add_argument(
        "--gpu-bandwidth",
        metavar="GB/s",
        help="memory bandwidth of a GPU given with --vram, for the speed prediction "
        "(catalog and detected GPUs have theirs)",
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


def _pick_detected(spec: list[str], report: HardwareReport) -> HardwareChoice:
    if any(s.lower() in ("none", "cpu") for s in spec):
        return HardwareChoice(cpu_only=True)
    if not report.gpus:
        why = "; ".join(r for r in report.reasons if not r.startswith(("Apple: not", "AMD: no")))
        raise UsageError(
            f"--gpu {','.join(spec)}: no GPU detected ({why or 'none found'}); "
            "plan for one with --gpu-model NAME or --vram SIZE"
        )
    if any(s.lower() == "all" for s in spec):
        return HardwareChoice(detected_list=tuple(range(len(report.gpus))))
    chosen = []
    for s in spec:
        if not s.isdigit() or int(s) >= len(report.gpus):
            found = ", ".join(f"{i} {g.name}" for i, g in enumerate(report.gpus))
            raise UsageError(f"--gpu {s}: no such GPU (found: {found})")
        chosen.append(int(s))
    return HardwareChoice(detected_list=tuple(chosen))


def _host_cpu(args: argparse.Namespace) -> str:
    name = (getattr(args, "host_cpu", None) or "").strip().lower()
    if name and name not in PRESETS:
        raise UsageError(f"--host-cpu: unknown CPU {name!r}: one of {', '.join(PRESETS)}")
    return name


def choice_from_args(args: argparse.Namespace,
                     report: HardwareReport | None = None) -> HardwareChoice:
    """The HardwareChoice the flags describe (the window's own kind of choice)."""
    gpu_spec = _multiples(getattr(args, "gpu", None))
    models = _multiples(getattr(args, "gpu_model", None))
    vrams = _multiples(getattr(args, "vram", None))
    if sum(bool(x) for x in (gpu_spec, models, vrams)) > 1:
        raise UsageError("--gpu, --gpu-model and --vram are alternatives: give one of them")
    r = reserve_from_args(args)
    rpc = _rpc_from_args(args)
    base = HardwareChoice(desktop=r.other_apps, embedding=r.embedding,
                          embedding_name=r.embedding_name, mmproj=r.mmproj, margin=r.margin,
                          ram=_size("--ram", getattr(args, "ram", None)),
                          detected_index=ALL_GPUS, host_cpu=_host_cpu(args), rpc=rpc,
                          custom_bandwidth=_bandwidth(getattr(args, "gpu_bandwidth", None)))
    if models:
        for m in models:
            catalog_gpu(m)  # one line naming the candidates, before anything else
        return replace(base, mode=HW_CATALOG, catalog_name=", ".join(models))
    if vrams:
        sizes = [_size("--vram", v) or 0 for v in vrams]
        return replace(base, mode=HW_CUSTOM, custom_bytes=sizes[0], custom_more=tuple(sizes[1:]))
    if gpu_spec:
        if report is None:
            raise UsageError("--gpu needs the detected GPUs")
        picked = _pick_detected(gpu_spec, report)
        return replace(base, cpu_only=picked.cpu_only, detected_list=picked.detected_list)
    return base


def _rpc_from_args(args: argparse.Namespace) -> tuple[str, ...]:
    """--rpc's servers (llama.cpp's flag, Settings.rpc_servers), each with its --rpc-mem
    size when given: "HOST:PORT" or "HOST:PORT=BYTES"."""
    endpoints: list[str] = []
    for value in getattr(args, "rpc_servers", None) or []:
        for e in ([value] if isinstance(value, str) else value):
            for part in e.split(","):
                if part.strip() and part.strip() not in endpoints:
                    endpoints.append(part.strip())
    sizes = [_size("--rpc-mem", v) for v in _multiples(getattr(args, "rpc_mem", None))]
    if len(sizes) > len(endpoints):
        raise UsageError(f"--rpc-mem: {len(sizes)} sizes for {len(endpoints)} RPC servers "
                         "(give one per --rpc server, in order)")
    out = []
    for i, ep in enumerate(endpoints):
        out.append(f"{ep}={sizes[i]}" if i < len(sizes) else ep)
    parse_rpc_specs(out)  # each endpoint checked as llama.cpp reads it
    return tuple(out)


def _bandwidth(text: str | None) -> float:
    """--gpu-bandwidth: GB/s (decimal, as spec sheets give it) -> bytes/s."""
    if text is None:
        return 0.0
    try:
        value = float(text.strip().lower().removesuffix("gb/s").strip())
    except ValueError:
        raise UsageError(f"--gpu-bandwidth: not a number of GB/s: {text!r}") from None
    if not 0 < value < 100_000:
        raise UsageError(f"--gpu-bandwidth: {text} GB/s is not a GPU's memory bandwidth")
    return value * 1e9


def ask_rpc_servers(specs: Sequence[RpcSpec], timeout: float | None = None
                    ) -> dict[str, RpcServerInfo]:
    """Ask each server whose memory was not typed in (a UsageError naming the one that
    did not answer, and how to give its size instead)."""
    from kvgui.core.devices.hardware.rpc import DEFAULT_TIMEOUT, RpcQueryError, query_server

    out: dict[str, RpcServerInfo] = {}
    for spec in specs:
        if spec.memory is None:
            try:
                out[spec.endpoint] = query_server(spec.endpoint, timeout or DEFAULT_TIMEOUT)
            except RpcQueryError as exc:
                raise UsageError(f"{exc}; or give its memory: --rpc {spec.endpoint}=SIZE"
                                 ) from None
    return out


def plan_from_args(args: argparse.Namespace, report: HardwareReport | None = None,
                   host: HostCpu | None = None, host_bandwidth: float = 0.0) -> BudgetPlan:
    """The budget plan the flags describe; ``report`` is detect()'s, run here when needed;
    ``host``: the installed llama.cpp's CPU backend (kvgui.runtime.llama_backend), else the
    report's (a native build's guess); ``host_bandwidth``: the host RAM's (membw.py). RPC
    servers are asked for their memory here."""
    planning = bool(getattr(args, "gpu_model", None) or getattr(args, "vram", None))
    if report is None:
        from kvgui.core.devices.hardware import detect, system

        report = HardwareReport(system=system.probe()[0]) if planning else detect()
    choice = choice_from_args(args, report)
    servers = ask_rpc_servers(choice.rpc_specs)
    try:
        return plan_hardware(choice, report.gpus, report.system, _split_from_args(args),
                             host or report.host_cpu, servers, host_bandwidth)
    except ValueError as exc:  # a negative tensor split
        raise UsageError(str(exc)) from None


def devices_from_args(
    args: argparse.Namespace, report: HardwareReport | None = None,
    host: HostCpu | None = None,
) -> list[DeviceBudget]:
    """GPUs first (llama.cpp's order), host RAM last: what estimate()/fit take."""
    return plan_from_args(args, report, host).devices()
