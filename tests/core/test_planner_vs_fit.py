"""Never worse than llama.cpp's --fit: on an RPC "GPU" of 8, 12 or 16 GiB, kvgui's planner
finds at least llama-fit-params' context with no more layers or layers' experts on the CPU,
and llama-fit-params itself says kvgui's placement fits (benchmarks/planner_vs_fit.py runs
the whole table)."""

from __future__ import annotations

import pytest

from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model.info import load_model

pytestmark = [pytest.mark.llama, pytest.mark.slow]

CASES = [  # (model, card GiB, -c; 0 = llama.cpp picks the context)
    ("Llama-3.1-8B-Instruct Q4_K_M", 8, 32768),  # dense: layers on the CPU
    ("Gemma-3-12B-it Q4_K_M", 8, 0),  # SWA, the context chosen by --fit
    ("Qwen3-30B-A3B Q4_K_M", 16, 32768),  # MoE: experts on the CPU, every layer on the GPU
    ("gpt-oss-20b MXFP4_MOE", 8, 8192),  # SWA + MoE
]


@pytest.mark.parametrize(("label", "card", "ctx"), CASES)
def test_planner_is_never_worse_than_llama_fit(llama_tools, sparse_model, label, card,
                                               ctx) -> None:
    from kvgui.runtime.llama_backend import probe_host_cpu
    from kvgui.testing.planner_vs_fit import run_case

    path = sparse_model(label)
    model = load_model(path)
    r = run_case(llama_tools, path, model, label, card, ctx, ModelMemo(model),
                 host=probe_host_cpu())
    assert r.fit is not None, r.note  # these cases all fit somehow
    assert r.ok, r
