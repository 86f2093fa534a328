"""The scheduler over the rebuilt graphs: one device is the plain graph; several are split
where llama.cpp splits them (checked against llama-fit-params in test_multi_device_rpc.py).
"""

from __future__ import annotations

from kvgui.core.config.settings import Settings
from kvgui.core.memory import builders, compute, reserve
from kvgui.core.memory.compute import CacheKinds
from kvgui.core.memory.estimate import context_shape
from kvgui.core.memory.graph.sched import Decisions, split_graph
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model.catalog import find
from kvgui.core.model.info import ModelInfo
from kvgui.testing.reserve_check import rpc_layout

F16 = CacheKinds("f16", "f16")
Q = CacheKinds("quantized", "quantized")


def model(label: str) -> ModelInfo:
    metadata, tensors, file_bytes = find(label).header()
    return ModelInfo.from_header(metadata, tensors, file_bytes=file_bytes)


def test_one_cpu_backend_is_the_plain_graph() -> None:
    for label in ("Llama-3.1-8B-Instruct Q4_K_M", "Gemma-3-12B-it Q4_K_M", "LFM2-1.2B Q8_0"):
        m = model(label)
        cpu = reserve.Layout((reserve.cpu_backend(),), (0,) * len(m.layers), 0)
        for s in (Settings(n_ctx=4096), Settings(n_ctx=20000, n_parallel=3)):
            shape = context_shape(m, s)
            for fa, kinds in ((True, F16), (True, Q), (False, F16)):
                assert reserve.peaks(m, shape, fa, kinds, cpu) == \
                    [reserve.peak(m, shape, fa, kinds, compute.CPU_ALIGN)], (label, s, fa)


def _split(m: ModelInfo, layout: reserve.Layout, fa: bool = True) -> tuple[list[int], int]:
    key = reserve.GraphKey(fa, F16, 1, False, frozenset())
    result, _ = builders.build(m, reserve.params_for(key))
    split = split_graph(result.gf, layout.backends, layout.buft_of,
                        Decisions({"U": 512, "O": 512, "K": 4096, "W": 4096}))
    return [b for b, _ in split.splits], len(split.nodes) - len(result.gf.nodes)


def test_splits_follow_the_weights() -> None:
    m = model("Llama-3.1-8B-Instruct Q4_K_M")
    # all layers on one GPU: the token lookup on the CPU (its weights), the rest on the GPU
    backends, added = _split(m, rpc_layout(m, Settings(), 1))
    assert backends == [1, 0]
    # what the GPU reads from the host is copied once (a dependency and the copy): the looked
    # up embeddings and 5 inputs (positions, K and V indices, the mask, the output ids)
    assert added == 2 * 6
    # -ngl 20 of 33 over two devices: CPU layers first, then each device's share
    backends, _ = _split(m, rpc_layout(m, Settings(n_gpu_layers=20), 2))
    assert backends == [2, 0, 1]
    # -nkvo: each layer's KV store and attention run on the CPU, by the cache in host memory:
    # the lookup, then per layer the GPU and the CPU, then the GPU's output head
    backends, _ = _split(m, rpc_layout(m, Settings(kv_offload=False), 1))
    assert backends == [1] + [0, 1] * 32 + [0]


def test_pipeline_parallelism_keeps_every_input_copy() -> None:
    """Several GPUs with every layer: 4 copies of each input, never freed (more memory)."""
    m = model("Llama-3.1-8B-Instruct Q4_K_M")
    shape = context_shape(m, Settings(n_ctx=8192))
    two = rpc_layout(m, Settings(), 2)
    assert two.n_copies == 4
    partial = rpc_layout(m, Settings(n_gpu_layers=32), 2)  # (the output on the CPU)
    assert partial.n_copies == 1
    single = reserve.Layout(two.backends, two.layer_backend, two.output_backend)
    with_copies = reserve.peaks(m, shape, True, F16, two)
    without = reserve.peaks(m, shape, True, F16, single)
    assert all(a >= b for a, b in zip(with_copies, without, strict=True))
    assert with_copies[-1] > without[-1]  # the host keeps 4 of each input


def test_offload_op_moves_host_weight_ops_to_the_gpu_from_a_batch_of_32() -> None:
    """CUDA's offload_op: an op whose weights are in host memory runs on the GPU when its
    batch is 32 or more; the comparison is recorded, and a smaller ubatch decides anew."""
    m = model("Llama-3.2-3B-Instruct Q4_K_M")
    layout = compute.Offload(tuple([-1] * 14 + [0] * (len(m.layers) - 14)), 0, 1).layout
    key = reserve.GraphKey(True, F16, 1, False, frozenset())
    on_cpu = {}
    for u in (512, 16):
        result, _ = builders.build(m, reserve.params_for(key))
        decisions = Decisions({"U": u, "O": u, "K": 4096, "W": 4096})
        split = split_graph(result.gf, layout.backends, layout.buft_of, decisions)
        on_cpu[u] = sum(1 for t, b in zip(split.nodes, split.node_backend, strict=True)
                        if t.op == "MUL_MAT" and b == layout.cpu)
        assert decisions.made and decisions.hold_for({"U": u}) and \
            not decisions.hold_for({"U": 528 - u})
    assert on_cpu == {512: 0, 16: 14 * 7}  # (q, k, v, o, gate, up, down per CPU layer)
    shape = context_shape(m, Settings(n_ctx=4096, n_ubatch=16, n_batch=16))
    memo = ModelMemo(m)
    reserve.peaks(m, context_shape(m, Settings(n_ctx=4096)), True, F16, layout, memo)
    reserve.peaks(m, shape, True, F16, layout, memo)
    assert sum(len(v) for v in reserve.recordings(memo).splits.values()) == 2


def test_estimate_uses_the_split_graph_with_gpus() -> None:
    from kvgui.core.devices.device_budget import DeviceBudget
    from kvgui.core.memory.estimate import estimate
    from kvgui.core.sizes import GiB

    m = model("Qwen3-8B Q4_K_M")
    gpus = [DeviceBudget("A", 24 * GiB), DeviceBudget("B", 24 * GiB)]
    s = Settings(n_ctx=16384, type_k="q8_0", type_v="q8_0")
    est = estimate(m, s, gpus)
    offload = compute.Offload(*estimate_placement(m, s, gpus))
    assert [d.compute for d in est.devices] == reserve.peaks(
        m, context_shape(m, s), True, Q, offload.layout)
    nkvo = estimate(m, s.replace(kv_offload=False), gpus)  # attention on the host
    assert [d.compute for d in nkvo.devices] == reserve.peaks(
        m, context_shape(m, s), True, Q, offload.with_kv_offload(False).layout)
    assert offload.layout.n_copies == 4 and offload.with_kv_offload(False).layout.n_copies == 1


def estimate_placement(m: ModelInfo, s: Settings, gpus: list) -> tuple:  # type: ignore[type-arg]
    from kvgui.core.memory import estimate as est

    layer_dev, out_dev, _ = est._layer_devices(m, s, gpus)
    return tuple(layer_dev), out_dev, len(gpus)
