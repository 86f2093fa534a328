"""Regenerate the captured llama.cpp logs in this folder (run with the project's Python).

Each ``*.log`` is llama.cpp's log text exactly as the dry run (or a real load) captured it;
``*.json`` beside it holds what the same run reported outside the log (exact bytes from the
memory breakdown), so the parser tests compare two independent readings of one run.

    python tests/runtime/data/capture_logs.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from kvgui.core.config.settings import FlashAttn, Settings  # noqa: E402
from kvgui.runtime.dryrun import DryRunError, dry_run  # noqa: E402
from kvgui.runtime.llama_log import capture_llama_log  # noqa: E402
from kvgui.testing.tiny_model import write_sparse_model, write_tiny_model  # noqa: E402


def save(name: str, log: str, extra: dict) -> None:
    (HERE / f"{name}.log").write_text(log, encoding="utf-8")
    (HERE / f"{name}.json").write_text(json.dumps(extra, indent=1) + "\n", encoding="utf-8")


def dry(name: str, model: Path, settings: Settings) -> None:
    try:
        m = dry_run(model, settings)
    except DryRunError as exc:
        save(name, exc.log, {"settings": settings.to_dict(), "error": exc.reason})
        return
    save(name, m.log, {
        "settings": settings.to_dict(),
        "exact": [b.__dict__ for b in m.exact or []],
        "model_size": m.model_size,
    })


def real_load(name: str, model: Path, n_ctx: int) -> None:
    """A real (allocating) load, whose context free logs the compute buffer with 4 decimals."""
    from llama_cpp import llama_cpp as lc

    with capture_llama_log() as cap:
        mp = lc.llama_model_default_params()
        mp.load_mode = 0
        mdl = lc.llama_model_load_from_file(str(model).encode(), mp)
        cp = lc.llama_context_default_params()
        cp.n_ctx, cp.flash_attn_type, cp.swa_full = n_ctx, -1, False
        ctx = lc.llama_init_from_model(mdl, cp)
        lc.llama_free(ctx)
        lc.llama_model_free(mdl)
    log = "".join(t for _, t in cap.records if not t.startswith(
        ("llama_graph_n_input_tensors:", "create_tensor: loading tensor")))
    save(name, log, {"n_ctx": n_ctx})


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        llama = write_tiny_model(t / "tiny.gguf")
        gemma = write_tiny_model(t / "tiny_swa.gguf", arch="gemma2", n_layer=4, n_swa=128)
        big = write_sparse_model(t / "sparse8b.gguf")
        dry("dryrun_llama_f16_auto", llama, Settings(n_ctx=4096))
        dry("dryrun_llama_f32_q4_0_off", llama,
            Settings(n_ctx=5000, type_k="q4_0", type_v="f32", flash_attn=FlashAttn.OFF))
        dry("dryrun_gemma2_q8_0_np2", gemma,
            Settings(n_ctx=8192, type_k="q8_0", type_v="q8_0", n_parallel=2))
        dry("dryrun_llama8b_q4_0", big, Settings(n_ctx=16384))
        dry("error_quantized_v_fa_off", llama, Settings(type_v="q8_0", flash_attn=FlashAttn.OFF))
        # a hybrid (attention + short-conv recurrent state) model, from the catalog's header
        from kvgui.core.model.catalog import find
        from kvgui.testing.sparse_gguf import write_sparse_gguf

        lfm2 = write_sparse_gguf(find("LFM2-1.2B Q8_0"), t / "lfm2.gguf")
        dry("dryrun_lfm2_hybrid_np2", lfm2, Settings(n_ctx=8192, n_parallel=2))
        real_load("load_gemma2_real", gemma, 2048)


if __name__ == "__main__":
    main()
