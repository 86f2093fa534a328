"""Settings as llama.cpp's own parameter fields: the one translation every worker uses.

llama-cpp-python's constructor defaults are not llama-cli's (flash_attn off, swa_full on,
n_batch 512), so every Settings field is written into llama_context_params /
llama_model_params explicitly; the dry run, the chat worker and the measure worker all start
from these dicts, so the launch and the verification can never disagree.
"""

from __future__ import annotations

from typing import Any

from kvgui.core.config.settings import ALL_LAYERS, Settings
from kvgui.core.gguf.ggml_types import by_name

# "every layer": llama.cpp takes min(n_gpu_layers, n_layer + 1)
ALL_GPU_LAYERS = 0x7FFFFFFF


def context_fields(settings: Settings) -> dict[str, Any]:
    """llama_context_params fields that Settings decides."""
    return {
        "n_ctx": settings.n_ctx,
        "n_batch": settings.n_batch,
        "n_ubatch": settings.n_ubatch,
        "n_seq_max": settings.n_parallel,
        "flash_attn_type": settings.flash_attn.llama_value,
        "type_k": by_name(settings.type_k).id,
        "type_v": by_name(settings.type_v).id,
        "offload_kqv": settings.kv_offload,
        "swa_full": settings.swa_full,
        "kv_unified": settings.kv_unified,
    }


def model_fields(settings: Settings) -> dict[str, Any]:
    """llama_model_params fields that Settings decides (besides mmap and the split)."""
    return {"n_gpu_layers": ALL_GPU_LAYERS if settings.n_gpu_layers == ALL_LAYERS
            else settings.n_gpu_layers}
