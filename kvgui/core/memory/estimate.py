"""What llama.cpp will allocate for a model and settings, per device, before it is launched.

KV cache and recurrent state follow llama.cpp's constructors exactly (src/llama-kv-cache.cpp,
llama-kv-cache-iswa.cpp, llama-memory-recurrent.cpp, llama-context.cpp); the compute buffer
is a model of the worst-case graph (see compute.py). The rules llama.cpp enforces when it
creates a context surface here as errors, so they are seen before a launch fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, NamedTuple

from kvgui.core.config.settings import N_CTX_PAD, FlashAttn, Settings, SplitMode
from kvgui.core.devices.device_budget import CPU_NAME, DeviceBudget, with_rpc_devices
from kvgui.core.devices.hardware import cpu as host_cpu
from kvgui.core.devices.hardware.cpu import HostCpu
from kvgui.core.gguf import ggml_types
from kvgui.core.gguf.reader import TensorInfo
from kvgui.core.memory import findings as fnd
from kvgui.core.memory import host_buffers, reserve, tensor_overrides
from kvgui.core.memory.compute import (
    CPU_ALIGN,
    Offload,
    SlotLayers,
    cache_graph,
    compute_buffer,
    depends_on_cache_types,
)
from kvgui.core.memory.findings import Code, Finding
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.memory.verification import ComputeCheck, compute_check
from kvgui.core.model import layer_rules
from kvgui.core.model.info import ModelInfo, weight_group


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


# The parts of a device's memory, in the order every surface draws and lists them: the bar's
# segments, the legend, the table's columns, the CLI's rows and the JSON keys come from here.
PARTS: tuple[tuple[str, str], ...] = (
    ("weights", "Weights"),
    ("kv_k", "K cache"),
    ("kv_v", "V cache"),
    ("state", "Recurrent state"),
    ("compute", "Compute buffer"),
    ("output", "Output buffer"),
)
PART_KEYS: tuple[str, ...] = tuple(key for key, _ in PARTS)


class Verdict(str, Enum):
    FITS = "fits"
    OVER = "over"  # some device's budget is exceeded
    REFUSED = "refused"  # llama.cpp would not create the context with these settings
    UNKNOWN = "unknown"  # no budget to judge against


class DeviceMemory(NamedTuple):
    """One device's share. A NamedTuple, not a frozen dataclass: the window builds 18 of
    these per slider step, and a tuple is built four times faster."""

    name: str
    is_gpu: bool
    budget: int | None
    weights: int = 0
    kv_k: int = 0
    kv_v: int = 0
    compute: int = 0
    output: int = 0
    state: int = 0  # recurrent state (Mamba/RWKV conv + ssm), beside the KV cache
    # the host with mmap: the part of ``weights`` that is the model file mapped into memory
    # (llama.cpp's CPU_Mapped buffer: page cache, shared with the OS file cache) ...
    mapped: int = 0
    # ... and the part of that range no CPU weight uses (file pages of weights copied into
    # AMX/CPU_REPACK buffers at load): resident after loading, but the OS may drop them
    mapped_idle: int = 0

    @property
    def kv(self) -> int:
        return self.kv_k + self.kv_v

    @property
    def total(self) -> int:
        """Everything llama.cpp allocates or maps here (its memory breakdown's sum)."""
        return self.weights + self.kv + self.state + self.compute + self.output

    @property
    def required(self) -> int:
        """The memory this device must have: ``total`` less mapped pages nothing uses."""
        return self.total - self.mapped_idle

    def parts(self) -> tuple[tuple[str, int], ...]:
        """(part key, bytes) in PARTS order; sums to ``total``."""
        return tuple((key, getattr(self, key)) for key in PART_KEYS)

    @property
    def headroom(self) -> int | None:
        return None if self.budget is None else self.budget - self.required

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.required <= self.budget


class ContextShape(NamedTuple):
    """The context as llama.cpp sizes it (llama_context's constructor)."""

    n_ctx: int
    n_ctx_seq: int
    n_stream: int
    n_batch: int
    n_ubatch: int
    swa_cells: int  # cells of the sliding-window cache per stream
    n_seq: int = 1  # n_seq_max: the reserved ubatch is a multiple of it
    n_outputs: int = 0  # logits rows of the reserved graph; 0: n_ubatch (llama-cli's)


@dataclass(frozen=True)
class Estimate:
    model: ModelInfo
    settings: Settings
    shape: ContextShape
    flash_attn: bool
    n_gpu_layers: int
    devices: tuple[DeviceMemory, ...]
    findings: tuple[Finding, ...]
    # the host's weights per llama.cpp buffer type ("CPU_Mapped", "AMX", "CPU_REPACK", "CPU",
    # "GPU_Host"), and the CPU backend they were placed for
    host_buffers: tuple[tuple[str, int], ...] = ()
    host: HostCpu | None = None

    @property
    def refusals(self) -> tuple[Finding, ...]:
        return fnd.refusals(self.findings)

    @property
    def refused(self) -> bool:
        return any(f.is_refusal for f in self.findings)

    @property
    def notes(self) -> tuple[str, ...]:
        """How the figures were made, where the user should know (not verified, …)."""
        return tuple(f.message for f in self.findings if f.severity is fnd.Severity.NOTE)

    @property
    def errors(self) -> tuple[str, ...]:
        """The refusals' messages (for showing; decide by ``refusals`` / codes)."""
        return tuple(f.message for f in self.findings if f.is_refusal)

    @property
    def warnings(self) -> tuple[str, ...]:
        return tuple(f.message for f in fnd.warnings(self.findings))

    def has(self, code: Code) -> bool:
        return any(f.code is code for f in self.findings)

    @property
    def n_ctx(self) -> int:
        return self.shape.n_ctx

    def _sum(self, attr: str) -> int:
        return sum(getattr(d, attr) for d in self.devices)

    @property
    def weights(self) -> int:
        return self._sum("weights")

    @property
    def kv_k(self) -> int:
        return self._sum("kv_k")

    @property
    def kv_v(self) -> int:
        return self._sum("kv_v")

    @property
    def kv(self) -> int:
        return self.kv_k + self.kv_v

    @property
    def state(self) -> int:
        return self._sum("state")

    @property
    def compute(self) -> int:
        return self._sum("compute")

    @property
    def output(self) -> int:
        return self._sum("output")

    @property
    def total(self) -> int:
        return self._sum("total")

    @property
    def verdict(self) -> Verdict:
        if self.refused:
            return Verdict.REFUSED
        judged = [d.fits for d in self.devices if d.budget is not None]
        if not judged:
            return Verdict.UNKNOWN
        return Verdict.FITS if all(judged) else Verdict.OVER

    @property
    def fits(self) -> bool | None:
        """True / False, or None when there is no budget; refused settings never fit."""
        v = self.verdict
        return None if v is Verdict.UNKNOWN else v is Verdict.FITS

    @property
    def compute_check(self) -> ComputeCheck:
        """How far the compute figure is verified for this architecture (verification.py)."""
        return compute_check(self.model, any(d.is_gpu and d.compute for d in self.devices))

    def memory_json(self) -> dict[str, int]:
        out = {key: getattr(self, key) for key in PART_KEYS}
        out["kv"] = self.kv
        out["total"] = self.total
        return out

    def to_json(self) -> dict[str, Any]:
        m, s = self.model, self.settings
        return {
            "model": {"path": m.path, "name": m.name, "arch": m.arch, "file_type": m.file_type,
                      "file_bytes": m.file_bytes, "n_layer": m.n_layer,
                      "n_ctx_train": m.n_ctx_train},
            "settings": {"n_ctx": self.n_ctx, "type_k": s.type_k, "type_v": s.type_v,
                         "flash_attn": self.flash_attn, "n_gpu_layers": self.n_gpu_layers,
                         "n_batch": self.shape.n_batch, "n_ubatch": self.shape.n_ubatch,
                         "n_parallel": s.n_parallel, "swa_full": s.swa_full,
                         "n_cpu_moe": s.n_cpu_moe,
                         "override_tensor": [list(o) for o in s.override_tensor],
                         "rpc_servers": list(s.rpc_servers)},
            "memory": self.memory_json(),
            "compute_check": self.compute_check.to_json(),
            "devices": [{"name": d.name, "is_gpu": d.is_gpu, "budget": d.budget,
                         **{key: getattr(d, key) for key in PART_KEYS},
                         "kv": d.kv, "total": d.total, "mapped": d.mapped,
                         "mapped_idle": d.mapped_idle, "required": d.required,
                         "headroom": d.headroom}
                        for d in self.devices],
            "host_buffers": dict(self.host_buffers),
            "host_cpu": None if self.host is None else self.host.to_dict(),
            "verdict": self.verdict.value,
            "fits": self.fits,
            "findings": [f.to_json() for f in self.findings],
            "warnings": list(self.warnings),
            "errors": list(self.errors),
        }


def context_shape(model: ModelInfo, s: Settings) -> ContextShape:
    n_ctx = _pad(s.n_ctx, N_CTX_PAD)
    n_seq = s.n_parallel
    if s.kv_unified:
        n_ctx_seq = n_ctx
        n_stream = 1
    else:
        n_ctx_seq = _pad(n_ctx // n_seq, N_CTX_PAD)
        n_ctx = n_ctx_seq * n_seq
        n_stream = n_seq
    # causal attention: a batch never exceeds the context (llama.cpp compares the context as
    # given, before padding it)
    n_batch = min(s.n_ctx, s.n_batch)
    n_ubatch = min(n_batch, s.n_ubatch)
    if s.swa_full or not model.n_swa:
        swa_cells = n_ctx_seq
    else:
        window = model.n_swa * (n_seq if s.kv_unified else 1) + n_ubatch
        swa_cells = _pad(min(n_ctx_seq, window), 256)
    # llama-context.cpp: the reserve's outputs are min(n_tokens, n_outputs_max or n_batch)
    n_outputs = min(n_ubatch, s.n_outputs_max or n_batch)
    return ContextShape(n_ctx, n_ctx_seq, n_stream, n_batch, n_ubatch, swa_cells, n_seq,
                        n_outputs)


def resolve_flash_attn(model: ModelInfo, s: Settings) -> bool:
    """llama.cpp's -fa auto: on, unless the architecture cannot use it (Grok)."""
    if model.arch == "grok":
        return False
    return s.flash_attn is not FlashAttn.OFF


def beyond_trained(model: ModelInfo, s: Settings) -> bool:
    """Whether each sequence's context exceeds what the model was trained on."""
    per_seq = _pad(s.n_ctx, N_CTX_PAD) // (1 if s.kv_unified else s.n_parallel)
    return bool(model.n_ctx_train) and per_seq > model.n_ctx_train


def check(model: ModelInfo, s: Settings) -> tuple[Finding, ...]:
    """What llama.cpp says of these settings for this model, before it allocates anything
    (llama_init_from_model, llama_context's and llama_kv_cache's constructors)."""
    out: list[Finding] = []
    quant_v = ggml_types.is_quantized(s.type_v)
    if quant_v and s.flash_attn is FlashAttn.OFF:
        out.append(fnd.refusal(
            Code.V_QUANT_NEEDS_FA,
            f"a quantized V cache ({s.type_v}) needs flash attention: "
            "set -fa on or auto, or use an f16 V cache",
            field="flash_attn", fix={"flash_attn": FlashAttn.AUTO}))
    if model.is_mla and s.type_k != s.type_v:
        out.append(fnd.refusal(
            Code.MLA_SAME_TYPES,
            f"{model.arch} (MLA) needs the same K and V cache type, not {s.type_k}/{s.type_v}",
            field="type_v", fix={"type_v": s.type_k}))
    if model.has_kv_cache:
        for name, t, code in (("K", s.type_k, Code.K_BLOCK_SIZE),
                              ("V", s.type_v, Code.V_BLOCK_SIZE)):
            block = ggml_types.by_name(t).block_size
            if name == "K":
                heads = {model.n_embd_head_k} | (
                    {model.n_embd_head_k_swa} if model.n_swa else set())
            else:
                heads = {model.n_embd_head_v} | (
                    {model.n_embd_head_v_swa} if model.n_swa else set())
            bad = sorted(h for h in heads if h and h % block)
            if bad:
                field_name = "type_k" if name == "K" else "type_v"
                out.append(fnd.refusal(
                    code,
                    f"{name} cache type {t} has a block size of {block}, which does not divide "
                    f"the head size {bad[0]}: use f16, bf16 or f32",
                    field=field_name, fix={field_name: "f16"}))
    out += [fnd.warning(Code.MODEL, w) for w in model.warnings]
    if model.arch == "grok" and s.flash_attn is FlashAttn.ON:
        out.append(fnd.warning(Code.FA_FORCED_OFF,
                               "llama.cpp turns flash attention off for Grok models",
                               field="flash_attn"))
    if beyond_trained(model, s):
        out.append(fnd.warning(
            Code.BEYOND_TRAINED,
            f"context {s.n_ctx} is beyond the {model.n_ctx_train} tokens the model was trained "
            "on: expect degraded output unless it uses RoPE scaling", field="n_ctx"))
    if s.swa_full and model.n_swa:
        out.append(fnd.warning(Code.SWA_FULL,
                               "--swa-full keeps a full-size cache for the sliding-window layers",
                               field="swa_full"))
    if not model.has_kv_cache and not model.is_recurrent:
        out.append(fnd.warning(Code.NO_KV_CACHE,
                               "this model keeps no KV cache: the cache type changes nothing"))
    return tuple(out)


@dataclass(frozen=True)
class _Placement:
    """Where each part of the model lives for one -ngl / split: computed once, then cached.

    Layers with the same cache shape on the same device are grouped, so an estimate costs a
    handful of multiplications however many layers the model has.
    """

    n_gpu_layers: int
    weights: tuple[int, ...]  # per slot: GPUs in order, then the CPU
    kv_groups: tuple[tuple[int, int, int, bool, int], ...]  # (slot, n_embd_k, n_embd_v, swa, n)
    kv_groups_host: tuple[tuple[int, int, int, bool, int], ...]  # the same with -nkvo
    recurrent: tuple[int, ...]  # recurrent layers per slot
    recurrent_host: tuple[int, ...]
    compute_slots: tuple[SlotLayers, ...]
    host: host_buffers.HostWeights  # the CPU slot's weights by llama.cpp buffer type
    offload: Offload  # where the layers are, for the compute graph's scheduler
    findings: tuple[Finding, ...] = ()  # what llama.cpp says of the tensor overrides


def _layer_devices(model: ModelInfo, s: Settings, gpus: Sequence[DeviceBudget]) -> tuple[
        list[int], int, int]:
    """Device index per layer (-1 = CPU), the output layer's device, and layers offloaded.

    llama_model::load_tensors: the last n_gpu_layers of (layers + output) go to the GPUs,
    split by --tensor-split (or free memory) with an upper_bound over the cumulative ratios.
    """
    n_all = len(model.layers)
    ngl = n_all + 1 if s.n_gpu_layers < 0 else s.n_gpu_layers
    if not gpus:
        return [-1] * n_all, -1, 0
    i_gpu_start = max(n_all + 1 - ngl, 0)
    act = min(ngl, n_all + 1)
    ratios = list(s.tensor_split) if any(s.tensor_split) else [
        float(g.split or g.budget or 1) for g in gpus]
    ratios = (ratios + [0.0] * len(gpus))[: len(gpus)]
    total = sum(ratios) or 1.0
    cum, acc = [], 0.0
    for r in ratios:
        acc += r
        cum.append(acc / total)

    def dev(il: int) -> int:
        if il < i_gpu_start or il - i_gpu_start >= act:
            return -1
        x = (il - i_gpu_start) / act
        for i, c in enumerate(cum):
            if x < c:
                return i
        return len(gpus) - 1

    return [dev(il) for il in range(n_all)], dev(n_all), max(0, min(ngl, n_all + 1))


def _tensor_slots(model: ModelInfo, layer_dev: Sequence[int], out_dev: int,
                  rules: tensor_overrides.Resolved) -> tuple[
        list[tuple[TensorInfo, int]], TensorInfo | None, int]:
    """Each weight llama.cpp loads with its device (-1: the host): its layer's (input and
    "other" weights: the host), unless an override matches its name first. Also the tied
    output head (token_embd loaded again as the output layer: TENSOR_DUPLICATED, the same
    name, so the same overrides) and its device, when the file has no output.weight."""
    n_all = len(model.layers)
    output_names = layer_rules.output_tensors(model.arch)
    out: list[tuple[TensorInfo, int]] = []
    for t in model.tensors:
        group = weight_group(t.name, n_all, model.n_layer, output_names)
        if isinstance(group, int):
            default = layer_dev[group]
        elif group == "output":
            default = out_dev
        else:
            default = -1
        out.append((t, rules.slot(t.name, default) if rules else default))
    tied = None
    if not any(t.name == "output.weight" for t in model.tensors):
        tied = next((t for t in model.tensors if t.name == "token_embd.weight"), None)
    tied_dev = out_dev if tied is None or not rules else rules.slot(tied.name, out_dev)
    return out, tied, tied_dev


def _host_weights(model: ModelInfo, host: HostCpu, slots: Sequence[tuple[TensorInfo, int]],
                  tied: TensorInfo | None, tied_dev: int, *, gpu_host: bool,
                  mmap: bool) -> host_buffers.HostWeights:
    """The host's weights (input, other, CPU layers, a CPU output layer, whatever an
    override sends there) in llama.cpp's host buffer types (host_buffers.py)."""
    mine = [t for t, dev in slots if dev < 0]
    output_first = model.arch in layer_rules.OUTPUT_BEFORE_TOKEN_EMBD
    tied_output = None
    if tied_dev < 0 and tied is not None and (model.tied_output_weights or output_first):
        tied_output = tied
    return host_buffers.place(mine, host, gpu_host=gpu_host, mmap=mmap,
                              tied_output=tied_output, output_first=output_first)


def _placement(model: ModelInfo, s: Settings, gpus: Sequence[DeviceBudget],
               host: HostCpu) -> _Placement:
    layer_dev, out_dev, n_gpu_layers = _layer_devices(model, s, gpus)
    n_slots = len(gpus) + 1
    cpu = n_slots - 1

    def slot(dev: int) -> int:
        return cpu if dev < 0 else dev

    rules = tensor_overrides.resolve(s, gpus, (t.name for t in model.tensors),
                                     n_expert=model.n_expert)
    found = list(rules.findings)
    weights = [0] * n_slots
    gpu_host = any(g.has_host_buffer for g in gpus)
    if model.tensors:
        align = layer_rules.WEIGHT_ALIGNMENT
        slots, tied, tied_dev = _tensor_slots(model, layer_dev, out_dev, rules)
        for t, dev in slots:
            if dev >= 0:
                weights[dev] += -(-t.nbytes // align) * align
        if tied is not None and tied_dev >= 0:
            # the output head's copy of token_embd on a GPU (OUTPUT_BEFORE_TOKEN_EMBD
            # architectures count it in output_weights, as a weight of its own)
            weights[tied_dev] += model.tied_output_weights or -(-tied.nbytes // align) * align
        hosted = _host_weights(model, host, slots, tied, tied_dev, gpu_host=gpu_host,
                               mmap=s.mmap)
        weights[cpu] = hosted.total
        if rules and s.mmap and any(rules.rule_slot(t.name) == -1 for t, _ in slots):
            found.append(fnd.note(
                Code.CPU_OVERRIDE_MMAP,
                "tensors overridden to the CPU with mmap on: llama.cpp runs them from the "
                "mapped file and suggests --load-mode none (-lm none) for speed"))
    else:  # a header without its tensor table: the plain sums (overrides cannot apply)
        weights[cpu] += model.input_weights + model.other_weights
        weights[slot(out_dev)] += model.output_weights
        if out_dev >= 0:
            weights[out_dev] += model.tied_output_weights
        for il, w in enumerate(model.layer_weights):
            weights[slot(layer_dev[il])] += w
        hosted = host_buffers.place((), host, gpu_host=gpu_host, mmap=s.mmap)
    groups: dict[tuple[int, int, int, bool], int] = {}
    groups_host: dict[tuple[int, int, int, bool], int] = {}
    recurrent = [0] * n_slots
    recurrent_host = [0] * n_slots
    for il, layer in enumerate(model.layers):
        where = slot(layer_dev[il])
        if layer.has_kv:
            k = (where, layer.n_embd_k, layer.n_embd_v, layer.swa)
            groups[k] = groups.get(k, 0) + 1
            kh = (cpu, layer.n_embd_k, layer.n_embd_v, layer.swa)
            groups_host[kh] = groups_host.get(kh, 0) + 1
        if layer.recurrent:
            recurrent[where] += 1
            recurrent_host[cpu] += 1
    slots_ = []
    for d in [*range(len(gpus)), -1]:
        here = [layer for il, layer in enumerate(model.layers) if layer_dev[il] == d]
        slots_.append(SlotLayers(
            holds_layers=bool(here), holds_output=out_dev == d,
            full_attention=any(layer.has_kv and not layer.swa for layer in here),
            swa=any(layer.has_kv and layer.swa for layer in here)))
    # the scheduler sees the CPU's weights in extra buffer types (CPU_REPACK, AMX) as no host
    # memory: no GPU offloads an op on them (ggml_backend_sched_backend_id_from_cur)
    extra = frozenset(p.weight.name for p in hosted.placed
                      if p.buffer not in (host_buffers.CPU, host_buffers.GPU_HOST))
    return _Placement(n_gpu_layers, tuple(weights),
                      tuple((*k, n) for k, n in groups.items()),
                      tuple((*k, n) for k, n in groups_host.items()),
                      tuple(recurrent), tuple(recurrent_host), tuple(slots_), hosted,
                      Offload(tuple(layer_dev), out_dev, len(gpus), True, rules.layout_rules,
                              extra, rules.given,
                              tuple((g.alignment or CPU_ALIGN) if g.is_rpc else 0
                                    for g in gpus)), tuple(found))


def estimate(model: ModelInfo, settings: Settings,
             devices: Sequence[DeviceBudget] | None = None,
             memo: ModelMemo | None = None) -> Estimate:
    """Everything llama.cpp allocates for ``model`` with ``settings``, per device (GPUs in
    llama.cpp's order, then the host), and what llama.cpp would say of the settings.

    ``memo``: the caller's memo for this model (see memo.py); repeated estimates of the
    same model (a slider sweep, a fit search) pass one and cost a few microseconds each."""
    memo = ModelMemo(model) if memo is None else memo.for_model(model)
    devices = devices or ()
    all_gpus = with_rpc_devices([d for d in devices if d.is_gpu], settings.rpc_servers)
    cpu_budget = next((d.budget for d in devices if not d.is_gpu), None)
    s = settings
    gpus, split_found = _split_devices(all_gpus, s)
    host, crash = _host_of(devices, s)
    fa = _flash_attn(model, s)
    found = list(memo.get("check", (s.type_k, s.type_v, s.flash_attn, s.swa_full,
                                    beyond_trained(model, s) and s.n_ctx),
                          lambda: check(model, s))) + split_found
    refused = any(f.is_refusal for f in found)
    shape = context_shape(model, s)
    placement_key, placed = _placed(model, s, gpus, host, memo)
    found += placed.findings
    refused = refused or any(f.is_refusal for f in placed.findings)
    if not refused:
        graph_found = _graph_budget(model, s, shape, fa, memo)
        found += graph_found
        refused = bool(graph_found)
    n_slots = len(gpus) + 1
    cpu = n_slots - 1

    kv_k = [0] * n_slots
    kv_v = [0] * n_slots
    if not refused:
        tk, tv = ggml_types.by_name(s.type_k), ggml_types.by_name(s.type_v)
        v_max = model.n_embd_v_max if not fa else 0  # -fa off: V is transposed, padded to max
        for where, n_k, n_v, swa, count in (placed.kv_groups if s.kv_offload
                                            else placed.kv_groups_host):
            cells = (shape.swa_cells if swa else shape.n_ctx_seq) * shape.n_stream * count
            kv_k[where] += tk.row_bytes(n_k) * cells
            kv_v[where] += tv.row_bytes(v_max if (v_max and n_v) else n_v) * cells
    per_state = (model.n_embd_r + model.n_embd_s) * 4 * max(1, s.n_parallel)  # R and S, f32
    state = [n * per_state for n in (placed.recurrent if s.kv_offload
                                      else placed.recurrent_host)]

    compute = _compute(model, s, shape, fa, placement_key, placed, memo)
    output = model.n_vocab * s.n_parallel * 4  # logits for one token per sequence, host memory

    out: list[DeviceMemory] = []
    for i, g in enumerate(gpus):
        out.append(DeviceMemory(g.name, True, g.budget, placed.weights[i], kv_k[i], kv_v[i],
                                compute[i], 0, state[i]))
    if len(gpus) < len(all_gpus):  # -sm none: the other GPUs hold nothing
        used = dict(zip((id(g) for g in gpus), out, strict=True))
        out = [used.get(id(g)) or DeviceMemory(g.name, True, g.budget) for g in all_gpus]
    out.append(DeviceMemory(CPU_NAME, False, cpu_budget, placed.weights[cpu], kv_k[cpu],
                            kv_v[cpu], compute[cpu], output, state[cpu],
                            placed.host.mapped, placed.host.mapped_idle))
    found += host_buffers.findings(placed.host, host, flash_attn=fa)
    if crash and any(p.buffer not in ("CPU", "CPU_Mapped") for p in placed.host.placed):
        found.append(fnd.refusal(Code.LLAMA_ABORTS, crash, field="repack",
                                 fix={"repack": False}))
    on_gpu = any(d.is_gpu and d.compute for d in out)
    checked = memo.get("compute_check", on_gpu, lambda: compute_check(model, on_gpu))
    if not checked.verified and not refused:
        found.append(fnd.note(Code.COMPUTE_NOT_VERIFIED, f"compute buffer: {checked.label}"))
    unknown = [g.name for g in gpus if g.is_rpc and g.budget is None and not g.split]
    if unknown and len(gpus) > 1 and not s.tensor_split:
        found.append(fnd.note(
            Code.RPC_MEMORY_UNKNOWN,
            f"llama.cpp splits the layers by each device's free memory, which kvgui does not "
            f"know for {', '.join(unknown)}: the split shown is a guess; -ts sets it"))
    n_gpu_layers = placed.n_gpu_layers
    if gpus and n_gpu_layers < len(model.layers) + 1:
        found.append(fnd.warning(
            Code.PARTIAL_OFFLOAD,
            f"{n_gpu_layers} of {len(model.layers) + 1} layers on the GPU: "
            "the rest run on the CPU, much slower", field="n_gpu_layers"))
    return Estimate(model, s, shape, fa, n_gpu_layers, tuple(out), tuple(found),
                    placed.host.buffers, host)


def _graph_budget(model: ModelInfo, s: Settings, shape: ContextShape, fa: bool,
                  memo: ModelMemo) -> list[Finding]:
    """llama.cpp's scheduler holds at most ggml_hash_size(graph_max_nodes) of the reserve
    graph's nodes and leafs; a larger graph aborts the process (reserve.graph_tensors).
    Known only where the graph is rebuilt exactly (builders/)."""
    kinds = cache_graph(model, s.type_k, s.type_v)
    # what the graph's structure and llama.cpp's budget for it depend on, not the context
    # (a slider step must not redo this): min(n_ctx, n_ubatch) is the reserved batch
    key = (fa, kinds, s.n_parallel, s.kv_unified, s.n_batch, s.n_ubatch, s.n_outputs_max,
           min(shape.n_ctx, shape.n_ubatch))
    return memo.get("graph-budget", key,
                    lambda: _graph_budget_of(model, s, shape, fa, kinds, memo))


def _graph_budget_of(model: ModelInfo, s: Settings, shape: ContextShape, fa: bool,
                     kinds: Any, memo: ModelMemo) -> list[Finding]:
    n = reserve.graph_tensors(model, shape, fa, kinds, memo)
    if n is None:
        return []
    n_tokens = min(shape.n_ctx, shape.n_ubatch)
    limit = reserve.hash_size(reserve.graph_max_nodes(model, n_tokens))
    if n <= limit:
        return []
    fix: dict[str, object]
    if s.n_parallel > 1:
        field, fix, how = "n_parallel", {"n_parallel": 1}, "use -np 1"
    else:
        field, fix, how = "type_k", {"type_k": "f16", "type_v": "f16"}, "use an f16 cache"
    return [fnd.refusal(
        Code.LLAMA_ABORTS,
        f"llama.cpp aborts with these settings: its compute graph has {n:,} tensors, more "
        f"than the {limit:,} its scheduler makes room for in a model of "
        f"{len(model.tensor_table):,} tensors (ggml 'fatal error', the hash set full); {how}",
        field=field, fix=fix)]


def _split_devices(gpus: list[DeviceBudget], s: Settings) -> tuple[list[DeviceBudget],
                                                                     list[Finding]]:
    """The GPUs llama.cpp loads onto: with -sm none only the main GPU (src/llama.cpp: "if
    using single GPU mode, remove all except the main GPU"; a -mg past them fails the load);
    with -sm row every matrix is split by rows over the GPUs, which kvgui does not follow
    (it shows -sm layer's figures and says so)."""
    if not gpus or s.split_mode is SplitMode.LAYER:
        return gpus, []
    if s.split_mode is SplitMode.NONE:
        if s.main_gpu >= len(gpus):
            return gpus, [fnd.refusal(
                Code.MAIN_GPU_INVALID,
                f"-mg {s.main_gpu}: there are {len(gpus)} devices (0-{len(gpus) - 1}); "
                "llama.cpp fails the load ('invalid value for main_gpu')", field="main_gpu",
                fix={"main_gpu": 0})]
        return [gpus[s.main_gpu]], []
    if len(gpus) > 1:
        return gpus, [fnd.note(
            Code.SPLIT_ROW_UNMODELED,
            f"-sm {s.split_mode.value}: llama.cpp splits each matrix across the GPUs; kvgui "
            "shows the figures of -sm layer (the totals are close, the per-GPU shares not)")]
    return gpus, []


def refusals_of(model: ModelInfo, settings: Settings,
                devices: Sequence[DeviceBudget] | None = None,
                memo: ModelMemo | None = None) -> tuple[Finding, ...]:
    """What llama.cpp would refuse of these settings — estimate()'s refusals, from the same
    rules and memo entries — without sizing the compute buffers (a control that marks every
    cache type asks this 18 times per change; a new placement's buffers cost a scheduler
    replay each)."""
    memo = ModelMemo(model) if memo is None else memo.for_model(model)
    devices = devices or ()
    s = settings
    gpus, found = _split_devices([d for d in devices if d.is_gpu], s)
    host, crash = _host_of(devices, s)
    found = list(memo.get("check", (s.type_k, s.type_v, s.flash_attn, s.swa_full,
                                    beyond_trained(model, s) and s.n_ctx),
                          lambda: check(model, s))) + found
    _, placed = _placed(model, s, gpus, host, memo)
    found += placed.findings
    if not any(f.is_refusal for f in found):
        found += _graph_budget(model, s, context_shape(model, s), _flash_attn(model, s), memo)
    found += host_buffers.findings(placed.host, host, flash_attn=_flash_attn(model, s))
    if crash and any(p.buffer not in ("CPU", "CPU_Mapped") for p in placed.host.placed):
        found.append(fnd.refusal(Code.LLAMA_ABORTS, crash, field="repack",
                                 fix={"repack": False}))
    return tuple(f for f in found if f.is_refusal)


def _host_of(devices: Sequence[DeviceBudget], s: Settings) -> tuple[HostCpu, str]:
    """The CPU backend the host's weights are placed for (-nr: no extra buffer types), and
    why its kernels would abort llama.cpp ("" when they would not)."""
    host = next((d.host for d in devices if not d.is_gpu and d.host is not None), None) \
        or this_host()
    crash = host.kernels_crash if s.repack and host.extra_buffers else ""
    if not s.repack:  # -nr: llama.cpp uses no extra CPU buffer types
        host = host.without_extra_buffers()
    return host, crash


def _flash_attn(model: ModelInfo, s: Settings) -> bool:
    fa = resolve_flash_attn(model, s)
    if ggml_types.is_quantized(s.type_v) and s.flash_attn is FlashAttn.AUTO:
        fa = True
    return fa


def _placed(model: ModelInfo, s: Settings, gpus: Sequence[DeviceBudget], host: HostCpu,
            memo: ModelMemo) -> tuple[tuple[Any, ...], _Placement]:
    # the budgets only split the layers between several GPUs (one GPU's size changes no
    # placement: a search over budgets reuses the placements and compute buffers)
    split_by = (lambda g: g.budget) if len(gpus) > 1 else (lambda g: None)
    placement_key = (s.n_gpu_layers, s.tensor_split,
                     tuple((g.split, split_by(g), g.buft, g.alignment) for g in gpus), host,
                     s.mmap, s.override_tensor, s.n_cpu_moe)
    return placement_key, memo.get("placement", placement_key,
                                   lambda: _placement(model, s, gpus, host))


def _compute(model: ModelInfo, s: Settings, shape: ContextShape, fa: bool,
             placement_key: tuple[Any, ...], placed: _Placement,
             memo: ModelMemo) -> list[int]:
    graph = cache_graph(model, s.type_k, s.type_v)
    offload = placed.offload if s.kv_offload else placed.offload.with_kv_offload(False)
    # one entry for every quantized type of the kind, unless the graph copies the cache
    # (then one per exact pair): a slider step asks for 81 pairs of 16 kinds
    any_type = (placement_key, shape, fa, graph.graph, s.kv_offload)
    found: list[int] | None = memo.peek("compute", any_type)
    if found is not None:
        return found
    exact = any_type if graph.exact is None else (*any_type, graph.exact)
    found = memo.peek("compute", exact)
    if found is None:
        found = compute_buffer(model, shape, fa, placed.compute_slots, graph, offload,
                               memo=memo)
        bound = depends_on_cache_types(model, shape, fa, graph, offload, memo)
        memo.put("compute", exact if bound else any_type, found)
    return found


def compute_buffers(model: ModelInfo, settings: Settings, devices: Sequence[DeviceBudget],
                    memo: ModelMemo) -> tuple[int, ...]:
    """The compute buffer of each device (GPUs, host last), exactly as estimate() has it
    and from the same memo entries, without the rest of the estimate (the planner's
    representatives: compute is all it needs of them)."""
    memo = memo.for_model(model)
    gpus, _ = _split_devices([d for d in devices if d.is_gpu], settings)
    host, _ = _host_of(devices, settings)
    placement_key, placed = _placed(model, settings, gpus, host, memo)
    shape = context_shape(model, settings)
    return tuple(_compute(model, settings, shape, _flash_attn(model, settings),
                          placement_key, placed, memo))


def this_host() -> HostCpu:
    """This machine's llama.cpp CPU backend as the core can tell it: a native build for its
    CPU's flags (pip builds llama-cpp-python with GGML_NATIVE). The runtime reads the
    installed build itself (kvgui.runtime.llama_backend.probe_host_cpu) and passes it in
    the CPU's DeviceBudget; this is the guess when nobody did."""
    global _THIS_HOST
    if _THIS_HOST is None:
        _THIS_HOST = host_cpu.native_build(host_cpu.read_cpu_flags(), host_cpu.machine())
    return _THIS_HOST


_THIS_HOST: HostCpu | None = None
