"""The planner: exact choices (the estimate's own figures), each as far as the budget allows
(one step more does not fit), ranked by a speed model whose arithmetic is checked, within
its time budget."""

from __future__ import annotations

import time

import pytest

from kvgui.core.config.settings import ALL_LAYERS, Settings
from kvgui.core.devices.device_budget import DeviceBudget, cpu
from kvgui.core.memory import planner, speed
from kvgui.core.memory.estimate import estimate
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model.catalog import catalog_model

GiB = 1 << 30
GB = 1e9


@pytest.fixture(scope="module")
def llama8b():
    return catalog_model("Llama-3.1-8B-Instruct Q4_K_M")


@pytest.fixture(scope="module")
def gemma12b():
    return catalog_model("Gemma-3-12B-it Q4_K_M")


def card(gib: float, bw: float = 272 * GB) -> list[DeviceBudget]:
    return [DeviceBudget("GPU", int(gib * GiB), bandwidth=bw),
            DeviceBudget("CPU", 64 * GiB, is_gpu=False, bandwidth=40 * GB)]


def _fits(model, s, devices, memo) -> bool:
    e = estimate(model, s, devices, memo)
    return not e.refused and e.fits is not False


@pytest.mark.parametrize(("label", "gib", "ctx"), [
    ("Llama-3.1-8B-Instruct Q4_K_M", 7, 32768),  # f16 leaves layers on the CPU
    ("Gemma-3-12B-it Q4_K_M", 6, 32768),  # SWA: 5 of 6 layers keep only the window
])
def test_every_choice_fits_exactly_and_one_more_layer_does_not(label, gib, ctx) -> None:
    model = catalog_model(label)
    memo = ModelMemo(model)
    devices = card(gib)
    p = planner.plan(model, Settings(n_ctx=ctx), devices, memo=memo,
                     pairs=[("f16", "f16"), ("q8_0", "q8_0")])
    assert p.fastest is not None and p.fastest.verified
    for choice in (p.fastest, p.longest):
        assert choice is not None and choice.verified
        s = choice.settings
        exact = estimate(model, s, devices, memo)
        assert exact.fits and tuple(d.required for d in exact.devices) == choice.required
        if s.n_gpu_layers != ALL_LAYERS:  # as many layers as fit: one more does not
            assert not _fits(model, s.replace(n_gpu_layers=s.n_gpu_layers + 1), devices, memo)
    # the trained context is reachable with 64 GiB of RAM behind the card
    assert p.longest.n_ctx == model.n_ctx_train


def test_a_pair_that_fits_whole_is_all_on_the_gpu_and_faster(llama8b) -> None:
    p = planner.plan(llama8b, Settings(n_ctx=32768), card(7), pairs=[("f16", "f16"),
                                                                     ("q8_0", "q8_0")])
    f16, q8 = p.for_pair(("f16", "f16")), p.for_pair(("q8_0", "q8_0"))
    assert f16 is not None and q8 is not None
    assert q8.settings.n_gpu_layers == ALL_LAYERS and q8.cpu_layers == 0
    assert f16.cpu_layers > 0  # 4 GiB of f16 cache at 32K leaves no room for every layer
    assert q8.speed.tokens_per_s > f16.speed.tokens_per_s
    assert p.fastest.pair == ("q8_0", "q8_0")


def test_no_budget_fits_nothing(llama8b) -> None:
    devices = [DeviceBudget("GPU", 1 * GiB), cpu(1 * GiB)]
    p = planner.plan(llama8b, Settings(n_ctx=8192), devices, pairs=[("f16", "f16")])
    assert p.fastest is None and p.longest is None and p.by_pair == ((("f16", "f16"), None),)


def test_the_search_model_equals_the_estimate_on_the_gpus(llama8b, gemma12b) -> None:
    """Weights and KV per GPU as the search sums them are the estimate's, for any -ngl and
    -nkvo (the compute buffers are the representatives', then checked exactly)."""
    for model in (llama8b, gemma12b):
        memo = ModelMemo(model)
        devices = card(24)
        search = planner._Search(model, Settings(), devices, memo)
        L = len(model.layers)
        for ngl, kvo, pair in ((1, True, ("f16", "f16")), (L // 2, False, ("f16", "f16")),
                               (L // 2, True, ("q8_0", "q4_0")), (ALL_LAYERS, True,
                                                                  ("f16", "f16"))):
            pl = planner.Placement(ngl, 0, kvo)
            e = estimate(model, search.settings(pair, 10000, pl), devices, memo)
            held, _ = search.kv(pl, pair, 10000)
            assert search.weights(pl)[0] == e.devices[0].weights, (model.name, pl)
            assert held[0] == e.devices[0].kv + e.devices[0].state, (model.name, pl)
            assert sum(held) == e.kv + e.state


def test_speed_is_bytes_over_bandwidth(llama8b) -> None:
    """Every layer on one GPU: the token reads the weights less the embedding matrix (one
    row of it), plus the KV cache; the nominal speed is that over 70% of the bandwidth, with
    the two hops (input and logits) on top."""
    m = llama8b
    devices = card(24, bw=1000 * GB)
    search = planner._Search(m, Settings(), devices, ModelMemo(m))
    top = planner.Placement(ALL_LAYERS)
    sp = search.speed(top, ("f16", "f16"), 8192)
    tr = speed.traffic(m)
    gpu = sp.devices[0]
    embd = next(t for t in m.tensors if t.name == "token_embd.weight")
    assert gpu.weights == m.weight_bytes - embd.nbytes - m.other_weights
    assert gpu.kv == 8192 * 32 * 2 * 1024 * 2  # cells x layers x (K + V) x 8 heads x 128 x f16
    assert sp.hops == 2 and sp.rpc_hops == 0
    nominal = gpu.total / (1000 * GB * speed.GPU_EFFICIENCY[1]) + \
        sp.devices[1].total / (40 * GB * speed.HOST_EFFICIENCY[1]) + 2 * speed.LOCAL_HOP[1]
    assert sp.tokens_per_s == pytest.approx(1 / nominal)
    assert sp.low < sp.tokens_per_s < sp.high
    assert tr.active == 1.0 and not any(tr.experts)


def test_experts_are_read_only_for_the_active_share() -> None:
    m = catalog_model("Qwen3-30B-A3B Q4_K_M")
    tr = speed.traffic(m)
    assert tr.active == 8 / 128
    assert all(e > 10 * d for e, d in zip(tr.experts, tr.dense, strict=True))
    # every layer on the host: ~3B of ~30B parameters' bytes are read per token
    search = planner._Search(m, Settings(), card(24), ModelMemo(m))
    sp = search.speed(planner.Placement(0), ("f16", "f16"), 4096)
    assert 0.08 < sp.devices[-1].weights / m.weight_bytes < 0.2


@pytest.fixture(scope="module")
def qwen3moe():
    return catalog_model("Qwen3-30B-A3B Q4_K_M")


def test_a_moe_keeps_every_layer_on_the_gpu_and_its_experts_on_the_cpu(qwen3moe) -> None:
    """An 11 GiB budget cannot hold 17 GiB of experts: every layer stays on the GPU and the
    fewest layers' experts go to the host (--n-cpu-moe), one fewer does not fit."""
    memo = ModelMemo(qwen3moe)
    devices = card(11)
    p = planner.plan(qwen3moe, Settings(n_ctx=32768), devices, memo=memo,
                     pairs=[("q8_0", "q8_0")])
    c = p.fastest
    assert c is not None and c.verified and c.settings.n_gpu_layers == ALL_LAYERS
    k = c.settings.n_cpu_moe
    assert 0 < k < 48 and c.cpu_expert_layers == k and c.cpu_layers == 0
    assert not _fits(qwen3moe, c.settings.replace(n_cpu_moe=k - 1), devices, memo)
    # the search's weights and KV per GPU are the estimate's with experts on the host
    search = planner._Search(qwen3moe, Settings(), devices, memo)
    for pl in (planner.Placement(ALL_LAYERS, k), planner.Placement(30, 48)):
        e = estimate(qwen3moe, search.settings(("q8_0", "q8_0"), 32768, pl), devices, memo)
        assert search.weights(pl)[0] == e.devices[0].weights, pl
        assert search.kv(pl, ("q8_0", "q8_0"), 32768)[0][0] == e.devices[0].kv, pl


def test_a_full_search_of_a_48_layer_moe_is_within_50_ms(qwen3moe) -> None:
    """Context × 8 K/V pairs × -ngl × --n-cpu-moe × -nkvo for a budget it has not seen
    (a new card size: a fresh search; the scheduler's recordings of the representative
    placements are the memo's, as in the window after its first search) ≤ 50 ms."""
    memo = ModelMemo(qwen3moe)
    planner.plan(qwen3moe, Settings(n_ctx=32768), card(11), memo=memo)  # records
    times = [_timed(lambda g=g: planner.plan(qwen3moe, Settings(n_ctx=32768), card(g),
                                             memo=memo, verify=False))
             for g in (12, 10, 16)]
    assert min(times) <= 0.050, times


def _timed(f) -> float:
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def test_split_mode_none_uses_the_main_gpu_only(llama8b) -> None:
    """-sm none -mg 1: llama.cpp keeps only the main GPU; the other holds nothing, and the
    planner plans for that one GPU. A -mg past the GPUs is llama.cpp's load failure."""
    from kvgui.core.config.settings import SplitMode
    from kvgui.core.memory.findings import Code

    devices = [DeviceBudget("A", 4 * GiB), DeviceBudget("B", 24 * GiB), cpu(64 * GiB)]
    s = Settings(n_ctx=8192, split_mode=SplitMode.NONE, main_gpu=1)
    e = estimate(llama8b, s, devices)
    one = estimate(llama8b, Settings(n_ctx=8192), [devices[1], devices[2]])
    assert e.devices[0].total == 0 and e.devices[1] == one.devices[0] and e.fits
    p = planner.plan(llama8b, s, devices, pairs=[("f16", "f16")])
    assert p.fastest is not None and p.fastest.required[0] == 0
    assert p.fastest.settings.n_gpu_layers == ALL_LAYERS
    bad = estimate(llama8b, s.replace(main_gpu=2), devices)
    assert bad.refused and bad.has(Code.MAIN_GPU_INVALID)


def test_a_commands_own_overrides_are_kept_and_counted(qwen3moe) -> None:
    """-ot exps=CPU (every expert in RAM, the way many run a MoE): the planner keeps the
    rule, counts what it pins where it pins it, and places the rest."""
    memo = ModelMemo(qwen3moe)
    devices = card(8)
    s = Settings(n_ctx=16384, override_tensor=(("exps", "CPU"),))
    p = planner.plan(qwen3moe, s, devices, memo=memo, pairs=[("f16", "f16")])
    c = p.fastest
    assert c is not None and c.verified and c.settings.override_tensor == (("exps", "CPU"),)
    assert c.settings.n_gpu_layers == ALL_LAYERS  # the dense part of a 30B MoE fits 7 GiB
    search = planner._Search(qwen3moe, s, devices, memo)
    pl = planner.Placement(ALL_LAYERS)
    e = estimate(qwen3moe, search.settings(("f16", "f16"), 16384, pl), devices, memo)
    assert search.weights(pl)[0] == e.devices[0].weights
    # every expert is read from the host: its share of the token's bytes is the CPU's
    sp = search.speed(pl, ("f16", "f16"), 16384)
    assert sp.devices[-1].weights > sp.devices[0].weights
