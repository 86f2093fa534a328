"""The estimate against llama.cpp itself: the bundled llama.cpp loads each header-faithful
sparse model with no_alloc and reports what it would allocate for each setting.

KV cache, recurrent state, weights and the padded context must match to the byte (llama.cpp's
memory breakdown gives exact bytes; the K/V split is checked at the logged MiB precision);
the CPU compute buffer to the byte where kvgui replays ggml-alloc over the model's graph
(compute.simulates), within the listed tolerance where it uses the stage model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.devices.device_budget import cpu
from kvgui.core.memory.compute import simulates
from kvgui.core.memory.estimate import estimate
from kvgui.core.memory.findings import Code
from kvgui.core.model.info import load_model

pytestmark = [pytest.mark.llama, pytest.mark.slow]

ON, OFF = FlashAttn.ON, FlashAttn.OFF


def _matrix(swa: bool = False) -> list[Settings]:
    runs = [
        Settings(n_ctx=4096, flash_attn=ON),
        Settings(n_ctx=4096, flash_attn=OFF),
        Settings(n_ctx=10000, type_k="q8_0", type_v="q8_0", flash_attn=ON),  # padded to 10240
        Settings(n_ctx=32768, type_k="q4_0", type_v="q4_0", flash_attn=ON),
        Settings(n_ctx=32768, type_k="q8_0", type_v="q4_0", flash_attn=ON),
        Settings(n_ctx=16384, type_k="iq4_nl", type_v="q5_1", flash_attn=ON),
        Settings(n_ctx=8000, type_k="q8_0", type_v="f16", flash_attn=OFF),  # quantized K, no FA
        Settings(n_ctx=20000, type_k="f32", type_v="bf16", flash_attn=ON, n_ubatch=256),
        Settings(n_ctx=12345, n_parallel=3, flash_attn=ON),  # per-sequence streams, padded
        Settings(n_ctx=12288, n_parallel=2, kv_unified=True, type_k="q5_0", type_v="q5_0"),
        Settings(n_ctx=300, n_batch=2048, flash_attn=ON),  # batch capped by the context
    ]
    if swa:
        runs += [Settings(n_ctx=32768, swa_full=True, flash_attn=ON),
                 Settings(n_ctx=65536, type_k="q8_0", type_v="q8_0", n_ubatch=1024)]
    return runs


# (catalog label, sliding-window model, CPU compute tolerance where the stage model is used;
# replayed models (compute.simulates) must match to the byte)
MODELS = [
    ("Llama-3.1-8B-Instruct Q4_K_M", False, 0.0),  # llama, GQA 32/8
    ("Qwen2.5-7B-Instruct Q4_K_M", False, 0.0),  # qwen2, q/k/v biases
    ("Mistral-Nemo-Instruct-2407 Q4_K_M", False, 0.0),  # head size 128 != 5120/32
    ("Gemma-2-9B-it Q4_K_M", True, 0.0),  # SWA every other layer
    ("Gemma-3-12B-it Q4_K_M", True, 0.0),  # SWA five of six, 262144 vocab
    ("Qwen3-30B-A3B Q4_K_M", False, 0.0),  # MoE, 128 experts
    ("DeepSeek-V2-Lite-Chat Q4_K_M", False, 0.0),  # MLA: K cache only
    ("LFM2-1.2B Q8_0", True, 0.0),  # hybrid: short-conv state + attention
    ("gpt-oss-20b MXFP4_MOE", True, 0.0),  # SWA + MoE, attention sinks
]


@pytest.mark.parametrize(("label", "swa", "compute_tol"), MODELS, ids=[m[0] for m in MODELS])
def test_estimate_equals_llama_cpp(sparse_model: Callable[[str], Path], label: str, swa: bool,
                                   compute_tol: float) -> None:
    from kvgui.runtime.dryrun import DryRunError, dry_run_many
    from kvgui.runtime.llama_backend import probe_host_cpu
    from kvgui.runtime.llama_log import matches_logged

    host = [cpu(None, probe_host_cpu())]  # the installed build's CPU backend (AMX or not)
    path = sparse_model(label)
    model = load_model(path)
    matrix = _matrix(swa)
    results = dry_run_many(path, matrix)
    checked = host_aborts = 0
    for s, got in zip(matrix, results, strict=True):
        est = estimate(model, s, host)
        what = f"{label} {s}"
        if isinstance(got, DryRunError):
            # llama.cpp refused: kvgui must have said why before launch
            assert est.errors, f"llama.cpp refused but kvgui did not: {got} ({what})"
            if est.refusals[0].code is Code.AMX_MLA_ABORTS:
                # DeepSeek-V2 on an AMX build: the abort kvgui predicts is the one that came
                assert "GGML_ASSERT(*cur_backend_id != -1)" in got.reason, what
                host_aborts += 1
            continue
        assert not est.errors, f"kvgui refused what llama.cpp accepts: {est.errors} ({what})"
        assert est.n_ctx == got.n_ctx, what
        assert got.exact is not None, "the dry run gave no exact memory breakdown"
        context = sum(b.context for b in got.exact)  # KV cache + recurrent state, exact bytes
        assert est.kv + est.state == context, \
            f"KV+state {est.kv + est.state} != llama.cpp {context} bytes ({what})"
        for ours, logged in ((est.kv_k, got.kv_k), (est.kv_v, got.kv_v),
                             (est.state, got.state)):
            assert matches_logged(ours, logged / 2**20), what
        # weights: the dry run never maps the file (it forces LLAMA_LOAD_MODE_NONE), so it is
        # the truth for -lm none, per host buffer type (AMX, CPU_REPACK, CPU); with mmap the
        # extra buffer types are the same allocations (the mapped range: test_host_buffers)
        unmapped = estimate(model, s.replace(mmap=False), host)
        truth = {b.name: b.model for b in got.exact if b.model}
        assert dict(unmapped.host_buffers) == truth, f"host weights ({what})"
        assert unmapped.weights == got.weights, f"weights ({what})"
        assert {b: n for b, n in est.host_buffers if b != "CPU_Mapped"} == \
            {b: n for b, n in truth.items() if b != "CPU"}, what
        assert est.output == got.output_total or matches_logged(est.output,
                                                                got.output_total / 2**20), what
        tol = 0.0 if simulates(model) else compute_tol
        assert est.compute == pytest.approx(got.compute_total, rel=tol), \
            f"compute {est.compute} != llama.cpp {got.compute_total} bytes ({what})"
        checked += 1
    # on a CPU where llama.cpp aborts with flash attention, only the runs without it remain
    assert checked >= (1 if host_aborts else 5), "llama.cpp refused most of the matrix"
