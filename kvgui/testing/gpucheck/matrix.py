"""The accuracy matrix of the CUDA check: sparse header-faithful models x settings.

Architectures whose compute graph kvgui rebuilds (so a difference is a CUDA rule, not the
stage model): llama (GQA), qwen3, gemma3 (SWA 5 of 6; n_embd 3840 is no multiple of 512, so
CUDA's row padding of quantized tensors shows), a 128-expert MoE, gpt-oss (SWA + sinks +
MXFP4 experts), DeepSeek MLA and LFM2's hybrid state. Per model: every layer on the GPU and
about half of them (the rest on the CPU, whose batch-32 op offload copies host weights to the
GPU), flash attention on (f16, q8_0, q4_0 caches) and off (f16: a quantized V needs it), at
4K, 32K and 128K. Ordered so that what matters most runs first: a run cut short by its
deadline still brings back every model at 32K with all layers on the GPU.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvgui.core.config.settings import ALL_LAYERS, FlashAttn, Settings

MODELS = (
    "Llama-3.1-8B-Instruct Q4_K_M",
    "Qwen3-8B Q4_K_M",
    "Gemma-3-12B-it Q4_K_M",
    "Qwen3-30B-A3B Q4_K_M",
    "gpt-oss-20b MXFP4_MOE",
    "DeepSeek-V2-Lite-Chat Q4_K_M",
    "LFM2-1.2B Q8_0",
)
CONTEXTS = (32768, 4096, 131072)  # the first one first (see the module docstring)
#: (K/V cache type, flash attention)
CACHES = (("f16", FlashAttn.ON), ("q8_0", FlashAttn.ON), ("q4_0", FlashAttn.ON),
          ("f16", FlashAttn.OFF))
PARTIAL = "partial"  # half the layers (rounded down) on the GPU


@dataclass(frozen=True)
class Case:
    """One run of the matrix: a catalog model and the settings, with a stable id."""

    model: str
    settings: Settings
    offload: str  # "all" or PARTIAL

    @property
    def id(self) -> str:
        s = self.settings
        return (f"{self.model} | c={s.n_ctx} ngl={self.offload}:{s.n_gpu_layers} "
                f"k={s.type_k} v={s.type_v} fa={s.flash_attn.value}")


def partial_layers(n_layer: int) -> int:
    return max(1, n_layer // 2)


def cases(models: Sequence[str] = MODELS, contexts: Sequence[int] = CONTEXTS,
          n_layers: dict[str, int] | None = None) -> list[Case]:
    """The matrix in run order: offload all before partial, then by context, then model.
    ``n_layers``: each model's layer count (for the partial offload); read from the catalog
    when not given."""
    if n_layers is None:
        from kvgui.core.model.catalog import catalog_model

        n_layers = {m: catalog_model(m).n_layer for m in models}
    out = []
    for offload in ("all", PARTIAL):
        for n_ctx in contexts:
            for model in models:
                ngl = ALL_LAYERS if offload == "all" else partial_layers(n_layers[model])
                for ctype, fa in CACHES:
                    out.append(Case(model, Settings(n_ctx=n_ctx, type_k=ctype, type_v=ctype,
                                                    flash_attn=fa, n_gpu_layers=ngl), offload))
    return out


def by_model(matrix: Sequence[Case]) -> Iterator[tuple[str, list[Case]]]:
    """The cases grouped per model, in the order of each model's first case."""
    groups: dict[str, list[Case]] = {}
    for c in matrix:
        groups.setdefault(c.model, []).append(c)
    yield from groups.items()


def model_file(folder: Path, label: str) -> Path:
    return folder / (label.replace(" ", "_").replace("/", "_") + ".gguf")


def write_models(folder: Path, labels: Sequence[str] = MODELS) -> dict[str, Path]:
    """Write each catalog model as a sparse header-faithful GGUF in ``folder`` (a few MB of
    disk each; kept if already there)."""
    from kvgui.core.model.catalog import find
    from kvgui.testing.sparse_gguf import write_sparse_gguf

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for label in labels:
        path = model_file(folder, label)
        if not path.is_file():
            write_sparse_gguf(find(label), path)
        out[label] = path
    return out
