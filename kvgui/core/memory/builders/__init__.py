"""One module per architecture, each mirroring src/models/<arch>.cpp's graph constructor on
top of ``common.GraphContext`` (llm_graph_context). See kvgui/core/memory/graph/__init__.py for
the design and the HOWTO for adding an architecture.

``BUILDERS`` maps a GGUF ``general.architecture`` to its graph class; ``hparams_for`` applies
the architecture's own load_arch_hparams on top of the generic hparams; ``unread_tensors``
tells a file the builder does not follow (a tensor the graph never reads is a variant).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from kvgui.core.memory.builders import deepseek2, gemma2, gemma3, lfm2
from kvgui.core.memory.builders import hparams as hp_mod
from kvgui.core.memory.builders.common import GraphContext, GraphParams, Result
from kvgui.core.memory.builders.deepseek2 import Deepseek2Graph
from kvgui.core.memory.builders.gemma2 import Gemma2Graph
from kvgui.core.memory.builders.gemma3 import Gemma3Graph
from kvgui.core.memory.builders.lfm2 import Lfm2Graph
from kvgui.core.memory.builders.llama import LlamaGraph
from kvgui.core.memory.builders.openai_moe import OpenaiMoeGraph
from kvgui.core.memory.builders.qwen2 import Qwen2Graph
from kvgui.core.memory.builders.qwen3 import Qwen3Graph
from kvgui.core.memory.builders.qwen3moe import Qwen3MoeGraph

if TYPE_CHECKING:
    from kvgui.core.model.info import ModelInfo

BUILDERS: dict[str, type[GraphContext]] = {
    "llama": LlamaGraph,
    "qwen2": Qwen2Graph,
    "qwen3": Qwen3Graph,
    "qwen3moe": Qwen3MoeGraph,
    "gemma2": Gemma2Graph,
    "gemma3": Gemma3Graph,
    "gpt-oss": OpenaiMoeGraph,
    "deepseek2": Deepseek2Graph,
    "lfm2": Lfm2Graph,
}

# load_arch_hparams, for what an architecture sets beyond the generic keys
HPARAMS: dict[str, Callable[[hp_mod.Hparams, ModelInfo], None]] = {
    "gemma2": gemma2.hparams,
    "gemma3": gemma3.hparams,
    "deepseek2": deepseek2.hparams,
    "lfm2": lfm2.hparams,
}

# --- fam-hybrid ---
def _register_hybrid() -> None:
    """The hybrid, recurrent and special families (issue 13, branch fam-hybrid)."""
    from kvgui.core.memory.builders import (
        falcon_h1,
        gemma3n,
        gemma4,
        granite_hybrid,
        jamba,
        mamba,
        nemotron_h,
        qwen3next,
        qwen35,
        rwkv,
    )

    BUILDERS.update({
        "qwen3next": qwen3next.Qwen3NextGraph,
        "qwen35": qwen35.Qwen35Graph,
        "qwen35moe": qwen35.Qwen35Graph,
        "falcon-h1": falcon_h1.FalconH1Graph,
        "granitehybrid": granite_hybrid.GraniteHybridGraph,
        "nemotron_h": nemotron_h.NemotronHGraph,
        "jamba": jamba.JambaGraph,
        "mamba": mamba.MambaGraph,
        "mamba2": mamba.MambaGraph,
        "gemma3n": gemma3n.Gemma3nGraph,
        "gemma4": gemma4.Gemma4Graph,
        "rwkv6": rwkv.Rwkv6Graph,
        "rwkv7": rwkv.Rwkv7Graph,
    })
    HPARAMS.update({
        "qwen3next": qwen3next.hparams,
        "qwen35": qwen35.hparams,
        "qwen35moe": qwen35.hparams,
        "falcon-h1": falcon_h1.hparams,
        "granitehybrid": granite_hybrid.hparams,
        "nemotron_h": nemotron_h.hparams,
        "jamba": jamba.hparams,
        "mamba": mamba.hparams,
        "mamba2": mamba.hparams,
        "gemma3n": gemma3n.hparams,
        "gemma4": gemma4.hparams,
        "rwkv6": rwkv.hparams,
        "rwkv7": rwkv.hparams,
    })


_register_hybrid()
# --- end fam-hybrid ---


def hparams_for(model: ModelInfo) -> hp_mod.Hparams:
    hp = hp_mod.from_model(model)
    fix = HPARAMS.get(model.arch)
    if fix is not None:
        fix(hp, model)
    return hp


def build(model: ModelInfo, params: GraphParams) -> tuple[Result, GraphContext]:
    """The reserve graph of ``model`` for ``params`` (KeyError: no builder)."""
    graph = BUILDERS[model.arch](model, hparams_for(model), params)
    return graph.build(), graph


def unread_tensors(model: ModelInfo, graph: GraphContext) -> set[str]:
    """The file's tensors the graph never read (those of NextN/MTP layers excepted: the main
    graph does not run them)."""
    skip = {f"blk.{il}." for il in range(model.n_layer, len(model.layers))}
    return {name for name, _, _ in model.tensor_table
            if name not in graph.model.used and not name.startswith(tuple(skip))}

