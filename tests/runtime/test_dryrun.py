"""llama.cpp's own dry run on real (tiny and sparse) models, in a child process."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.gguf.ggml_types import CACHE_TYPE_NAMES, by_name
from kvgui.runtime.dryrun import DryRunError, dry_run, dry_run_many
from kvgui.runtime.llama_log import MIB, matches_logged

pytestmark = [pytest.mark.llama, pytest.mark.usefixtures("no_leftover_children")]
pytest.importorskip("llama_cpp")

ON, OFF, AUTO = FlashAttn.ON, FlashAttn.OFF, FlashAttn.AUTO


def bytes_per_elem(name: str) -> float:
    t = by_name(name)
    return t.type_size / t.block_size


def test_tiny_model_figures(tiny_model_path: Path) -> None:
    m = dry_run(tiny_model_path, Settings(n_ctx=1000))
    assert (m.n_ctx, m.n_ctx_seq, m.n_batch) == (1024, 1024, 1000)  # n_batch: the unpadded n_ctx
    assert m.flash_attn is True and m.flash_attn_type == "auto"  # auto resolves on for the CPU
    assert m.exact is not None and m.exact_fields == ("weights", "kv", "compute")
    assert m.weights == m.model_size > 0
    assert m.kv == m.context_exact > 0 and matches_logged(m.kv, m.kv_caches[0].size_mib)
    assert m.compute_total > 0 and m.total > m.weights + m.kv
    assert any(d.type == "cpu" and d.name == "CPU" for d in m.devices)
    assert "llama_kv_cache: size" in m.log
    # fast: the model's header, a context, no weights
    assert m.stats["load_s"] + m.stats["context_s"] < 1.0
    assert m.stats["process_s"] < 10.0


def test_cache_types_scale_exactly(tiny_model_path: Path) -> None:
    """K bytes for each type = K(f16) x (bytes per element / 2), exactly and as logged."""
    runs = [Settings(n_ctx=32768, type_k=t, type_v="f16", flash_attn=ON) for t in CACHE_TYPE_NAMES]
    results = dry_run_many(tiny_model_path, runs)
    by_type = {}
    for s, r in zip(runs, results, strict=True):
        assert not isinstance(r, DryRunError), r
        by_type[s.type_k] = r
    f16 = by_type["f16"]
    k_f16 = f16.context_exact // 2  # K and V alike when both are f16
    assert f16.kv_caches[0].k_mib == 4.0  # 32768 cells x 2 layers x 32 dims x 2 bytes
    for name, r in by_type.items():
        k_exact = r.context_exact - k_f16  # the V half is the same f16 in every run
        assert k_exact == k_f16 * bytes_per_elem(name) / 2, name
        assert matches_logged(k_exact, r.kv_caches[0].k_mib), name
    assert by_type["q8_0"].kv_caches[0].k_mib == pytest.approx(4.0 * 34 / 64, abs=0.005)


def test_flash_attention_on_off_and_quantized_v(tiny_model_path: Path) -> None:
    on, off, q_off, q_auto = dry_run_many(tiny_model_path, [
        Settings(flash_attn=ON), Settings(flash_attn=OFF),
        Settings(type_v="q8_0", flash_attn=OFF), Settings(type_v="q8_0", flash_attn=AUTO)])
    assert not isinstance(on, DryRunError) and not isinstance(off, DryRunError)
    assert (on.flash_attn, off.flash_attn) == (True, False)
    assert on.kv == off.kv and on.compute_total != off.compute_total
    assert isinstance(q_off, DryRunError)
    assert "quantized V cache requires flash_attn" in q_off.reason
    assert "\n" not in q_off.reason and q_off.log_tail
    assert not isinstance(q_auto, DryRunError) and q_auto.flash_attn is True


def test_sliding_window_model(tiny_swa_model_path: Path) -> None:
    small, full = dry_run_many(tiny_swa_model_path, [
        Settings(n_ctx=8192), Settings(n_ctx=8192, swa_full=True)])
    assert not isinstance(small, DryRunError) and not isinstance(full, DryRunError)
    assert [c.role for c in small.kv_caches] == ["non-SWA", "SWA"]
    base, window = small.kv_caches
    assert window.cells < base.cells == 8192
    assert [c.cells for c in full.kv_caches] == [8192, 8192]
    assert full.kv > small.kv
    # the exact bytes split the same way as the logged cells
    assert small.kv == full.kv // 2 + full.kv // 2 * window.cells // base.cells


def test_parallel_sequences_pad_each_stream(tiny_model_path: Path) -> None:
    m = dry_run(tiny_model_path, Settings(n_ctx=4096, n_parallel=3))
    assert (m.n_ctx_seq, m.n_ctx, m.n_seq_max) == (1536, 4608, 3)
    (c,) = m.kv_caches
    assert (c.cells, c.n_seq, c.n_stream) == (1536, 3, 3)
    u = dry_run(tiny_model_path, Settings(n_ctx=4096, n_parallel=3, kv_unified=True))
    assert (u.n_ctx, u.kv_unified, u.kv_caches[0].n_stream) == (4096, True, 1)


def test_sparse_8b_reads_no_weights(sparse_8b_path: Path) -> None:
    m = dry_run(sparse_8b_path, Settings(n_ctx=8192))
    file_bytes = sparse_8b_path.stat().st_size
    assert m.weights == m.model_size and 0.95 * file_bytes < m.weights < file_bytes
    assert m.stats["max_rss"] is None or m.stats["max_rss"] < 1024 * MIB < m.weights
    assert m.kv == 8192 * 32 * 2 * 8 * 128 * 2  # cells x layers x (K, V) x heads x dims x f16
    assert m.stats["load_s"] + m.stats["context_s"] < 5.0


def test_not_a_model(tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("just some text\n")
    with pytest.raises(DryRunError, match="could not load the model") as e:
        dry_run(text, Settings())
    assert "\n" not in e.value.reason


def test_truncated_model(tiny_model_path: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.gguf"
    data = tiny_model_path.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DryRunError, match="not within the file bounds"):
        dry_run(cut, Settings())


def test_missing_file_and_absurd_context(tmp_path: Path, tiny_model_path: Path) -> None:
    with pytest.raises(DryRunError, match="no such model file"):
        dry_run(tmp_path / "nope.gguf", Settings())
    with pytest.raises(DryRunError, match="beyond what kvgui dry-runs"):
        dry_run(tiny_model_path, Settings(n_ctx=10**9))


def test_timeout_kills_the_child(sparse_8b_path: Path) -> None:
    with pytest.raises(DryRunError, match="timed out"):
        dry_run(sparse_8b_path, Settings(), timeout=0.05)


def test_batch_keeps_going_after_a_refusal(tiny_model_path: Path) -> None:
    # (a quantized V cache without flash attention: llama_context refuses it)
    results = dry_run_many(tiny_model_path, [
        Settings(n_ctx=512), Settings(type_v="q8_0", flash_attn=FlashAttn.OFF),
        Settings(n_ctx=768)])
    ok1, bad, ok2 = results
    assert isinstance(bad, DryRunError) and "requires flash_attn" in bad.reason
    assert not isinstance(ok1, DryRunError) and not isinstance(ok2, DryRunError)
    assert (ok1.n_ctx, ok2.n_ctx) == (512, 768)


def test_an_abort_fails_only_its_settings(tiny_model_path: Path, tmp_path: Path) -> None:
    """GGML_ASSERT aborts the child: that settings fails, the rest get a fresh child."""
    from kvgui.testing.tiny_model import write_tiny_model

    bad = write_tiny_model(tmp_path / "bad.gguf", value_dim=64)  # loads, then fails an assert
    results = dry_run_many(bad, [Settings(n_ctx=512), Settings(n_ctx=1024)])
    for r in results:  # each was tried (and aborted) in its own child
        assert isinstance(r, DryRunError)
        assert r.reason.startswith("llama.cpp aborted: GGML_ASSERT(")
        assert "llama_kv_cache: size" in r.log_tail  # the log up to the abort survives
    assert "   512 cells" in results[0].log_tail and "  1024 cells" in results[1].log_tail
