"""What llama.cpp will allocate for a model and settings, per device, before it is launched.

KV cache and recurrent state follow llama.cpp's constructors exactly (src/llama-kv-cache.cpp,
llama-kv-cache-iswa.cpp, llama-memory-recurrent.cpp, llama-context.cpp); the compute buffer
is a model of the worst-case graph (see compute.py). The rules llama.cpp enforces when it
creates a context surface here as errors, so they are seen before a launch fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from kvgui.core.config.settings import N_CTX_PAD, FlashAttn, Settings
from kvgui.core.devices.device_budget import CPU_NAME, DeviceBudget
from kvgui.core.gguf import ggml_types
from kvgui.core.memory.compute import SlotLayers, cache_graph, compute_buffer
from kvgui.core.model.info import ModelInfo

_QUANTIZED = frozenset({"q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"})


def _pad(n: int, to: int) -> int:
    return -(-n // to) * to


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

    @property
    def kv(self) -> int:
        return self.kv_k + self.kv_v

    @property
    def total(self) -> int:
        return self.weights + self.kv + self.state + self.compute + self.output

    @property
    def headroom(self) -> int | None:
        return None if self.budget is None else self.budget - self.total

    @property
    def fits(self) -> bool | None:
        return None if self.budget is None else self.total <= self.budget


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
    warnings: tuple[str, ...]
    errors: tuple[str, ...]

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
    def fits(self) -> bool | None:
        if self.errors:
            return False
        verdicts = [d.fits for d in self.devices if d.budget is not None]
        return all(verdicts) if verdicts else None

    def memory_json(self) -> dict[str, int]:
        return {"weights": self.weights, "kv_k": self.kv_k, "kv_v": self.kv_v, "kv": self.kv,
                "state": self.state, "compute": self.compute, "output": self.output,
                "total": self.total}

    def to_json(self) -> dict[str, Any]:
        m, s = self.model, self.settings
        return {
            "model": {"path": m.path, "name": m.name, "arch": m.arch, "file_type": m.file_type,
                      "file_bytes": m.file_bytes, "n_layer": m.n_layer,
                      "n_ctx_train": m.n_ctx_train},
            "settings": {"n_ctx": self.n_ctx, "type_k": s.type_k, "type_v": s.type_v,
                         "flash_attn": self.flash_attn, "n_gpu_layers": self.n_gpu_layers,
                         "n_batch": self.shape.n_batch, "n_ubatch": self.shape.n_ubatch,
                         "n_parallel": s.n_parallel, "swa_full": s.swa_full},
            "memory": self.memory_json(),
            "devices": [{"name": d.name, "weights": d.weights, "kv": d.kv, "state": d.state,
                         "compute": d.compute, "output": d.output, "total": d.total,
                         "budget": d.budget}
                        for d in self.devices],
            "fits": self.fits,
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


def check(model: ModelInfo, s: Settings, flash_attn: bool) -> tuple[list[str], list[str]]:
    """The refusals and warnings llama.cpp gives for these settings (llama_init_from_model)."""
    errors: list[str] = []
    warnings: list[str] = list(model.warnings)
    if s.type_v in _QUANTIZED and s.flash_attn is FlashAttn.OFF:
        errors.append(f"a quantized V cache ({s.type_v}) needs flash attention: "
                      "set -fa on or auto, or use an f16 V cache")
    if model.arch == "grok" and s.flash_attn is FlashAttn.ON:
        warnings.append("llama.cpp turns flash attention off for Grok models")
    if model.is_mla and s.type_k != s.type_v:
        errors.append(f"{model.arch} (MLA) needs the same K and V cache type, "
                      f"not {s.type_k}/{s.type_v}")
    for name, t in (("K", s.type_k), ("V", s.type_v)):
        block = ggml_types.by_name(t).block_size
        if name == "K":
            heads = {model.n_embd_head_k} | ({model.n_embd_head_k_swa} if model.n_swa else set())
        else:
            heads = {model.n_embd_head_v} | ({model.n_embd_head_v_swa} if model.n_swa else set())
        bad = sorted(h for h in heads if h and h % block)
        if model.has_kv_cache and bad:
            errors.append(f"{name} cache type {t} has a block size of {block}, which does not "
                          f"divide the head size {bad[0]}: use f16, bf16 or f32")
    if model.n_ctx_train and _pad(s.n_ctx, N_CTX_PAD) // (1 if s.kv_unified else s.n_parallel) \
            > model.n_ctx_train:
        warnings.append(f"context {s.n_ctx} is beyond the {model.n_ctx_train} tokens the model "
                        "was trained on: expect degraded output unless it uses RoPE scaling")
    if s.swa_full and model.n_swa:
        warnings.append("--swa-full keeps a full-size cache for the sliding-window layers")
    if not model.has_kv_cache and not model.is_recurrent:
        warnings.append("this model keeps no KV cache: the cache type changes nothing")
    return errors, warnings


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
    # compute buffers already worked out for this placement, by context shape and graph
    compute_memo: dict[Any, list[int]] = field(default_factory=dict, compare=False,
                                               hash=False, repr=False)


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


def _placement(model: ModelInfo, s: Settings, gpus: Sequence[DeviceBudget]) -> _Placement:
    key = (s.n_gpu_layers, s.tensor_split, tuple((g.split, g.budget) for g in gpus))
    cache = model.cache
    found = cache.get(key)
    if found is not None:
        return found
    layer_dev, out_dev, n_gpu_layers = _layer_devices(model, s, gpus)
    n_slots = len(gpus) + 1
    cpu = n_slots - 1

    def slot(dev: int) -> int:
        return cpu if dev < 0 else dev

    weights = [0] * n_slots
    weights[cpu] += model.input_weights + model.other_weights
    weights[slot(out_dev)] += model.output_weights
    if out_dev >= 0:
        weights[out_dev] += model.tied_output_weights
    for il, w in enumerate(model.layer_weights):
        weights[slot(layer_dev[il])] += w
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
    slots = []
    for d in [*range(len(gpus)), -1]:
        here = [layer for il, layer in enumerate(model.layers) if layer_dev[il] == d]
        slots.append(SlotLayers(
            holds_layers=bool(here), holds_output=out_dev == d,
            full_attention=any(layer.has_kv and not layer.swa for layer in here),
            swa=any(layer.has_kv and layer.swa for layer in here)))
    placed = _Placement(n_gpu_layers, tuple(weights),
                        tuple((*k, n) for k, n in groups.items()),
                        tuple((*k, n) for k, n in groups_host.items()),
                        tuple(recurrent), tuple(recurrent_host), tuple(slots))
    if len(cache) > 256:
        cache.clear()
    cache[key] = placed
    return placed


def estimate(model: ModelInfo, settings: Settings,
             devices: Sequence[DeviceBudget] | None = None) -> Estimate:
    devices = devices or ()
    gpus = [d for d in devices if d.is_gpu]
    cpu_budget = next((d.budget for d in devices if not d.is_gpu), None)
    s = settings
    fa = resolve_flash_attn(model, s)
    if s.type_v in _QUANTIZED and s.flash_attn is FlashAttn.AUTO:
        fa = True
    over_trained = bool(model.n_ctx_train) and _pad(s.n_ctx, N_CTX_PAD) // (
        1 if s.kv_unified else s.n_parallel) > model.n_ctx_train
    check_key = ("check", s.type_k, s.type_v, s.flash_attn, s.swa_full, over_trained)
    checked = model.cache.get(check_key) if not over_trained else None
    if checked is None:
        checked = check(model, s, fa)
        model.cache[check_key] = checked
    errors, warnings = checked[0], list(checked[1])
    shape = context_shape(model, s)
    placed = _placement(model, s, gpus)
    n_slots = len(gpus) + 1
    cpu = n_slots - 1

    kv_k = [0] * n_slots
    kv_v = [0] * n_slots
    if not errors:
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

    graph = cache_graph(model, s.type_k, s.type_v)
    memo = placed.compute_memo
    compute_key = (shape, fa, graph)
    compute = memo.get(compute_key)
    if compute is None:
        if len(memo) > 4096:
            memo.clear()
        compute = memo[compute_key] = compute_buffer(model, shape, fa, placed.compute_slots,
                                                     graph)
    output = model.n_vocab * s.n_parallel * 4  # logits for one token per sequence, host memory

    out: list[DeviceMemory] = []
    for i, g in enumerate(gpus):
        out.append(DeviceMemory(g.name, True, g.budget, placed.weights[i], kv_k[i], kv_v[i],
                                compute[i], 0, state[i]))
    out.append(DeviceMemory(CPU_NAME, False, cpu_budget, placed.weights[cpu], kv_k[cpu],
                            kv_v[cpu], compute[cpu], output, state[cpu]))
    n_gpu_layers = placed.n_gpu_layers
    if gpus and n_gpu_layers < len(model.layers) + 1:
        warnings.append(f"{n_gpu_layers} of {len(model.layers) + 1} layers on the GPU: "
                        "the rest run on the CPU, much slower")
    return Estimate(model, s, shape, fa, n_gpu_layers, tuple(out), tuple(warnings),
                    tuple(errors))
