"""llama.cpp's refusals and warnings as data: codes, the setting they are about, their fix."""

from __future__ import annotations

import pytest

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.devices.device_budget import DeviceBudget
from kvgui.core.gguf.ggml_types import CACHE_TYPE_NAMES
from kvgui.core.memory.estimate import Verdict, check, estimate
from kvgui.core.memory.findings import Code, Severity, first_fix
from kvgui.core.memory.fit import max_context
from kvgui.core.model.catalog import catalog_model
from kvgui.core.model.info import ModelInfo

GiB = 1024**3


@pytest.fixture(scope="module")
def llama3() -> ModelInfo:
    return catalog_model("Llama-3.1-8B-Instruct Q4_K_M")


@pytest.fixture(scope="module")
def deepseek() -> ModelInfo:
    return catalog_model("DeepSeek-V2-Lite-Chat Q4_K_M")


def codes(model: ModelInfo, s: Settings) -> set[Code]:
    return {f.code for f in check(model, s)}


def test_quantized_v_without_flash_attention_is_refused_with_its_fix(llama3: ModelInfo) -> None:
    s = Settings(type_v="q4_0", flash_attn=FlashAttn.OFF)
    (f,) = [f for f in check(llama3, s) if f.is_refusal]
    assert f.code is Code.V_QUANT_NEEDS_FA and f.severity is Severity.REFUSAL
    assert f.field == "flash_attn"
    fixed = s.replace(**f.fix)
    assert not [f for f in check(llama3, fixed) if f.is_refusal]


def test_a_refused_estimate_never_fits(llama3: ModelInfo) -> None:
    """Not "fits, K cache 0.00 MiB": a refusal is its own verdict everywhere."""
    s = Settings(type_v="q4_0", flash_attn=FlashAttn.OFF)
    est = estimate(llama3, s, [DeviceBudget("GPU", 80 * GiB)])
    assert est.verdict is Verdict.REFUSED and est.fits is False and est.refused
    assert max_context(llama3, s, [DeviceBudget("GPU", 80 * GiB)]) == 0


def test_mla_needs_equal_types_and_the_fix_makes_them_equal(deepseek: ModelInfo) -> None:
    s = Settings(type_k="q8_0", type_v="f16")
    assert Code.MLA_SAME_TYPES in codes(deepseek, s)
    assert Code.MLA_SAME_TYPES not in codes(deepseek, s.replace(**first_fix(check(deepseek, s))))


@pytest.mark.parametrize("t", CACHE_TYPE_NAMES)
def test_every_fix_removes_its_refusal(llama3: ModelInfo, deepseek: ModelInfo, t: str) -> None:
    for model in (llama3, deepseek):
        for s in (Settings(type_k=t), Settings(type_v=t), Settings(type_v=t, flash_attn="off")):
            for f in check(model, s):
                if f.is_refusal:
                    assert f.fix, f
                    assert f.code not in codes(model, s.replace(**f.fix)), f


def test_warnings_carry_codes(llama3: ModelInfo) -> None:
    s = Settings(n_ctx=llama3.n_ctx_train * 2)
    found = {f.code: f for f in check(llama3, s)}
    assert found[Code.BEYOND_TRAINED].severity is Severity.WARNING
    assert found[Code.BEYOND_TRAINED].field == "n_ctx"
    est = estimate(llama3, Settings(n_gpu_layers=10), [DeviceBudget("GPU", 8 * GiB)])
    assert est.has(Code.PARTIAL_OFFLOAD) and est.verdict is not Verdict.REFUSED


def test_json_names_findings_by_code(llama3: ModelInfo) -> None:
    data = estimate(llama3, Settings(type_v="q8_0", flash_attn="off")).to_json()
    assert data["verdict"] == "refused"
    (refusal,) = [f for f in data["findings"] if f["severity"] == "refusal"]
    assert refusal["code"] == "v-quant-needs-flash-attn"
    assert refusal["fix"] == {"flash_attn": "auto"}
