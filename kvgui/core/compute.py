"""The compute buffer: the peak of llama.cpp's worst-case graph, per backend.

llama.cpp reserves its compute buffers by building the prompt-processing graph for one full
ubatch (n_ubatch tokens, n_ubatch outputs, the whole KV cache in view) and letting ggml-alloc
place every intermediate tensor; the buffer is the high-water mark. ggml-alloc frees a tensor
after its last use and lets element-wise ops, softmax and norms reuse their input in place,
so the peak is reached at one of three points of a layer: the attention scores, the
feed-forward activations, or the output logits. Each is modelled from the tensors that are
alive there (src/llama-graph.cpp build_attn / build_ffn / build_moe_ffn, src/llama-context.cpp
graph_reserve). The figures are checked against llama.cpp's own reserve (no_alloc dry run) in
tests/core/test_against_llama_cpp.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvgui.core.estimate import ContextShape
    from kvgui.core.model import ModelInfo

F32 = 4
F16 = 2
KQ_MASK_PAD = 64  # GGML_KQ_MASK_PAD: the mask's token dimension is padded for flash attention
# ggml-alloc aligns every tensor it places (the CPU buffer type's alignment is 64 bytes
# (TENSOR_ALIGNMENT); CUDA's is 128).
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
    # by the output head every layer is done: the mask is free, the residual stream is not
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


@dataclass(frozen=True)
class SlotLayers:
    """What one device computes: some layers (with full or sliding attention), the output."""

    holds_layers: bool
    holds_output: bool
    full_attention: bool
    swa: bool


def compute_buffer(model: ModelInfo, shape: ContextShape, fa: bool,
                   slots: Sequence[SlotLayers]) -> list[int]:
    """Compute buffer bytes per device: the GPUs in order, then the CPU (last)."""
    result = [0] * len(slots)
    n_outputs = min(shape.n_ubatch, shape.n_batch)
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
