"""Every architecture family people run, against the bundled llama.cpp itself.

For each family beyond the first ones (tests/core/test_against_llama_cpp.py has those), a
header-faithful sparse model built from a published config (kvgui.testing.arch_fixtures) is
dry-run by llama.cpp (no_alloc, one child per model, all settings of
truth_table.default_matrix: f16 / q8_0 / q4_0, flash attention on and off, a padded
context, -np 4 with and without -kvu, --swa-full, -ub 1024). Padded context, KV cache +
recurrent state and weights must equal llama.cpp's exact memory breakdown to the byte; the
compute buffer must be exact where kvgui replays the graph and otherwise stay within the
error kvgui shows for that family (kvgui/core/memory/verification.py).

The fixtures are BF16: no weight of it lands in an AMX or repack CPU buffer, so weights
compare byte for byte on any machine (catalog mixes such as Q4_K_M get AMX and CPU_REPACK
buffers, which memory/host_buffers.py follows: test_against_llama_cpp, test_host_buffers).

The layer-rule tests at the end need no llama.cpp: they pin what layer_rules.py reads out
of each family's header.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.memory.compute import simulates
from kvgui.core.memory.estimate import estimate
from kvgui.core.memory.verification import EXACT, MEASURED, UNVERIFIED, compute_check
from kvgui.core.model import layer_rules
from kvgui.core.model.archspec import ModelSpec, build_header
from kvgui.core.model.info import ModelInfo, load_model
from kvgui.testing.arch_fixtures import Fixture, fixtures
from kvgui.testing.truth_table import Row, compare, default_matrix, describe

# The families this module dry-runs by default: one model for every way the layer rules
# differ (hybrids and recurrent state, sliding / chunked / shared caches, NextN blocks, MLA
# with a q LoRA). Each costs a model load (~0.5 s) and the suite has ~100 s for everything,
# so the families whose layers are plain KV transformer layers (and a second model of a
# family) run in benchmarks/accuracy.py's full matrix -- or here with
# KVGUI_TEST_ALL_FAMILIES=1.
_BY_KEY = {f.key: f for f in fixtures()}
DEFAULT_FAMILIES = [
    "falcon-h1", "jamba", "nemotron_h", "granitehybrid", "qwen3next",  # hybrids
    "nemotron_h_moe",  # a hybrid's MoE blocks (sigmoid router, ungated experts, shexp)
    "mamba", "rwkv7",  # recurrent
    "gemma3n", "gemma4", "llama4", "exaone4", "olmo2:Olmo-3-7B-Instruct",  # SWA / shared
    "glm4moe",  # a NextN block
    "deepseek2:DeepSeek-R1-0528",  # MLA with the q LoRA
]
FAMILIES = list(_BY_KEY) if os.environ.get("KVGUI_TEST_ALL_FAMILIES") == "1" else \
    DEFAULT_FAMILIES
# Settings the bundled llama.cpp aborts on (a crash, not a refusal kvgui could predict):
# phi3 with a quantized cache in split streams overflows the graph's hash set
# (ggml-impl.h:330 "fatal error" while reserving; reported, not modelled).
KNOWN_ABORTS = {
    ("phi3", "-c 8192 -ctk q4_0 -ctv q4_0 -fa on -np 4"): "ggml-impl.h:330",
}
# the compute figure may exceed its recorded bound by this much (rounding of the table)
_SLACK = 0.005


def _bf16(fx: Fixture) -> ModelSpec:
    return ModelSpec(fx.spec.name, fx.spec.arch, "BF16", fx.spec.hp)


@pytest.fixture(scope="session")
def truth(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    """key -> Future of (model, rows), for the families the session collected; two dry-run
    children at a time (each waits on llama.cpp, so two overlap on two cores)."""
    pytest.importorskip("gguf")
    pytest.importorskip("llama_cpp")
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    folder = tmp_path_factory.mktemp("families")
    keys = sorted({item.callspec.params["key"] for item in request.session.items
                   if getattr(item, "originalname", "") == "test_family_against_llama_cpp"
                   and hasattr(item, "callspec")})

    def run(key: str) -> tuple[ModelInfo, list[Row]]:
        name = re.sub(r"\W", "_", key) + ".gguf"
        path = write_sparse_gguf(_bf16(_BY_KEY[key]), folder / name)
        model = load_model(path)
        return model, compare(path, default_matrix(), model)

    pool = ThreadPoolExecutor(max_workers=2)
    try:
        yield {k: pool.submit(run, k) for k in keys}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.llama
@pytest.mark.slow
@pytest.mark.parametrize("key", FAMILIES)
def test_family_against_llama_cpp(truth: dict[str, Future], key: str) -> None:
    model, rows = truth[key].result()
    check = compute_check(model)
    checked = 0
    for r in rows:
        what = f"{key} ({_BY_KEY[key].spec.name}) {describe(r.settings)}"
        if r.refused:
            known = KNOWN_ABORTS.get((model.arch, describe(r.settings)))
            assert r.estimate.errors or (known and known in r.refused), \
                f"llama.cpp refused but kvgui did not: {r.refused} ({what})"
            continue
        assert not r.estimate.errors, f"kvgui refused what llama.cpp accepts: " \
            f"{r.estimate.errors} ({what})"
        assert r.estimate.n_ctx == r.n_ctx, what
        assert r.estimate.kv + r.estimate.state == r.context, \
            f"KV+state {r.estimate.kv + r.estimate.state} != llama.cpp {r.context} ({what})"
        assert r.weights_extra == 0, f"a BF16 weight landed in an extra CPU buffer ({what})"
        assert r.estimate.weights == r.weights, \
            f"weights {r.estimate.weights} != llama.cpp {r.weights} ({what})"
        if check.status == EXACT:
            assert r.estimate.compute == r.compute, f"replayed compute ({what})"
        else:
            assert abs(r.compute_error) <= check.error + _SLACK, \
                f"compute off by {r.compute_error:+.1%}, beyond the ±{check.percent}% kvgui " \
                f"shows ({what})"
        checked += 1
    assert checked >= len(rows) - 1, f"llama.cpp refused most of the matrix for {key}"


# --- the layer rules, read from each family's header (no llama.cpp needed) -----------------


def _info(key: str) -> ModelInfo:
    return _info_of(_BY_KEY[key].spec)


def _info_of(spec: ModelSpec) -> ModelInfo:
    from kvgui.core.gguf.reader import TensorInfo

    h = build_header(spec, vocab=False)
    tensors = [TensorInfo(t.name, t.shape, t.type_id, off, t.nbytes)
               for t, off in zip(h.tensors, h.offsets(), strict=True)]
    return ModelInfo.from_header(h.metadata, tensors, file_bytes=h.file_bytes)


def test_falcon_h1_keeps_kv_and_ssm_state_in_every_layer() -> None:
    m = _info("falcon-h1")
    assert all(layer.has_kv and layer.recurrent for layer in m.layers)
    assert m.has_kv_cache and m.is_hybrid
    est = estimate(m, Settings(n_ctx=8192, flash_attn=FlashAttn.ON))
    assert est.kv > 0 and est.state > 0
    assert not any("keeps no KV cache" in w for w in est.warnings)
    # the block-size refusal applies (it did not while kvgui thought falcon-h1 kept no KV):
    # with 80-wide heads a q8_0 cache (32-blocks) is refused
    fx = _BY_KEY["falcon-h1"]
    odd = ModelSpec(fx.spec.name, fx.spec.arch, fx.spec.quant, {**fx.spec.hp, "head_dim": 80})
    refused = estimate(_info_of(odd), Settings(n_ctx=8192, type_k="q8_0", type_v="q8_0"))
    assert any("block size" in e for e in refused.errors)


def test_nemotron_h_mlp_layers_keep_neither_kv_nor_state() -> None:
    m = _info("nemotron_h")
    pattern = _BY_KEY["nemotron_h"].spec.hp["hybrid_override_pattern"]
    kinds = {"M": "recurrent", "*": "attention", "-": "mlp"}
    for il, c in enumerate(pattern):
        layer = m.layers[il]
        assert (layer.recurrent, layer.has_kv, layer.stateless) == {
            "recurrent": (True, False, False), "attention": (False, True, False),
            "mlp": (False, False, True)}[kinds[c]], il
    assert (sum(c == "M" for c in pattern), sum(c == "*" for c in pattern),
            sum(c == "-" for c in pattern)) == (27, 4, 25)
    est = estimate(m, Settings(n_ctx=4096))
    assert est.state == 27 * (m.n_embd_r + m.n_embd_s) * 4  # only the Mamba layers


def test_nemotron_h_moe_blocks_keep_neither_kv_nor_state_and_route_experts() -> None:
    """Nemotron 3 Nano: the 'E' blocks are marked by feed_forward_length (n_ff != 0), so
    they are neither recurrent nor cached, as nemotron_h's MLP blocks; they hold the
    experts."""
    m = _info("nemotron_h_moe")
    pattern = _BY_KEY["nemotron_h_moe"].spec.hp["hybrid_override_pattern"]
    for il, c in enumerate(pattern):
        layer = m.layers[il]
        assert (layer.recurrent, layer.has_kv, layer.stateless, layer.experts) == {
            "M": (True, False, False, False), "*": (False, True, False, False),
            "E": (False, False, True, True)}[c], il
    assert [il for il, c in enumerate(pattern) if c == "*"] == [5, 12, 19, 26, 33, 42]
    assert sum(c == "M" for c in pattern) == sum(c == "E" for c in pattern) == 23
    est = estimate(m, Settings(n_ctx=4096))
    assert est.state == 23 * (m.n_embd_r + m.n_embd_s) * 4  # only the Mamba layers
    assert compute_check(m).status == EXACT and simulates(m)


def test_hybrids_take_their_attention_layers_from_their_own_keys() -> None:
    jamba = _info("jamba")
    assert [il for il, layer in enumerate(jamba.layers) if layer.has_kv] == [4, 12, 20, 28]
    qwen = _info("qwen3next")  # every 4th layer attends; the MTP block keeps no cache
    assert [il for il, layer in enumerate(qwen.layers) if layer.has_kv] == \
        list(range(3, 48, 4))
    assert qwen.n_layer == 48 and len(qwen.layers) == 49 and not qwen.layers[48].recurrent
    granite = _info("granitehybrid")
    assert [il for il, layer in enumerate(granite.layers) if layer.has_kv] == [5, 15, 25, 35]


def test_sliding_and_shared_layers() -> None:
    exaone = _info("exaone4")  # LLLG
    assert [layer.swa for layer in exaone.layers[:8]] == [True, True, True, False] * 2
    assert exaone.n_swa == 4096
    olmo3, olmo2 = _info("olmo2:Olmo-3-7B-Instruct"), _info("olmo2")
    assert olmo3.n_swa == 4096 and olmo3.n_swa_layers == 24 and olmo2.n_swa == 0
    gemma3n = _info("gemma3n")  # layers 20.. reuse the cache of the first 20
    assert sum(layer.has_kv for layer in gemma3n.layers) == 20
    gemma4 = _info("gemma4")  # full layers: 2 KV heads of 512, sliding: 8 of 256
    full = gemma4.layers[5]
    assert (full.swa, full.n_embd_k, full.n_embd_v) == (False, 2 * 512, 2 * 512)
    assert (gemma4.layers[0].n_embd_k, gemma4.n_swa) == (8 * 256, 1024)
    llama4 = _info("llama4")  # chunked attention of 8192 on 3 of every 4 layers
    assert llama4.swa_chunked and llama4.n_swa == 8192 and llama4.n_swa_layers == 36


def test_layers_with_experts_and_nextn_blocks() -> None:
    assert sum(layer.experts for layer in _info("llama4").layers) == 48
    assert [il for il, layer in enumerate(_info("jamba").layers) if layer.experts] == \
        list(range(1, 32, 2))
    v3 = _info("deepseek2:DeepSeek-R1-0528")
    assert sum(layer.experts for layer in v3.layers) == 58 and v3.is_mla
    air = _info("glm4moe")  # the NextN block is in the file but neither loaded nor cached
    assert air.n_layer == 46 and len(air.layers) == 47
    assert not air.layers[46].has_kv and air.layer_weights[46] == 0


def test_compute_check_says_what_is_verified(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvgui.core.memory import builders, verification

    assert compute_check(_info("llama")).status == EXACT
    assert compute_check(_info("jamba")).status == EXACT and simulates(_info("jamba"))
    # a family without a builder shows the error measured for it (jamba's, before its builder)
    monkeypatch.delitem(builders.BUILDERS, "jamba")
    monkeypatch.setitem(verification.MEASURED_ERROR, "jamba", (-0.4378, 0.0195))
    jamba = compute_check(_info("jamba"))
    assert jamba.status == MEASURED and jamba.label == f"±{jamba.percent}%, not verified for jamba"
    est = estimate(_info("jamba"), Settings())
    assert est.to_json()["compute_check"]["status"] == MEASURED
    unknown = ModelInfo.from_header({"general.architecture": "newarch",
                                     "newarch.block_count": 2, "newarch.embedding_length": 64,
                                     "newarch.attention.head_count": 4}, [])
    assert compute_check(unknown).status == UNVERIFIED
    assert any("not one kvgui has checked" in w for w in unknown.warnings)
    assert simulates(_info("llama")) and not simulates(_info("jamba"))


# --- fam-moe ---
MOE_BUILT = ["glm4moe", "llama4", "granitemoe", "ernie4_5-moe", "hunyuan-moe", "dots1",
             "bailingmoe2", "nemotron_h_moe"]


@pytest.mark.parametrize("key", MOE_BUILT)
def test_moe_families_are_replayed_exactly(key: str) -> None:
    """Each MoE family's builder reads every tensor of its file but the NextN block's (the
    main graph never runs it), so its compute figure is the replay, shown as exact; the
    dry-run tests (test_family_against_llama_cpp) hold the bytes."""
    from kvgui.core.memory import builders, reserve

    model = _info(key)
    assert compute_check(model).status == EXACT, key
    params = reserve.params_for(reserve.GraphKey(True, reserve.CacheKinds("f16", "f16"), 1,
                                                 False, frozenset()))
    _, graph = builders.build(model, params)
    nextn = {name for name, _, _ in model.tensor_table
             if name.startswith("blk.") and int(name.split(".")[1]) >= model.n_layer}
    assert bool(nextn) == (key in ("glm4moe", "bailingmoe2"))  # the fixtures with one
    assert not nextn & graph.model.used  # the NextN block is not in the main graph
# --- end fam-moe ---


def test_every_rule_names_a_llama_cpp_source_file() -> None:
    # the llama-cpp-python sdist's vendor/llama.cpp (DEVELOPERS.md), where one is unpacked
    src = Path(os.environ.get("KVGUI_LLAMA_CPP_SRC",
                              "/work/src/llama_cpp_python-0.3.36/vendor/llama.cpp")) / "src"
    for arch, rule in layer_rules.RULES.items():
        files = re.findall(r"models/[\w.-]+\.cpp|llama-[\w-]+\.cpp", rule.source)
        assert files, arch
        if src.is_dir():
            for f in files:
                assert (src / f).is_file(), (arch, f)


# --- fam-dense ---
# The dense families with a builder of their own (builders/<arch>.py, checked node for node
# and byte for byte by tests/core/test_reserve_graphs.py): each reads every tensor of its
# file, so its compute figure is the replay, not the stage model's measured range.
DENSE_FAMILIES = [
    "phi3", "phi3:phi-4", "mistral3", "exaone4", "olmo2", "olmo2:Olmo-3-7B-Instruct",
    "smollm3", "cohere2", "command-r", "granite", "glm4", "starcoder2", "internlm2", "minicpm",
    "ernie4_5", "hunyuan-dense", "seed_oss", "apertus",
]


@pytest.mark.parametrize("key", DENSE_FAMILIES)
def test_dense_families_replay_their_own_graph(key: str) -> None:
    from kvgui.core.memory.verification import MEASURED_ERROR

    model = _info(key)
    assert simulates(model), f"{key}: the builder leaves a tensor of the file unread"
    assert compute_check(model).status == EXACT
    assert model.arch not in MEASURED_ERROR, f"{model.arch} is exact: drop its measured range"


@pytest.mark.llama
def test_a_graph_past_llamas_node_budget_is_refused_as_llama_cpp_aborts(tmp_path) -> None:
    """Phi-4 with a quantized cache, flash attention and -np 4: the reserve graph has more
    nodes + leafs (2058) than the scheduler's hash set holds for a 243-tensor model (2053),
    and the bundled llama.cpp aborts (ggml-impl.h: "fatal error"). The estimate says so,
    with the fix; the neighbouring settings that llama.cpp runs are not refused."""
    from kvgui.core.memory.findings import Code
    from kvgui.runtime.dryrun import DryRunError, dry_run_many
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    spec = _bf16(next(f for f in fixtures() if f.key == "phi3:phi-4"))
    path = write_sparse_gguf(spec, tmp_path / "phi-4.gguf")
    model = load_model(path)
    fa = FlashAttn.ON
    aborts = Settings(type_k="q8_0", type_v="q8_0", flash_attn=fa, n_parallel=4)
    runs = [Settings(type_k="q8_0", type_v="q8_0", flash_attn=fa),
            Settings(flash_attn=fa, n_parallel=4)]
    est = estimate(model, aborts)
    (why,) = [f for f in est.refusals if f.code is Code.LLAMA_ABORTS]
    assert "2,058 tensors" in why.message and "2,053" in why.message
    assert dict(why.fix) == {"n_parallel": 1}
    assert estimate(model, aborts.replace(**why.fix)).refusals == ()
    for s in runs:
        assert not any(f.code is Code.LLAMA_ABORTS for f in estimate(model, s).findings)
    theirs = dry_run_many(path, [aborts, *runs])
    assert isinstance(theirs[0], DryRunError)
    assert not any(isinstance(r, DryRunError) for r in theirs[1:])
