"""The compute buffer: the peak of llama.cpp's worst-case graph, per backend.

llama.cpp reserves its compute buffers by building the prompt-processing graph for one full
ubatch (n_ubatch tokens, n_ubatch outputs, the whole KV cache in view) and letting ggml-alloc
place every intermediate tensor; the buffer is the allocator's high-water mark, which depends
on where each tensor lands, not only on what is alive at once (the logits are placed after
whatever the last layer left behind, so a hole too small for them costs its size again).

For the architectures compute_graph rebuilds (llama/mistral, qwen2, qwen3, qwen3moe, gemma2,
gemma3, gpt-oss, deepseek2-lite with MLA, lfm2) the graph is replayed through a copy of
ggml-alloc (ggml_alloc): llama.cpp's figure to the byte, on one backend. Other architectures,
and layers split across devices, use a model of the three points where a layer peaks: the
attention scores, the feed-forward activations, or the output logits. Both are checked
against llama.cpp's own reserve (no_alloc dry run) in tests/core/test_against_llama_cpp.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvgui.core.memory.compute_graph import (
    F16,
    F32,
    CacheGraph,
    cache_graph,
    dense_graph,
    scale,
    simulates,
)
from kvgui.core.memory.ggml_alloc import CPU_ALIGN, CUDA_ALIGN, Program, record, replay

if TYPE_CHECKING:
    from kvgui.core.memory.estimate import ContextShape
    from kvgui.core.model.info import ModelInfo

__all__ = ["CPU_ALIGN", "CUDA_ALIGN", "CacheGraph", "SlotLayers", "cache_graph",
           "compute_buffer", "simulated_peak", "simulates"]

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


def _program(model: ModelInfo, fa: bool, cache: CacheGraph) -> Program:
    """The allocator's operations for the model's graph (memoized per model)."""
    key = ("galloc", fa, cache)
    found = model.cache.get(key)
    if found is None:
        graph, sizes = dense_graph(model, model.n_layer, fa, cache)
        found = model.cache[key] = record(graph, sizes)
    assert isinstance(found, Program)
    return found


def simulated_peak(model: ModelInfo, shape: ContextShape, fa: bool,
                   cache: CacheGraph = (False, False, False, False),
                   alignment: int = CPU_ALIGN) -> int:
    """The compute buffer of the whole model on one backend, from a replay of ggml-alloc."""
    # graph_reserve: n_tokens is a multiple of n_seq_max (n_seq, where the shape has it)
    n_seqs = max(int(getattr(shape, "n_seq", 0)), shape.n_stream, 1)
    n_outputs = shape.n_outputs or min(shape.n_ubatch, shape.n_batch)
    n_tokens = -(-shape.n_ubatch // n_seqs) * n_seqs  # graph_reserve: a multiple of n_seqs
    key = ("galloc-peak", fa, cache, n_tokens, shape.n_ctx_seq, shape.swa_cells, shape.n_stream,
           n_outputs, alignment)
    found = model.cache.get(key)
    if found is None:
        sizes = scale(n_tokens, shape.n_ctx_seq, shape.swa_cells, n_outputs, shape.n_stream,
                      n_seqs)
        found = model.cache[key] = replay(_program(model, fa, cache), sizes, alignment)
    return int(found)


@dataclass(frozen=True)
class SlotLayers:
    """What one device computes: some layers (with full or sliding attention), the output."""

    holds_layers: bool
    holds_output: bool
    full_attention: bool
    swa: bool


def compute_buffer(model: ModelInfo, shape: ContextShape, fa: bool,
                   slots: Sequence[SlotLayers],
                   cache: CacheGraph | None = None) -> list[int]:
    """Compute buffer bytes per device: the GPUs in order, then the CPU (last).

    ``cache``: cache_graph() of the cache types; None when unknown: the largest of the
    quantized / not quantized cases (f16 and quantized caches).
    """
    result = [0] * len(slots)
    n_outputs = shape.n_outputs or min(shape.n_ubatch, shape.n_batch)
    computing = [i for i, s in enumerate(slots) if s.holds_layers or s.holds_output]
    alone = len(computing) == 1 and slots[computing[0]].holds_layers \
        and slots[computing[0]].holds_output and simulates(model)
    cases = [cache] if cache is not None else [
        (k, v, False, False) for k in (False, True) for v in (False, True)]

    def replayed(alignment: int) -> int:
        return max(simulated_peak(model, shape, fa, c, alignment) for c in cases)

    for i, slot in enumerate(slots):
        is_cpu = i == len(slots) - 1
        if not slot.holds_layers and not slot.holds_output:
            if is_cpu:
                # the host still embeds the tokens and builds the inputs for the GPUs
                result[i] = _al(F32 * model.n_embd * shape.n_ubatch) + _al(
                    F32 * shape.n_ctx_seq * shape.n_ubatch)
            continue
        if alone and is_cpu:
            result[i] = replayed(CPU_ALIGN)
            continue
        n_kv = shape.n_ctx_seq if slot.full_attention or not slot.swa else shape.swa_cells
        attn, ffn, output = _stage_peaks(model, shape, fa, n_kv, n_outputs)
        peaks = [ffn]  # (and the recurrent scan, for Mamba layers)
        if slot.full_attention or slot.swa:
            peaks.append(attn)
        if slot.holds_output:
            peaks.append(output)
        if alone:
            # one GPU computes everything: the same allocator runs over (nearly) the same
            # graph with CUDA's alignment; never below the stage model (not verified on CUDA)
            peaks.append(replayed(CUDA_ALIGN))
        result[i] = max(peaks)
    return result
