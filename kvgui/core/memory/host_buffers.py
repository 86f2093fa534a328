"""Which host buffer type llama.cpp puts each CPU weight in, and what that costs in RAM.

llama.cpp keeps a weight in the first buffer type of the CPU list that supports the op the
weight feeds (src/llama-model-loader.cpp select_weight_buft / weight_buft_supported; the list
is src/llama-model.cpp make_cpu_buft_list: a GPU's host buffer when there are GPUs, then the
CPU backend's extra buffer types, then plain CPU). The probe is the weight's op with a
contiguous F32 batch of 512; each extra buffer type answers through its ``supports_op``:

- AMX (ggml-cpu/amx/amx.cpp): MUL_MAT only; weight type Q4_0/Q4_1/Q8_0 (ne0 % 32),
  Q4_K/Q5_K/Q6_K/IQ4_XS (ne0 % 256) or F16 (ne0 % 16); ne1 % 32. Its alloc size
  (amx/mmq.cpp ggml_backend_amx_get_alloc_size) is ne1 x the packed row: Q8_0 adds 4 bytes a
  block, Q4_K/Q5_K 4, IQ4_XS 2 — and it counts only ne0 x ne1, whatever ne2 is.
- CPU_REPACK (ggml-cpu/repack.cpp): MUL_MAT with a 2-D weight or MUL_MAT_ID with a 3-D one,
  when ggml_repack_get_optimal_repack_type has a kernel for the type on this build's
  features (x86: Q4_0, Q4_K, IQ4_NL, MXFP4 with AVX2, Q2_K with AVX-512; ne1 % 8). Same size.
- everything else (embeddings' GET_ROWS, norms, biases, f32): the plain CPU buffer.

With mmap, the plain CPU buffer is the file itself: llama.cpp maps the byte range from the
first to the last weight of that buffer (llama_model_loader::get_mapping_range) and reports
that range as CPU_Mapped. Weights in an extra buffer type are copied out of the mapping into
their own allocation, so their file pages inside the range are read once at load and then
only sit in the page cache (``mapped_idle``): the OS can drop them, but right after loading
they are resident next to their copies. llama.cpp's no_alloc dry run never maps (it forces
LLAMA_LOAD_MODE_NONE), so only a real load shows the mapped figure.

Pure core: no llama_cpp, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from kvgui.core.devices.hardware.cpu import AMX, REPACK, HostCpu
from kvgui.core.gguf import ggml_types
from kvgui.core.gguf.reader import TensorInfo
from kvgui.core.memory import findings as fnd
from kvgui.core.memory.findings import Code, Finding
from kvgui.core.memory.tensor_ops import TENSOR_OPS

CPU = "CPU"  # ggml_backend_cpu_buffer_type
CPU_MAPPED = "CPU_Mapped"  # the same, on the mmap'd file (buffer_from_host_ptr)
GPU_HOST = "GPU_Host"  # a GPU backend's pinned host buffer type (CUDA_Host, Vulkan_Host, ...)

TENSOR_ALIGNMENT = 32  # ggml-impl.h: every CPU-side buffer type's alignment
AMX_TILE_N = 16  # ggml-cpu/amx/common.h
# AMX: weight types with kernels, the ne0 multiple supports_op asks for, and the bytes its
# packing adds per block (amx/mmq.cpp get_row_size: do_compensate for Q8_0, the K-quants'
# and IQ4_XS's extra scales). F16 has no packing (alloc = ggml_nbytes).
_AMX_TYPES: dict[str, tuple[int, int]] = {
    "q4_0": (32, 0), "q4_1": (32, 0), "q8_0": (32, 4),
    "q4_k": (256, 4), "q5_k": (256, 4), "q6_k": (256, 0), "iq4_xs": (256, 2),
    "f16": (16, 0),
}
_AMX_PACKED = frozenset(_AMX_TYPES) - {"f16"}  # amx/common.h qtype_has_amx_kernels

_BLK = re.compile(r"(^|\.)blk\.\d+\.")
_INDEX = re.compile(r"\.\d+(?=\.|$)")
_SUFFIXES = frozenset({"weight", "bias", "scale", "input_scale", "lora_a", "lora_b"})


def _pad(n: int, to: int = TENSOR_ALIGNMENT) -> int:
    return -(-n // to) * to


# A weight as the GGUF header gives it: name, shape (ne0 first), type_id, offset, nbytes.
Weight = TensorInfo


def ne(w: Weight, i: int) -> int:
    return w.shape[i] if i < len(w.shape) else 1


def n_dims(w: Weight) -> int:
    """ggml_n_dims: trailing dimensions of 1 do not count."""
    n = len(w.shape)
    while n > 1 and w.shape[n - 1] == 1:
        n -= 1
    return max(n, 1)


def weight_op(name: str) -> str:
    """The ggml op llama.cpp probes a weight with (create_tensor's buft_for_tensor): the
    tensor kind's op from LLM_TENSOR_INFOS, ADD / ADD_ID for biases; "NONE" if unknown."""
    base = _BLK.sub(r"\1", name)
    suffix = ""
    head, dot, last = base.rpartition(".")
    if dot and last in _SUFFIXES:
        base, suffix = head, last
    info = TENSOR_OPS.get(base) or TENSOR_OPS.get(_INDEX.sub(".*", base))
    if info is None:
        return "NONE"
    op = info[1]
    if suffix == "bias":
        return "ADD_ID" if op == "MUL_MAT_ID" else "ADD"
    return op


def amx_supports(w: Weight, op: str) -> bool:
    """amx.cpp extra_buffer_type::supports_op for the loader's probe (contiguous F32 input)."""
    if op != "MUL_MAT":
        return False
    rule = _AMX_TYPES.get(w.type_name)
    if rule is None:
        return False
    return ne(w, 1) % (AMX_TILE_N * 2) == 0 and ne(w, 0) % rule[0] == 0


def amx_alloc_size(w: Weight) -> int:
    """ggml_backend_amx_get_alloc_size: ne1 packed rows of ne0 (ne2, ne3 are not counted)."""
    if w.type_name not in _AMX_PACKED:
        return w.nbytes
    t = ggml_types.by_id(w.type_id)
    blocks = ne(w, 0) // t.block_size
    return ne(w, 1) * blocks * (t.type_size + _AMX_TYPES[w.type_name][1])


def repack_kernel(w: Weight, host: HostCpu) -> bool:
    """repack.cpp ggml_repack_get_optimal_repack_type is not null (x86 and Arm rules)."""
    t, ne1 = w.type_name, ne(w, 1)
    neon = host.has("NEON")
    dot = neon and host.has("DOTPROD")
    i8mm = neon and host.has("MATMUL_INT8")
    avx2 = host.has("AVX2")
    if t == "q4_0":
        sve = host.has("SVE") and host.has("MATMUL_INT8") and host.sve_cnt == 32
        return ((avx2 or sve) and ne1 % 8 == 0) or ((i8mm or dot or host.has("VXE"))
                                                    and ne1 % 4 == 0)
    if t == "q4_k":
        return (avx2 or i8mm or dot) and ne1 % 8 == 0
    if t == "q2_k":
        return host.has("AVX512") and ne1 % 8 == 0
    if t in ("q5_k", "q6_k"):
        return (i8mm or dot) and ne1 % 8 == 0
    if t in ("iq4_nl", "mxfp4"):
        return (avx2 and ne1 % 8 == 0) or (dot and ne1 % 4 == 0)
    if t in ("q8_0", "q1_0"):
        return (i8mm or dot) and ne1 % 4 == 0
    return False


def repack_supports(w: Weight, op: str, host: HostCpu) -> bool:
    """repack.cpp extra_buffer_type::supports_op for the loader's probe."""
    if (op == "MUL_MAT" and n_dims(w) == 2) or (op == "MUL_MAT_ID" and n_dims(w) == 3):
        return repack_kernel(w, host)
    return False


def cpu_buffer_list(host: HostCpu, *, gpu_host: bool) -> tuple[str, ...]:
    """make_cpu_buft_list: a GPU host buffer (when GPUs are used), the extra types, CPU."""
    return ((GPU_HOST,) if gpu_host else ()) + host.extra_buffers + (CPU,)


def select(w: Weight, op: str, buffers: Sequence[str], host: HostCpu) -> str:
    """select_weight_buft: the first buffer type that supports the weight's op.

    A GPU's host buffer is taken to support every weight (CUDA, HIP, Vulkan and SYCL accept
    the ops weights feed); extra types kvgui does not model are passed over."""
    if op != "NONE":
        for b in buffers:
            if b == GPU_HOST:
                return b
            if b == AMX and amx_supports(w, op):
                return b
            if b == REPACK and repack_supports(w, op, host):
                return b
    return CPU


def alloc_size(w: Weight, buffer: str) -> int:
    """ggml_backend_buft_get_alloc_size, padded to the buffer's alignment as
    ggml_backend_alloc_ctx_tensors_from_buft does for each tensor."""
    return _pad(amx_alloc_size(w) if buffer == AMX else w.nbytes)


class Placed(NamedTuple):
    """One weight in one host buffer type: ``nbytes`` as allocated there."""

    weight: Weight
    buffer: str
    nbytes: int


@dataclass(frozen=True)
class HostWeights:
    """The weights on the host, per llama.cpp buffer type, for a load mode.

    ``buffers``: bytes per buffer type name as a real load reports them ("CPU_Mapped" is the
    mapped file range; the others are allocations). ``mapped_idle``: bytes of that range that
    hold no weight the CPU buffer uses (copies made into other buffers, file padding).
    """

    placed: tuple[Placed, ...]
    buffers: tuple[tuple[str, int], ...]
    mapped: int
    mapped_idle: int

    @property
    def total(self) -> int:
        return sum(n for _, n in self.buffers)

    @property
    def allocated(self) -> int:
        return self.total - self.mapped

    def buffer(self, name: str) -> int:
        return dict(self.buffers).get(name, 0)


def place(weights: Iterable[Weight], host: HostCpu, *, gpu_host: bool, mmap: bool,
          tied_output: Weight | None = None, output_first: bool = False) -> HostWeights:
    """Place the host's weights. ``tied_output``: token_embd also serving as the output head
    on the CPU; llama.cpp probes it again as MUL_MAT (TENSOR_DUPLICATED) and makes a second
    copy when that lands in another buffer type than the embedding's -- or always, for the
    architectures that create the head first (``output_first``, layer_rules)."""
    buffers = cpu_buffer_list(host, gpu_host=gpu_host)
    placed: list[Placed] = []
    for w in weights:
        b = select(w, weight_op(w.name), buffers, host)
        if mmap and b == GPU_HOST:  # "avoid using a host buffer when using mmap"
            b = CPU
        placed.append(Placed(w, b, alloc_size(w, b)))
    if tied_output is not None:
        b_in = next((p.buffer for p in placed if p.weight.name == tied_output.name), CPU)
        b_out = select(tied_output, "MUL_MAT", buffers, host)
        if mmap and b_out == GPU_HOST:
            b_out = CPU
        if b_out != b_in or output_first:
            placed.append(Placed(tied_output, b_out, alloc_size(tied_output, b_out)))
    sums: dict[str, int] = {}
    mapped = idle = 0
    in_cpu = [p for p in placed if p.buffer == CPU]
    if mmap and in_cpu:
        first = min(p.weight.offset for p in in_cpu)
        last = max(p.weight.offset + p.weight.nbytes for p in in_cpu)
        mapped = last - first
        # two copies of one tensor (a tied head) map the same file bytes once
        idle = mapped - sum({p.weight.offset: p.weight.nbytes for p in in_cpu}.values())
        sums[CPU_MAPPED] = mapped
    for p in placed:
        if p.buffer == CPU and mmap:
            continue
        sums[p.buffer] = sums.get(p.buffer, 0) + p.nbytes
    order = (GPU_HOST, *host.extra_buffers, CPU, CPU_MAPPED)
    rows = tuple((b, sums[b]) for b in order if b in sums)
    return HostWeights(tuple(placed), rows, mapped, idle)


# --- what llama.cpp at this commit does with some placements -------------------------------

_NO_REPACK = "run llama.cpp with -nr (--no-repack), which turns the extra CPU buffer types off"


def findings(host_weights: HostWeights, host: HostCpu, *, flash_attn: bool) -> list[Finding]:
    """What the user must know about the host's weights: llama.cpp aborting or computing
    wrongly with a placement, buffer types kvgui does not follow, mapped pages held twice.

    MLA models keep attn_k_b / attn_v_b as 3-D {.., .., n_head} weights. The loader's probe
    passes AMX's supports_op (it checks only ne0/ne1), but in the graph attn_k_b multiplies a
    permuted (non-contiguous) q_nope, and with flash attention attn_v_b multiplies the
    permuted attention output (llama-graph.cpp build_attn_mha). AMX refuses non-contiguous
    inputs, and the CPU backend then answers with the extra type's verdict (ggml-cpu.cpp
    ggml_backend_cpu_device_supports_op), so no backend takes the node:
    ``GGML_ASSERT(*cur_backend_id != -1)`` in ggml-backend.cpp's scheduler (pass 4).
    """
    out: list[Finding] = []
    in_amx = [p.weight for p in host_weights.placed if p.buffer == AMX]
    k_b = next((w for w in in_amx if weight_base(w.name) == "attn_k_b"), None)
    v_b = next((w for w in in_amx if weight_base(w.name) == "attn_v_b"), None)
    if k_b is not None or (v_b is not None and flash_attn):
        w = k_b if k_b is not None else v_b
        assert w is not None
        why = "its input is permuted" if k_b is not None else \
            "with flash attention its input is permuted"
        out.append(fnd.refusal(
            Code.AMX_MLA_ABORTS,
            f"llama.cpp aborts on this CPU: it puts {weight_base(w.name)} ({w.type_name}, "
            f"3-D) in the AMX buffer, but {why} and neither AMX nor the CPU backend will "
            f"multiply it (GGML_ASSERT(*cur_backend_id != -1) in ggml-backend.cpp); "
            f"{_NO_REPACK}" + ("" if k_b is not None else ", or turn flash attention off"),
            field=None if k_b is not None else "flash_attn"))
    if v_b is not None and not flash_attn:
        out.append(fnd.warning(
            Code.AMX_3D_PACKING,
            f"llama.cpp packs {weight_base(v_b.name)} ({v_b.type_name}, {ne(v_b, 2)} slices) "
            "for AMX as if it had one slice (ggml_backend_amx_get_alloc_size counts ne0 x ne1"
            f" only): by its source the other slices are never packed, so expect wrong "
            f"output; {_NO_REPACK}"))
    if host.unmodeled:
        out.append(fnd.note(
            Code.HOST_BUFFERS_UNMODELED,
            f"llama.cpp's CPU backend has {', '.join(host.unmodeled)} buffers, which kvgui "
            "does not model: the host weights may differ from its figures"))
    copied = host_weights.allocated - host_weights.buffer(GPU_HOST)
    if host_weights.mapped_idle >= 2**20 and copied:
        extra = "/".join(b for b, _ in host_weights.buffers if b in (AMX, REPACK))
        out.append(fnd.note(
            Code.HOST_MAPPED_COPIES,
            f"with mmap, llama.cpp maps {_mib(host_weights.mapped)} of the file for the CPU "
            f"weights, {_mib(host_weights.mapped_idle)} of it the file pages of weights it "
            f"copies into {extra} buffers ({_mib(copied)}): right after loading both are in "
            "RAM; the copies' pages are then left to the page cache (the OS can drop them). "
            "-lm none maps nothing"))
    return out


def weight_base(name: str) -> str:
    """"blk.3.attn_k_b.weight" -> "attn_k_b"."""
    base = _BLK.sub(r"\1", name)
    head, dot, last = base.rpartition(".")
    return head if dot and last in _SUFFIXES else base


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"
