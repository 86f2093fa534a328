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
from kvgui.core.memory.builders.apertus import ApertusGraph
from kvgui.core.memory.builders.cohere2 import Cohere2Graph
from kvgui.core.memory.builders.command_r import CommandRGraph
from kvgui.core.memory.builders.common import GraphContext, GraphParams, Result
from kvgui.core.memory.builders.deepseek2 import Deepseek2Graph
from kvgui.core.memory.builders.ernie4_5 import Ernie45Graph
from kvgui.core.memory.builders.exaone4 import Exaone4Graph
from kvgui.core.memory.builders.gemma2 import Gemma2Graph
from kvgui.core.memory.builders.gemma3 import Gemma3Graph
from kvgui.core.memory.builders.glm4 import Glm4Graph
from kvgui.core.memory.builders.glm4 import hparams as glm4_hparams
from kvgui.core.memory.builders.granite import GraniteGraph, minicpm_hparams
from kvgui.core.memory.builders.hunyuan_dense import HunyuanDenseGraph
from kvgui.core.memory.builders.internlm2 import Internlm2Graph
from kvgui.core.memory.builders.lfm2 import Lfm2Graph
from kvgui.core.memory.builders.llama import LlamaGraph
from kvgui.core.memory.builders.mistral3 import Mistral3Graph
from kvgui.core.memory.builders.mistral3 import hparams as mistral3_hparams
from kvgui.core.memory.builders.olmo2 import Olmo2Graph
from kvgui.core.memory.builders.openai_moe import OpenaiMoeGraph
from kvgui.core.memory.builders.phi3 import Phi3Graph
from kvgui.core.memory.builders.qwen2 import Qwen2Graph
from kvgui.core.memory.builders.qwen3 import Qwen3Graph
from kvgui.core.memory.builders.qwen3moe import Qwen3MoeGraph
from kvgui.core.memory.builders.seed_oss import SeedOssGraph
from kvgui.core.memory.builders.smollm3 import Smollm3Graph
from kvgui.core.memory.builders.starcoder2 import Starcoder2Graph

# --- fam-moe ---
# isort: off
from kvgui.core.memory.builders import bailingmoe2, dots1, ernie4_5_moe, glm4moe, llama4
from kvgui.core.memory.builders.bailingmoe2 import BailingMoe2Graph
from kvgui.core.memory.builders.dots1 import Dots1Graph
from kvgui.core.memory.builders.ernie4_5_moe import Ernie45MoeGraph
from kvgui.core.memory.builders.glm4moe import Glm4MoeGraph
from kvgui.core.memory.builders.hunyuan_moe import HunyuanMoeGraph
from kvgui.core.memory.builders.llama4 import Llama4Graph
# isort: on
# --- end fam-moe ---

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
    # --- fam-dense ---
    "phi3": Phi3Graph,
    "mistral3": Mistral3Graph,
    "exaone4": Exaone4Graph,
    "olmo2": Olmo2Graph,
    "smollm3": Smollm3Graph,
    "cohere2": Cohere2Graph,
    "command-r": CommandRGraph,
    "granite": GraniteGraph,
    "minicpm": GraniteGraph,
    "glm4": Glm4Graph,
    "starcoder2": Starcoder2Graph,
    "internlm2": Internlm2Graph,
    "ernie4_5": Ernie45Graph,
    "hunyuan-dense": HunyuanDenseGraph,
    "seed_oss": SeedOssGraph,
    "apertus": ApertusGraph,
    # --- end fam-dense ---
    # --- fam-moe ---
    "glm4moe": Glm4MoeGraph,
    "llama4": Llama4Graph,
    "granitemoe": GraniteGraph,  # (fam-dense's granite.py: granite-moe.cpp uses its graph)
    "ernie4_5-moe": Ernie45MoeGraph,
    "hunyuan-moe": HunyuanMoeGraph,
    "dots1": Dots1Graph,
    "bailingmoe2": BailingMoe2Graph,
    # --- end fam-moe ---
}

# load_arch_hparams, for what an architecture sets beyond the generic keys
HPARAMS: dict[str, Callable[[hp_mod.Hparams, ModelInfo], None]] = {
    "gemma2": gemma2.hparams,
    "gemma3": gemma3.hparams,
    "deepseek2": deepseek2.hparams,
    "lfm2": lfm2.hparams,
    # --- fam-dense ---
    "mistral3": mistral3_hparams,
    "minicpm": minicpm_hparams,
    "glm4": glm4_hparams,
    # --- end fam-dense ---
    # --- fam-moe ---
    "glm4moe": glm4moe.hparams,
    "llama4": llama4.hparams,
    "ernie4_5-moe": ernie4_5_moe.hparams,
    "dots1": dots1.hparams,
    "bailingmoe2": bailingmoe2.hparams,
    # --- end fam-moe ---
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
        # models.h: llama_model_nemotron_h_moe reuses nemotron_h's hparams, tensors and graph
        "nemotron_h_moe": nemotron_h.NemotronHGraph,
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
        "nemotron_h_moe": nemotron_h.hparams,
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

