"""Host buffer types for CPU weights (host_buffers.py), on CPUs with and without AMX: pure
core, real catalog headers. llama.cpp itself checks these figures in test_against_llama_cpp
(the dry run, -lm none) and tests/runtime/test_host_real_load.py (real loads, mmap)."""

from __future__ import annotations

import pytest

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.devices.device_budget import DeviceBudget, cpu
from kvgui.core.devices.hardware import cpu as hostcpu
from kvgui.core.devices.hardware.cpu import PRESETS, HostCpu
from kvgui.core.gguf import ggml_types
from kvgui.core.gguf.reader import TensorInfo
from kvgui.core.memory import host_buffers as hb
from kvgui.core.memory.estimate import estimate
from kvgui.core.memory.findings import Code
from kvgui.core.model.catalog import find
from kvgui.core.model.info import ModelInfo
from kvgui.core.sizes import GiB

AMX, AVX2, NONE = PRESETS["amx"], PRESETS["avx2"], PRESETS["none"]


def model(label: str) -> ModelInfo:
    metadata, tensors, file_bytes = find(label).header()
    return ModelInfo.from_header(metadata, tensors, file_bytes=file_bytes)


def tensor(name: str, shape: tuple[int, ...], type_name: str, offset: int = 0) -> TensorInfo:
    t = ggml_types.by_name(type_name)
    return TensorInfo(name, shape, t.id, offset, ggml_types.tensor_bytes(t.id, shape))


def on(host: HostCpu) -> list[DeviceBudget]:
    return [cpu(None, host)]


def test_ops_come_from_llama_cpps_tensor_table() -> None:
    assert hb.weight_op("blk.7.attn_q.weight") == "MUL_MAT"
    assert hb.weight_op("blk.7.ffn_up_exps.weight") == "MUL_MAT_ID"
    assert hb.weight_op("blk.7.ffn_up_exps.bias") == "ADD_ID"
    assert hb.weight_op("blk.7.attn_q.bias") == "ADD"
    assert hb.weight_op("token_embd.weight") == "GET_ROWS"
    assert hb.weight_op("output.weight") == "MUL_MAT"
    assert hb.weight_op("blk.0.attn_norm.weight") == "MUL"
    assert hb.weight_op("dec.blk.3.attn_q.weight") == "MUL_MAT"
    assert hb.weight_op("something.unknown.weight") == "NONE"


@pytest.mark.parametrize(("type_name", "ne0", "per_block"), [
    ("q4_k", 4096, 148), ("q5_k", 4096, 180), ("q8_0", 4096, 38), ("iq4_xs", 4096, 138),
    ("q6_k", 4096, 210), ("q4_0", 4096, 18), ("q4_1", 4096, 20)])
def test_amx_packs_rows_with_its_extra_scales(type_name: str, ne0: int, per_block: int) -> None:
    w = tensor("blk.0.attn_q.weight", (ne0, 1024), type_name)
    block = ggml_types.by_name(type_name).block_size
    assert hb.amx_supports(w, "MUL_MAT")
    assert hb.amx_alloc_size(w) == 1024 * (ne0 // block) * per_block


def test_amx_supports_op_conditions() -> None:
    assert hb.amx_supports(tensor("x", (4096, 1024), "f16"), "MUL_MAT")
    assert hb.amx_alloc_size(tensor("x", (4096, 1024), "f16")) == 4096 * 1024 * 2
    assert not hb.amx_supports(tensor("x", (4096, 1000), "q4_k"), "MUL_MAT")  # ne1 % 32
    assert hb.amx_supports(tensor("x", (4128, 1024), "q8_0"), "MUL_MAT")  # ne0 % 32 is enough
    assert not hb.amx_supports(tensor("x", (128, 1024), "q4_k"), "MUL_MAT")  # ne0 % 256
    assert not hb.amx_supports(tensor("x", (4096, 1024), "q5_0"), "MUL_MAT")  # no kernel
    assert not hb.amx_supports(tensor("x", (4096, 1024), "f32"), "MUL_MAT")
    assert not hb.amx_supports(tensor("x", (4096, 1024), "q4_k"), "GET_ROWS")
    assert not hb.amx_supports(tensor("x", (4096, 1024, 8), "q4_k"), "MUL_MAT_ID")
    # a 3-D MUL_MAT weight passes, and its alloc size counts one slice (llama.cpp's sizing)
    v_b = tensor("blk.0.attn_v_b.weight", (512, 128, 16), "q4_k")
    assert hb.amx_supports(v_b, "MUL_MAT")
    assert hb.amx_alloc_size(v_b) == 128 * 2 * 148 < v_b.nbytes


def test_repack_kernels_follow_the_builds_features() -> None:
    q4_0 = tensor("blk.0.attn_q.weight", (4096, 1028), "q4_0")  # ne1 % 4, not % 8
    assert not hb.repack_supports(q4_0, "MUL_MAT", AVX2)
    assert hb.repack_supports(q4_0, "MUL_MAT", PRESETS["arm-dotprod"])
    q4_k = tensor("blk.0.attn_q.weight", (4096, 1024), "q4_k")
    assert hb.repack_supports(q4_k, "MUL_MAT", AVX2)
    q6_k = tensor("blk.0.attn_v.weight", (4096, 1024), "q6_k")
    assert not hb.repack_supports(q6_k, "MUL_MAT", AVX2)
    assert hb.repack_supports(q6_k, "MUL_MAT", PRESETS["arm-i8mm"])
    q2_k = tensor("blk.0.attn_q.weight", (4096, 1024), "q2_k")
    assert not hb.repack_supports(q2_k, "MUL_MAT", AVX2)
    assert hb.repack_supports(q2_k, "MUL_MAT", PRESETS["avx512"])
    experts = tensor("blk.1.ffn_up_exps.weight", (2048, 1408, 64), "q4_k")
    assert hb.repack_supports(experts, "MUL_MAT_ID", AVX2)
    assert not hb.repack_supports(experts, "MUL_MAT", AVX2)  # 3-D MUL_MAT: no
    assert not hb.repack_supports(q4_k, "MUL_MAT", NONE)


def test_without_amx_the_weights_are_the_files_tensors() -> None:
    # on a CPU without AMX, CPU_REPACK takes the Q4_K matrices at their file size: the host
    # total is what the previous (non-AMX) CI machine's llama.cpp gave, 4912898304 bytes
    m = model("Llama-3.1-8B-Instruct Q4_K_M")
    est = estimate(m, Settings(mmap=False), on(AVX2))
    repacked = [t for t in m.tensors if hb.weight_op(t.name) == "MUL_MAT"
                and t.type_name == "q4_k"]
    assert dict(est.host_buffers) == {
        "CPU_REPACK": sum(t.nbytes for t in repacked),
        "CPU": sum(t.nbytes for t in m.tensors) - sum(t.nbytes for t in repacked)}
    assert est.weights == m.weight_bytes == 4912898304
    assert estimate(m, Settings(mmap=False), on(NONE)).host_buffers == (("CPU", 4912898304),)


def test_with_amx_the_k_quants_grow() -> None:
    m = model("Llama-3.1-8B-Instruct Q4_K_M")
    est = estimate(m, Settings(mmap=False), on(AMX))
    amx = dict(est.host_buffers)["AMX"]
    q4_k = sum(t.nbytes for t in m.tensors
               if t.type_name == "q4_k" and t.name != "token_embd.weight")
    assert amx > q4_k
    assert est.weights - m.weight_bytes == q4_k // 144 * 4  # 4 bytes more per Q4_K block
    assert est.weights == 5006221568  # llama.cpp's dry run on an AMX build (test_against_...)


def test_mmap_maps_the_files_range_and_copies_the_rest() -> None:
    m = model("Llama-3.1-8B-Instruct Q4_K_M")
    none = estimate(m, Settings(), on(NONE)).devices[-1]
    # no extra buffer: the range is the tensors themselves (and GGUF padding between them)
    assert none.mapped == none.weights and none.mapped_idle < 2**20
    amx = estimate(m, Settings(), on(AMX))
    host = amx.devices[-1]
    unmapped = estimate(m, Settings(mmap=False), on(AMX))
    assert host.weights == host.mapped + dict(unmapped.host_buffers)["AMX"]
    assert host.mapped - host.mapped_idle == dict(unmapped.host_buffers)["CPU"]
    assert host.required == unmapped.devices[-1].total
    assert amx.has(Code.HOST_MAPPED_COPIES) and not amx.refused
    assert not estimate(m, Settings(), on(NONE)).has(Code.HOST_MAPPED_COPIES)


def test_a_gpu_host_buffer_comes_before_amx() -> None:
    m = model("Llama-3.1-8B-Instruct Q4_K_M")
    s = Settings(n_gpu_layers=10, mmap=False)
    est = estimate(m, s, [DeviceBudget("GPU", 8 * GiB), cpu(None, AMX)])
    assert [b for b, _ in est.host_buffers] == ["GPU_Host"]
    mapped = estimate(m, s.replace(mmap=True), [DeviceBudget("GPU", 8 * GiB), cpu(None, AMX)])
    assert [b for b, _ in mapped.host_buffers] == ["CPU_Mapped"]


def test_deepseek_v2_on_amx_is_refused_with_the_reason() -> None:
    m = model("DeepSeek-V2-Lite-Chat Q4_K_M")
    fa = estimate(m, Settings(flash_attn=FlashAttn.ON), on(AMX))
    assert [f.code for f in fa.refusals] == [Code.AMX_MLA_ABORTS]
    assert "attn_v_b" in fa.errors[0] and "-nr" in fa.errors[0]
    assert "GGML_ASSERT(*cur_backend_id != -1)" in fa.errors[0]
    auto = estimate(m, Settings(), on(AMX))  # auto resolves to on: the same abort
    assert auto.errors == fa.errors
    off = estimate(m, Settings(flash_attn=FlashAttn.OFF), on(AMX))
    assert not off.errors and off.has(Code.AMX_3D_PACKING)
    for host in (AVX2, NONE, AMX.without_extra_buffers()):
        assert not estimate(m, Settings(flash_attn=FlashAttn.ON), on(host)).errors
    # attn_v_b offloaded to a GPU: not the CPU's problem
    gpu = estimate(m, Settings(flash_attn=FlashAttn.ON),
                   [DeviceBudget("GPU", 24 * GiB), cpu(None, AMX)])
    assert not gpu.errors


def test_attn_k_b_in_amx_aborts_even_without_flash_attention() -> None:
    k_b = tensor("blk.0.attn_k_b.weight", (128, 512, 16), "q8_0")
    placed = hb.place([k_b], AMX, gpu_host=False, mmap=False)
    found = hb.findings(placed, AMX, flash_attn=False)
    assert [f.code for f in found if f.is_refusal] == [Code.AMX_MLA_ABORTS]
    assert "attn_k_b" in found[0].message


def test_unmodeled_extra_buffers_are_said() -> None:
    m = model("Llama-3.1-8B-Instruct Q4_K_M")
    kleidi = HostCpu(("KLEIDIAI", "CPU_REPACK"), frozenset({"NEON", "DOTPROD"}))
    est = estimate(m, Settings(), on(kleidi))
    assert est.has(Code.HOST_BUFFERS_UNMODELED) and "KLEIDIAI" in next(
        f.message for f in est.findings if f.code is Code.HOST_BUFFERS_UNMODELED)


def test_host_cpu_from_flags_and_from_the_build() -> None:
    text = "processor\t: 0\nflags\t\t: fpu avx avx2 f16c fma avx512f avx512_vnni amx_int8\n"
    flags = hostcpu.parse_cpuinfo(text)
    assert {"avx2", "amx_int8"} <= flags
    native = hostcpu.native_build(flags, "x86_64")
    assert native.extra_buffers == ("AMX", "CPU_REPACK") and native.has("AVX512")
    plain = hostcpu.native_build({"avx", "avx2", "fma", "f16c"}, "x86_64")
    assert plain.extra_buffers == ("CPU_REPACK",) and not plain.amx
    arm = hostcpu.native_build(hostcpu.parse_cpuinfo("Features\t: fp asimd asimddp i8mm\n"),
                               "aarch64")
    assert arm.has("NEON") and arm.has("DOTPROD") and arm.has("MATMUL_INT8")
    built = hostcpu.from_backend(["AMX", "CPU_REPACK"], {"AVX2": "1", "AMX_INT8": "1",
                                                      "SVE_CNT": "0"}, version="0.3.36")
    assert built.amx and built.has("AVX2") and "0.3.36" in built.source
    with pytest.raises(ValueError, match="one of"):
        hostcpu.preset("pentium")
