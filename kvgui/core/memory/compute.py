"""The compute buffer: the peak of llama.cpp's worst-case graph, per backend.

llama.cpp reserves its compute buffers by building the prompt-processing graph for one full
ubatch (n_ubatch tokens, n_ubatch outputs, the whole KV cache in view) and letting ggml-alloc
place every intermediate tensor; the buffer is the allocator's high-water mark, which depends
on where each tensor lands, not only on what is alive at once (the logits are placed after
whatever the last layer left behind, so a hole too small for them costs its size again).

For the architectures with a builder (kvgui/core/memory/builders: llama/mistral, qwen2, qwen3,
qwen3moe, gemma2, gemma3, gpt-oss, deepseek2, lfm2) the graph is rebuilt as llama.cpp builds it
and ggml-alloc replayed over it (reserve.py, graph/): on the CPU alone, llama.cpp's figure to
the byte (tests/core/test_against_llama_cpp.py, test_reserve_graphs.py); with GPUs, over the
scheduler's split graph, one buffer per device (checked against llama-fit-params on RPC
devices to its 0.01 MiB in test_multi_device_rpc.py; CUDA's own rules are from its source,
not measured). Other architectures use a model of the three points where a layer peaks: the
attention scores, the feed-forward activations, or the output logits (the stage model).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvgui.core.memory import reserve
from kvgui.core.memory.graph.alloc import CPU_ALIGN, CUDA_ALIGN
from kvgui.core.memory.graph.sched import GGML_SCHED_MAX_COPIES
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.memory.reserve import CacheKinds, cache_kinds

if TYPE_CHECKING:
    from kvgui.core.memory.estimate import ContextShape
    from kvgui.core.model.info import ModelInfo

log = logging.getLogger(__name__)

F16_CACHE = CacheKinds("f16", "f16")

__all__ = ["CPU_ALIGN", "CUDA_ALIGN", "CacheKinds", "SlotLayers", "cache_graph",
           "compute_buffer", "simulated_peak", "simulates"]

F32 = 4
F16 = 2

KQ_MASK_PAD = 64  # GGML_KQ_MASK_PAD: the mask's token dimension is padded for flash attention
# the stage model rounds every tensor to this (ggml-alloc aligns to the buffer type's
# alignment: 32 bytes on the CPU, 128 on CUDA; see CPU_ALIGN, CUDA_ALIGN)
ALIGN = 64


def _al(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _stage_peaks(model: ModelInfo, shape: ContextShape, fa: bool, n_kv: int,
                 n_outputs: int) -> tuple[int, int, int]:
    """Bytes alive at the attention scores, the feed-forward activations and the logits."""
    t = shape.n_ubatch
    n_embd = model.n_embd
    n_head = max(model.n_head, 1)
    n_head_kv = max(model.n_head_kv, 1)
    hk, hv = model.n_embd_head_k, model.n_embd_head_v

    # alive through the whole graph: the residual stream and the normed input of the layer
    resid = 2 * _al(F32 * n_embd * t)
    if fa:
        mask = _al(F16 * n_kv * (-(-t // KQ_MASK_PAD) * KQ_MASK_PAD))
        q = _al(F32 * hk * n_head * t)
        out = _al(F32 * hv * n_head * t)
        attn = q + _al(F32 * hk * n_head_kv * t) + _al(F32 * hv * n_head_kv * t) + out
    else:
        mask = _al(F32 * n_kv * t)
        kq = _al(F32 * n_kv * t * n_head)
        kqv = _al(F32 * hv * n_head * t)  # and its permuted, contiguous copy
        attn = _al(F32 * hk * n_head * t) + kq + 2 * kqv
    if model.n_expert and model.n_ff_exp:
        used = max(model.n_expert_used, 1)
        ffn = (_al(F32 * model.n_expert * t) * 2  # router logits + probabilities
               + 2 * _al(F32 * model.n_ff_exp * used * t)  # gate and up, per chosen expert
               + _al(F32 * n_embd * used * t))  # down, before the weighted sum
    else:
        ffn = 2 * _al(F32 * model.n_ff * t)
    if model.ssm_d_inner:
        # Mamba: in_proj (z, xBC, dt), the conv input and output, the scan's y and gated y,
        # and the state read, written and copied back (src/models/mamba-base.cpp)
        d_inner = model.ssm_d_inner
        conv_ch = d_inner + 2 * model.ssm_n_group * model.ssm_d_state
        in_proj = d_inner + conv_ch + model.ssm_dt_rank
        ssm = _al(F32 * t * (in_proj + 2 * conv_ch + 2 * d_inner)) + 3 * _al(
            F32 * model.n_embd_s * shape.n_stream)  # (the residual stream is in the fit)
    else:
        ssm = 0
    # by the output head every layer is done: the mask is free, the residual stream is not
    output = _al(F32 * model.n_vocab * n_outputs) + resid
    return attn + resid + mask, max(ffn + resid + mask, ssm), output


def simulates(model: ModelInfo, memo: ModelMemo | None = None) -> bool:
    """Whether the compute buffer of ``model`` is replayed through ggml-alloc over its real
    graph (builders/: an architecture with a builder, every tensor of the file read)."""
    return reserve.supports(model, memo)


def cache_graph(model: ModelInfo, type_k: str, type_v: str) -> CacheKinds:
    """What the cache types change in the graph (the key its recordings are shared by; the
    exact quantized types for a graph that copies the cache, reserve.cache_kinds)."""
    return cache_kinds(model, type_k, type_v)


def simulated_peak(model: ModelInfo, shape: ContextShape, fa: bool,
                   cache: CacheKinds = F16_CACHE,
                   alignment: int = CPU_ALIGN, memo: ModelMemo | None = None) -> int:
    """The compute buffer of the whole model on one backend, from a replay of ggml-alloc."""
    return reserve.peak(model, shape, fa, cache, alignment, memo)


@dataclass(frozen=True)
class SlotLayers:
    """What one device computes: some layers (with full or sliding attention), the output."""

    holds_layers: bool
    holds_output: bool
    full_attention: bool
    swa: bool


@dataclass(frozen=True)
class Offload:
    """Where llama.cpp puts the layers (llama_model::load_tensors): the GPU of each layer (-1:
    the CPU), the output layer's, how many GPUs, and the KV cache on the GPUs or not (-nkvo).
    ``overrides``: tensor buffer overrides (-ot, --n-cpu-moe) as (regex, GPU or -1).
    ``extra_weights``: the host's weights in CPU extra buffer types (CPU_REPACK, AMX)."""

    layer_device: tuple[int, ...]
    output_device: int
    n_gpus: int
    kv_offload: bool = True
    overrides: tuple[tuple[str, int], ...] = ()
    extra_weights: frozenset[str] = frozenset()
    # overrides were given, even if none matches (llama_model::has_tensor_overrides)
    overridden: bool = False
    # per GPU: 0 for a local device, else the alignment of an RPC server's device
    rpc_alignment: tuple[int, ...] = ()

    def with_kv_offload(self, kv_offload: bool) -> Offload:
        return dataclasses.replace(self, kv_offload=kv_offload)

    def is_rpc(self, gpu: int) -> bool:
        return gpu < len(self.rpc_alignment) and self.rpc_alignment[gpu] > 0

    @functools.cached_property
    def layout(self) -> reserve.Layout:
        """The scheduler's view: local devices with CUDA's rules (other GPU kinds are taken
        alike), RPC servers' devices with the RPC backend's, the CPU last with its compute
        buffer in the first device's pinned host memory when it has one (a local GPU; an RPC
        device has none: llama_context's "host buffer of the first device"); llama.cpp's
        backend hints applied (an allocating reserve)."""
        local_first = self.n_gpus > 0 and not self.is_rpc(0)
        host = reserve.Buft("CUDA_Host", host=True) if local_first else reserve.CPU_BUFT
        backends = tuple(
            reserve.rpc_backend(i, alignment=self.rpc_alignment[i]) if self.is_rpc(i)
            else reserve.cuda_backend(i) for i in range(self.n_gpus))
        return self.layout_with((*backends, reserve.cpu_backend(host)), pins=True)

    def layout_with(self, backends: tuple[reserve.Backend, ...], pins: bool) -> reserve.Layout:
        """The scheduler's view with these backends (the GPUs in order, the CPU last).
        Pipeline parallelism (4 input copies) when several GPUs hold every layer and the
        output, the KV cache is offloaded and no tensor is overridden, as llama_context
        enables it (every device kvgui models has async compute and events)."""
        cpu = self.n_gpus
        layers = tuple(cpu if d < 0 else d for d in self.layer_device)
        output = cpu if self.output_device < 0 else self.output_device
        full = output != cpu and all(b != cpu for b in layers)
        overrides = tuple((p, cpu if d < 0 else d) for p, d in self.overrides)
        parallel = self.n_gpus > 1 and full and self.kv_offload and not overrides \
            and not self.overridden
        return reserve.Layout(backends, layers, output, self.kv_offload,
                              GGML_SCHED_MAX_COPIES if parallel else 1, full, pins,
                              overrides, self.extra_weights)


def compute_buffer(model: ModelInfo, shape: ContextShape, fa: bool,
                   slots: Sequence[SlotLayers],
                   cache: CacheKinds | None = None,
                   offload: Offload | None = None,
                   memo: ModelMemo | None = None) -> list[int]:
    """Compute buffer bytes per device: the GPUs in order, then the CPU (last).

    ``cache``: cache_graph() of the cache types; None when unknown: the largest of the
    quantized / not quantized cases (f16 and quantized caches). With ``offload`` (where the
    layers are) and a model whose graph kvgui rebuilds, the scheduler's split graph is
    replayed per device; otherwise the stage model gives each device's peak. ``memo``: the
    caller's memo for this model (memo.py): the graph is built and recorded once in it.
    """
    memo = ModelMemo(model) if memo is None else memo.for_model(model)
    cases = [cache] if cache is not None else [
        CacheKinds(k, v) for k in ("f16", "quantized") for v in ("f16", "quantized")]
    if simulates(model, memo):
        try:
            if offload is None or offload.n_gpus == 0:
                cpu_only = all(not (s.holds_layers or s.holds_output) for s in slots[:-1])
                if cpu_only:
                    peak = max(simulated_peak(model, shape, fa, c, CPU_ALIGN, memo)
                               for c in cases)
                    return [0] * (len(slots) - 1) + [peak]
            else:
                layout = offload.layout
                per_case = [reserve.peaks(model, shape, fa, c, layout, memo) for c in cases]
                return [max(col) for col in zip(*per_case, strict=True)]
        except reserve.UnsupportedGraph as exc:  # (settings llama.cpp refuses, mostly)
            log.info("compute buffer from the stage model: %s", exc)
    return _stage_buffer(model, shape, fa, slots)


def depends_on_cache_types(model: ModelInfo, shape: ContextShape, fa: bool,
                           cache: CacheKinds, offload: Offload | None,
                           memo: ModelMemo) -> bool:
    """Whether compute_buffer() for ``cache`` holds for its exact quantized types only (the
    scheduler copies a quantized cache between devices, reserve.cache_kinds), not for every
    type of its kind. Asked after compute_buffer()."""
    if cache.exact is None or offload is None or offload.n_gpus == 0 \
            or not simulates(model, memo):
        return False
    return reserve.copies_quantized_cache(model, shape, fa, cache, offload.layout, memo)


def _stage_buffer(model: ModelInfo, shape: ContextShape, fa: bool,
                  slots: Sequence[SlotLayers]) -> list[int]:
    """The stage model per device, for architectures without a builder."""
    result = [0] * len(slots)
    n_outputs = shape.n_outputs or min(shape.n_ubatch, shape.n_batch)
    for i, slot in enumerate(slots):
        is_cpu = i == len(slots) - 1
        if not slot.holds_layers and not slot.holds_output:
            if is_cpu:
                # the host still embeds the tokens and builds the inputs for the GPUs
                result[i] = _al(F32 * model.n_embd * shape.n_ubatch) + _al(
                    F32 * shape.n_ctx_seq * shape.n_ubatch)
            continue
        n_kv = shape.n_ctx_seq if slot.full_attention or not slot.swa else shape.swa_cells
        attn, ffn, output = _stage_peaks(model, shape, fa, n_kv, n_outputs)
        peaks = [ffn]  # (and the recurrent scan, for Mamba layers)
        if slot.full_attention or slot.swa:
            peaks.append(attn)
        if slot.holds_output:
            peaks.append(output)
        result[i] = max(peaks)
    return result
