"""parse_llama_log on logs captured from the bundled llama.cpp (tests/runtime/data, made by
capture_logs.py), checked against the exact bytes the same runs reported outside the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvgui.core.config.settings import Settings, pad_ctx
from kvgui.core.gguf.ggml_types import by_name
from kvgui.runtime.llama_log import (
    LOG_CONT,
    LOG_DEBUG,
    LOG_INFO,
    MIB,
    BufferBytes,
    matches_logged,
    mib_to_bytes,
    parse_llama_log,
)

DATA = Path(__file__).parent / "data"
DRY_RUNS = sorted(p.stem for p in DATA.glob("dryrun_*.log"))


def load(name: str) -> tuple[str, dict]:
    return ((DATA / f"{name}.log").read_text(encoding="utf-8"),
            json.loads((DATA / f"{name}.json").read_text(encoding="utf-8")))


def test_the_captured_logs_are_there() -> None:
    assert len(DRY_RUNS) >= 4


@pytest.mark.parametrize("name", DRY_RUNS)
def test_dry_run_log_agrees_with_exact_breakdown(name: str) -> None:
    text, side = load(name)
    s = Settings.from_dict(side["settings"])
    m = parse_llama_log(text)
    exact = side["exact"]
    # context figures: padded n_ctx, sequences
    assert m.n_ctx is not None and m.n_ctx % 256 == 0 and m.n_ctx >= s.n_ctx
    assert m.n_ctx == pad_ctx(m.n_ctx_seq or 0) * s.n_parallel
    assert m.n_seq_max == s.n_parallel
    assert m.n_ubatch == min(s.n_ubatch, m.n_batch or 0)
    # the KV lines (K and V halves) and recurrent lines (R, S, P) add up to the exact
    # "context" bytes of the same run
    assert m.kv_caches
    logged = sum(c.k_mib + c.v_mib for c in m.kv_caches)
    logged += sum(r.r_mib + r.s_mib + r.p_mib for r in m.recurrent)
    n_figures = 2 * len(m.kv_caches) + 3 * len(m.recurrent)
    context = sum(b["context"] for b in exact)
    assert abs(context / MIB - logged) <= 0.005 * n_figures + 1e-6
    for c in m.kv_caches:
        assert (c.type_k, c.type_v) == (s.type_k, s.type_v)
        assert abs(c.k_mib + c.v_mib - c.size_mib) <= 0.011
        assert c.n_seq == s.n_parallel
    # the compute line per backend is the exact compute buffer, printed
    assert sum(m.compute_mib.values()) > 0
    assert matches_logged(sum(b["compute"] for b in exact), sum(m.compute_mib.values()))
    # with no_alloc, the model buffers are dummies: llama.cpp logs 0.00 MiB for them
    assert m.model_buffers_mib and set(m.model_buffers_mib.values()) == {0.0}
    assert sum(b["model"] for b in exact) > 0
    assert m.graph_nodes and m.graph_splits == "1"


def test_flash_attention_resolution() -> None:
    auto = parse_llama_log(load("dryrun_llama_f16_auto")[0])
    assert (auto.flash_attn_type, auto.flash_attn) == ("auto", True)  # CPU supports FA
    off = parse_llama_log(load("dryrun_llama_f32_q4_0_off")[0])
    assert (off.flash_attn_type, off.flash_attn) == ("disabled", False)
    # -fa auto with a quantized V cache: llama_init_from_model turns it on before the context
    forced, side = load("dryrun_gemma2_q8_0_np2")
    assert side["settings"]["flash_attn"] == "auto"
    assert "required for quantized V cache" in forced
    assert parse_llama_log(forced).flash_attn_type == "enabled"


def test_iswa_model_logs_two_caches() -> None:
    m = parse_llama_log(load("dryrun_gemma2_q8_0_np2")[0])
    full, swa = m.kv_caches
    assert (full.role, swa.role) == ("non-SWA", "SWA")
    assert full.layers == swa.layers == 2  # layers alternate
    assert swa.cells < full.cells == m.n_ctx_seq  # cells per stream; one stream per sequence
    assert (full.n_seq, full.n_stream) == (2, 2)
    # same layers, same types: the K bytes scale with the cells, to the logged precision
    assert full.k_mib / full.cells == pytest.approx(swa.k_mib / swa.cells, rel=0.05)


def test_hybrid_model_logs_recurrent_state() -> None:
    text, side = load("dryrun_lfm2_hybrid_np2")
    m = parse_llama_log(text)
    (r,) = m.recurrent
    assert (r.cells, r.n_seq, r.n_rs_seq) == (2, 2, 0)  # one state per sequence
    assert r.type_r == r.type_s == "f32" and r.r_mib > 0
    (c,) = m.kv_caches
    assert (c.layers, r.layers) == (6, 16)  # 6 attention layers; the state line counts all 16
    # kv is exact only without recurrent state: it is the exact context less the logged state
    assert m.exact_fields == ()
    m.exact = [BufferBytes(**b) for b in side["exact"]]
    assert m.context_exact == m.kv + m.state
    assert "kv" not in m.exact_fields and "weights" in m.exact_fields


def test_cache_types_and_padding() -> None:
    m = parse_llama_log(load("dryrun_llama_f32_q4_0_off")[0])
    (c,) = m.kv_caches
    assert (m.n_ctx, m.n_ctx_seq, m.n_batch) == (5120, 5120, 2048)  # n_ctx padded to 256
    assert (c.type_k, c.type_v) == ("q4_0", "f32")
    qk, f32 = by_name("q4_0"), by_name("f32")
    # one row per cell of the same width: the K:V ratio is the types' bytes per element ratio
    ratio = (qk.type_size / qk.block_size) / (f32.type_size / f32.block_size)
    assert c.k_mib == pytest.approx(c.v_mib * ratio, abs=0.01)


def test_large_model_buffers_and_output() -> None:
    text, side = load("dryrun_llama8b_q4_0")
    m = parse_llama_log(text)
    names = {b["name"] for b in side["exact"]}
    assert "CPU_REPACK" in names  # Q4_0 weights go to the repacked CPU buffer
    assert sum(b["model"] for b in side["exact"]) == side["model_size"]
    (c,) = m.kv_caches
    assert (c.cells, c.layers) == (16384, 32)
    assert c.k_mib == c.v_mib == 16384 * 32 * 8 * 128 * 2 / MIB  # 8 KV heads of 128, f16
    # logits for one token: n_vocab floats
    assert matches_logged(128256 * 4, m.output_mib["CPU"])
    assert m.output_total == mib_to_bytes(0.49)


def test_real_load_logs_buffers_and_precise_compute() -> None:
    m = parse_llama_log(load("load_gemma2_real")[0])
    assert m.model_buffers_mib["CPU"] > 0  # a real load logs the real weight buffer
    # KV buffer lines (real buffers) agree with the size lines
    assert sum(m.kv_buffers_mib.values()) == pytest.approx(
        sum(c.size_mib for c in m.kv_caches), abs=0.02)
    # the DEBUG line from ~llama_context (4 decimals) arrives through the callback
    precise = m.compute_precise_mib["CPU"]
    assert round(precise, 2) == m.compute_mib["CPU"]
    assert precise != m.compute_mib["CPU"]
    assert (m.flash_attn_type, m.flash_attn) == ("auto", True)


def test_failed_context_log_has_no_context_figures() -> None:
    text, side = load("error_quantized_v_fa_off")
    assert "flash" in side["error"]
    m = parse_llama_log(text)
    assert m.n_ctx is None and not m.kv_caches and not m.compute_mib


def test_empty_and_foreign_text() -> None:
    m = parse_llama_log("")
    assert m.memory() == dict.fromkeys(
        ("weights", "kv_k", "kv_v", "kv", "state", "compute", "output", "total"), 0)
    assert m.flash_attn is None and m.exact_fields == ()
    assert parse_llama_log("hello\nsize = 3 MiB\n").kv_caches == []


def test_matches_logged_is_half_a_hundredth() -> None:
    assert matches_logged(mib_to_bytes(1.004), 1.00)
    assert not matches_logged(mib_to_bytes(1.006), 1.00)


@pytest.mark.llama
def test_capture_gets_levels_and_restores_the_previous_logger(tiny_model_path: Path) -> None:
    import ctypes

    from llama_cpp import llama_cpp as lc

    from kvgui.runtime.llama_log import LlamaLogCapture

    def current() -> int | None:
        cb = lc.llama_log_callback()
        ud = ctypes.c_void_p()
        lc.llama_log_get(ctypes.byref(cb), ctypes.byref(ud))
        return ctypes.cast(cb, ctypes.c_void_p).value

    before = current()
    seen: list[int] = []
    cap = LlamaLogCapture(sink=lambda level, _text: seen.append(level))
    cap.install()
    try:
        mp = lc.llama_model_default_params()
        mp.load_mode = 0  # a real load: its progress dots are CONT lines
        model = lc.llama_model_load_from_file(str(tiny_model_path).encode(), mp)
        assert model
        lc.llama_model_free(model)
    finally:
        cap.uninstall()
    assert current() == before
    levels = {lvl for lvl, _ in cap.records}
    assert {LOG_DEBUG, LOG_INFO} <= levels  # debug lines do reach the callback
    assert LOG_CONT not in levels  # continuations take the level of the line they continue
    assert seen == [lvl for lvl, _ in cap.records]
    assert parse_llama_log(cap.text).model_buffers_mib["CPU"] > 0
