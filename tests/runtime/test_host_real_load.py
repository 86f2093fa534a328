"""The host's weights against llama.cpp loading a model for real, with and without mmap.

llama.cpp's dry run never maps the file (no_alloc forces LLAMA_LOAD_MODE_NONE) and logs its
extra buffers as 0.00 MiB (dummy buffers; its memory breakdown has the right sizes), so the
mapped figure can only be checked against a real load: a tiny model whose weights fall into
every host buffer type this machine's llama.cpp has (AMX, CPU_REPACK, CPU, CPU_Mapped).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgui.core.config.settings import Settings
from kvgui.core.devices.device_budget import cpu
from kvgui.core.memory import host_buffers as hb
from kvgui.core.memory.estimate import estimate
from kvgui.core.model.info import load_model
from kvgui.runtime.llama_backend import probe_host_cpu

pytestmark = pytest.mark.llama

# AMX takes the Q4_K/Q8_0 matrices (ne1 % 32) and grows them; CPU_REPACK (AVX2) takes Q4_0
# with ne1 = 264 (% 8, not % 32); f16 with ne0 = 264 and Q8_0 embeddings stay on the CPU
MIXED = {"ffn_gate": "q4_0", "ffn_up": "q4_0", "ffn_down": "f16", "token_embd": "q8_0",
         "output": "q8_0", "attn_v": "q8_0"}


@pytest.fixture(scope="module")
def mixed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf")
    from kvgui.testing.tiny_model import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-mixed.gguf", dtype="q4_k",
                            n_embd=256, n_head=4, n_head_kv=2, n_ff=264, tensor_types=MIXED)


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "no-mmap"])
def test_host_buffers_equal_a_real_load(mixed_model: Path, mmap: bool) -> None:
    from kvgui.runtime.client import WorkerClient

    settings = Settings(n_ctx=512, mmap=mmap)
    est = estimate(load_model(mixed_model), settings, [cpu(None, probe_host_cpu())])
    with WorkerClient() as client:
        loaded = client.load(str(mixed_model), settings)
    assert loaded["exact"], "the worker could not read llama.cpp's memory breakdown"
    real = {b["name"]: b["model"] for b in loaded["exact"] if b["model"]}
    assert dict(est.host_buffers) == real
    host = est.devices[-1]
    assert host.weights == sum(real.values())
    assert host.mapped == real.get(hb.CPU_MAPPED, 0)
    assert (host.mapped > 0) == mmap
    if probe_host_cpu().extra_buffers and mmap:
        # the copies' file pages are inside the mapped range: mapped but idle
        assert host.mapped_idle > 0
        assert host.required == host.total - host.mapped_idle


def test_host_buffers_equal_the_dry_run(mixed_model: Path) -> None:
    from kvgui.runtime.dryrun import dry_run

    settings = Settings(n_ctx=512, mmap=False)
    got = dry_run(mixed_model, settings)
    assert got.exact is not None
    est = estimate(load_model(mixed_model), settings, [cpu(None, probe_host_cpu())])
    assert dict(est.host_buffers) == {b.name: b.model for b in got.exact if b.model}
    # the buffer types llama.cpp used are the ones kvgui read from the build
    host = probe_host_cpu()
    assert {b.name for b in got.exact if b.model} - {"CPU"} <= set(host.extra_buffers)
    assert host.source.startswith("llama-cpp-python")
