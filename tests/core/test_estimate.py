"""The estimate's rules, on real model headers from the catalog (no llama.cpp needed).

The figures it must reproduce exactly are checked against llama.cpp itself in
test_against_llama_cpp.py; here: the arithmetic the product's story rests on, llama.cpp's
refusals surfacing before launch, padding, sliding windows, placement across devices.
"""

from __future__ import annotations

import pytest

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.devices.device_budget import DeviceBudget, cpu
from kvgui.core.gguf.reader import TensorInfo
from kvgui.core.memory.estimate import PART_KEYS, estimate
from kvgui.core.memory.fit import COMMON_CACHE_PAIRS, max_context, max_gpu_layers
from kvgui.core.model.catalog import catalog_model, find
from kvgui.core.model.info import ModelInfo
from kvgui.core.sizes import GiB, MiB


def model(label: str) -> ModelInfo:
    return catalog_model(label)


@pytest.fixture(scope="module")
def llama3() -> ModelInfo:
    return model("Llama-3.1-8B-Instruct Q4_K_M")


def test_the_8gb_32k_story(llama3: ModelInfo) -> None:
    s = Settings(n_ctx=32768)
    assert estimate(llama3, s).kv == 4 * GiB
    assert estimate(llama3, s.replace(type_k="q8_0", type_v="q8_0")).kv == int(2.125 * GiB)
    assert estimate(llama3, s.replace(type_k="q4_0", type_v="q4_0")).kv == int(1.125 * GiB)
    gpu = [DeviceBudget("RTX 4060", 8 * GiB)]
    assert estimate(llama3, s.replace(n_ctx=8192), gpu).fits is True
    assert estimate(llama3, s, gpu).fits is False
    assert estimate(llama3, s.replace(type_k="q4_0", type_v="q4_0"), gpu).fits is True


def test_description(llama3: ModelInfo) -> None:
    m = llama3
    assert (m.arch, m.n_layer, m.n_embd, m.n_head, m.n_head_kv) == ("llama", 32, 4096, 32, 8)
    assert (m.n_embd_head_k, m.n_vocab, m.n_ctx_train, m.file_type) == (128, 128256, 131072,
                                                                        "Q4_K_M")
    assert m.n_params == 8_030_261_312
    assert m.weight_bytes == sum(t.nbytes for t in find("Llama-3.1-8B-Instruct Q4_K_M").header()[1])


def test_context_padding_and_parallel_streams(llama3: ModelInfo) -> None:
    assert estimate(llama3, Settings(n_ctx=10000)).n_ctx == 10240
    est = estimate(llama3, Settings(n_ctx=12345, n_parallel=3))
    # n_ctx 12544 / 3 = 4181 -> padded per sequence to 4352, times 3 streams
    assert (est.shape.n_ctx_seq, est.n_ctx, est.shape.n_stream) == (4352, 13056, 3)
    assert est.kv == 13056 * 32 * 2 * 1024 * 2
    unified = estimate(llama3, Settings(n_ctx=12345, n_parallel=3, kv_unified=True))
    assert (unified.n_ctx, unified.shape.n_stream) == (12544, 1)


def test_batch_never_exceeds_the_context(llama3: ModelInfo) -> None:
    est = estimate(llama3, Settings(n_ctx=300, n_batch=2048, n_ubatch=512))
    # the batch is capped by the context as given, before llama.cpp pads it to 512
    assert (est.n_ctx, est.shape.n_batch, est.shape.n_ubatch) == (512, 300, 300)


def test_sliding_window_cache_is_window_plus_ubatch() -> None:
    gemma3 = model("Gemma-3-12B-it Q4_K_M")
    assert (gemma3.n_swa, gemma3.n_swa_layers, gemma3.n_layer) == (1024, 40, 48)
    est = estimate(gemma3, Settings(n_ctx=32768))
    assert est.shape.swa_cells == 1536  # pad(1024 + 512, 256)
    per_cell = 8 * 256 * 2  # 8 KV heads x 256 head size x f16
    assert est.kv_k == (8 * 32768 + 40 * 1536) * per_cell
    full = estimate(gemma3, Settings(n_ctx=32768, swa_full=True))
    assert full.kv_k == 48 * 32768 * per_cell
    gemma2 = model("Gemma-2-9B-it Q4_K_M")
    assert (gemma2.n_swa, gemma2.n_swa_layers) == (4096, 21)


def test_mla_keeps_only_k_and_needs_equal_types() -> None:
    ds = model("DeepSeek-V2-Lite-Chat Q4_K_M")
    assert ds.is_mla
    est = estimate(ds, Settings(n_ctx=4096))
    assert est.kv_v == 0 and est.kv_k == 27 * 4096 * 576 * 2
    mixed = estimate(ds, Settings(n_ctx=4096, type_k="q8_0", type_v="q4_0"))
    assert mixed.errors and "same K and V" in mixed.errors[0]


def test_recurrent_state_is_separate_from_kv() -> None:
    mamba = model("Mamba-Codestral-7B-v0.1 Q4_K_M")
    a = estimate(mamba, Settings(n_ctx=4096))
    b = estimate(mamba, Settings(n_ctx=65536, type_k="q4_0", type_v="q4_0"))
    assert a.kv == b.kv == 0
    assert a.state == b.state == 64 * (30720 + 1048576) * 4
    assert estimate(mamba, Settings(n_ctx=4096, n_parallel=2)).state == 2 * a.state


def test_quantized_v_needs_flash_attention(llama3: ModelInfo) -> None:
    est = estimate(llama3, Settings(type_v="q8_0", flash_attn=FlashAttn.OFF))
    assert est.errors and "flash attention" in est.errors[0]
    assert est.fits is False
    auto = estimate(llama3, Settings(type_v="q8_0", flash_attn=FlashAttn.AUTO))
    assert not auto.errors and auto.flash_attn
    k_only = estimate(llama3, Settings(type_k="q8_0", flash_attn=FlashAttn.OFF))
    assert not k_only.errors and not k_only.flash_attn


def _tiny_header(head: int) -> ModelInfo:
    md = {"general.architecture": "llama", "llama.block_count": 2, "llama.context_length": 2048,
          "llama.embedding_length": head * 4, "llama.attention.head_count": 4,
          "llama.attention.head_count_kv": 2, "llama.feed_forward_length": 64,
          "llama.vocab_size": 100}
    tensors = [TensorInfo("token_embd.weight", (head * 4, 100), 1, 0, head * 4 * 100 * 2)]
    return ModelInfo.from_header(md, tensors)


def test_block_size_must_divide_the_head_size() -> None:
    small = _tiny_header(16)
    est = estimate(small, Settings(type_k="q8_0", type_v="q8_0", flash_attn=FlashAttn.ON))
    assert any("block size of 32" in e and "head size 16" in e for e in est.errors)
    assert not estimate(small, Settings(type_k="bf16", type_v="f32")).errors
    assert not estimate(_tiny_header(64), Settings(type_k="q4_0", type_v="q4_0")).errors


def test_context_beyond_training_warns(llama3: ModelInfo) -> None:
    est = estimate(llama3, Settings(n_ctx=200_000))
    assert any("beyond the 131072" in w for w in est.warnings)
    assert not estimate(llama3, Settings(n_ctx=131072)).warnings


def test_unknown_architecture_warns_and_still_estimates() -> None:
    md = {"general.architecture": "brandnew", "brandnew.block_count": 4,
          "brandnew.embedding_length": 256, "brandnew.attention.head_count": 4,
          "brandnew.context_length": 4096}
    m = ModelInfo.from_header(md, [])
    assert m.warnings and "brandnew" in m.warnings[0]
    est = estimate(m, Settings(n_ctx=4096))
    assert est.kv == 4 * 4096 * 256 * 2 * 2 and est.warnings


def test_partial_offload_follows_llama_cpp_layer_order(llama3: ModelInfo) -> None:
    gpu = [DeviceBudget("GPU", 8 * GiB)]
    s = Settings(n_ctx=4096, n_gpu_layers=10)
    est = estimate(llama3, s, gpu)
    g, c = est.devices
    # -ngl 10 of 33: the output layer and the last 9 blocks (llama_model::load_tensors)
    assert est.n_gpu_layers == 10
    assert g.weights == sum(llama3.layer_weights[23:]) + llama3.output_weights
    assert c.weights == sum(llama3.layer_weights[:23]) + llama3.input_weights + \
        llama3.other_weights
    per_layer = 4096 * (1024 * 2) * 2  # cells x (8 heads x 128) x f16, K and V
    assert g.kv == 9 * per_layer and c.kv == 23 * per_layer
    no_offload = estimate(llama3, s.replace(kv_offload=False), gpu)
    assert no_offload.devices[0].kv == 0 and no_offload.devices[1].kv == 32 * per_layer
    cpu_only = estimate(llama3, s.replace(n_gpu_layers=0), gpu)
    assert cpu_only.devices[0].weights == 0


def test_tensor_split_across_two_gpus(llama3: ModelInfo) -> None:
    gpus = [DeviceBudget("A", 24 * GiB), DeviceBudget("B", 24 * GiB)]
    est = estimate(llama3, Settings(n_ctx=8192, tensor_split=(3.0, 1.0)), gpus)
    a, b, host = est.devices
    # 33 layers split 3:1 by llama.cpp's upper_bound over the cumulative ratios
    per_layer = 8192 * 1024 * 2 * 2
    assert a.kv == 25 * per_layer and b.kv == 7 * per_layer and host.kv == 0
    assert b.weights > 0 and a.weights > b.weights


def test_tied_output_is_copied_only_to_a_gpu() -> None:
    m = model("Llama-3.2-3B-Instruct Q4_K_M")
    assert m.tied_output_weights > 0
    host_only = estimate(m, Settings(n_gpu_layers=0))
    offloaded = estimate(m, Settings(), [DeviceBudget("GPU", 8 * GiB)])
    assert offloaded.weights == host_only.weights + m.tied_output_weights


def test_json_shape(llama3: ModelInfo) -> None:
    data = estimate(llama3, Settings(n_ctx=8000), [DeviceBudget("GPU", 8 * GiB), cpu(None)]
                    ).to_json()
    assert set(data) == {"model", "settings", "memory", "compute_check", "devices", "verdict",
                         "fits", "findings", "warnings", "errors"}
    assert data["verdict"] == "fits" and data["fits"] is True
    # llama is replayed, but a GPU computes here: the replay is not verified on a GPU
    assert data["compute_check"]["status"] == "replayed"
    assert set(data["model"]) == {"path", "name", "arch", "file_type", "file_bytes", "n_layer",
                                  "n_ctx_train"}
    assert data["settings"]["n_ctx"] == 8192 and data["settings"]["flash_attn"] is True
    assert {"weights", "kv_k", "kv_v", "kv", "compute", "output", "total"} <= set(data["memory"])
    assert [d["name"] for d in data["devices"]] == ["GPU", "CPU"]
    for d in data["devices"]:  # every part of the memory, by the same keys as the window's
        assert sum(d[key] for key in PART_KEYS) == d["total"]


@pytest.mark.parametrize(("k", "v"), COMMON_CACHE_PAIRS)
def test_max_context_is_the_exact_boundary(llama3: ModelInfo, k: str, v: str) -> None:
    gpu = [DeviceBudget("RTX 4060", 8 * GiB - 600 * MiB)]
    s = Settings(type_k=k, type_v=v)
    n = max_context(llama3, s, gpu)
    assert n % 256 == 0 and n > 4096
    assert estimate(llama3, s.replace(n_ctx=n), gpu).fits is True
    assert estimate(llama3, s.replace(n_ctx=n + 256), gpu).fits is False


def test_smaller_cache_types_fit_longer_contexts(llama3: ModelInfo) -> None:
    gpu = [DeviceBudget("GPU", 8 * GiB)]
    f16, q8, q4 = (max_context(llama3, Settings(type_k=t, type_v=t), gpu)
                   for t in ("f16", "q8_0", "q4_0"))
    assert f16 < q8 < q4


def test_max_gpu_layers(llama3: ModelInfo) -> None:
    s = Settings(n_ctx=8192)
    assert max_gpu_layers(llama3, s, [DeviceBudget("big", 24 * GiB)]) == -1
    n = max_gpu_layers(llama3, s, [DeviceBudget("small", 3 * GiB)])
    assert 0 < n < 33
    assert estimate(llama3, s.replace(n_gpu_layers=n), [DeviceBudget("s", 3 * GiB)]).devices[0].fits
    assert not estimate(llama3, s.replace(n_gpu_layers=n + 1),
                        [DeviceBudget("s", 3 * GiB)]).devices[0].fits
    assert max_gpu_layers(llama3, s, [DeviceBudget("tiny", 100 * MiB)]) == 0
