"""One header-faithful model per architecture family, for the truth table against llama.cpp.

The families people run that the user-facing catalog (resources/models.json) covers use a
catalog model; the rest are listed here: real models, their numbers from the published HF
config.json of the repository in ``hf`` (extras documented in packaging/make_catalog.py).
``family_models()`` gives every family's spec in one quant mix -- F16 by default: no tensor of
it lands in an AMX (or other extra) CPU buffer, so the weights compare byte for byte on any
machine. The files are header-only sparse GGUFs (kvgui.testing.sparse_gguf).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvgui.core.model.archspec import ModelSpec, spec_from_dict

# Families no catalog model stands for: older or less common, but llama.cpp supports them and
# people do load them. Numbers from each model's public config.json.
TEST_MODELS: list[dict[str, Any]] = [
    {
        "name": "c4ai-command-r-08-2024", "arch": "command-r",
        "hf": "CohereLabs/c4ai-command-r-08-2024",
        "hp": {"hidden_size": 8192, "intermediate_size": 24576, "num_hidden_layers": 40,
               "num_attention_heads": 64, "num_key_value_heads": 8, "vocab_size": 256000,
               "max_position_embeddings": 131072, "rope_theta": 4000000.0,
               "layer_norm_eps": 1e-5, "logit_scale": 0.0625, "tie_word_embeddings": True},
    },
    {
        "name": "OLMo-2-1124-7B-Instruct", "arch": "olmo2",
        "hf": "allenai/OLMo-2-1124-7B-Instruct",
        "hp": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 100352,
               "max_position_embeddings": 4096, "rope_theta": 500000.0, "rms_norm_eps": 1e-6},
    },
    {
        "name": "granite-3.1-3b-a800m-instruct", "arch": "granitemoe",
        "hf": "ibm-granite/granite-3.1-3b-a800m-instruct",
        "hp": {"hidden_size": 1536, "intermediate_size": 512, "num_hidden_layers": 32,
               "num_attention_heads": 24, "num_key_value_heads": 8, "num_local_experts": 40,
               "num_experts_per_tok": 8, "vocab_size": 49155, "max_position_embeddings": 131072,
               "rope_theta": 10000000.0, "rms_norm_eps": 1e-6, "attention_multiplier": 0.015625,
               "embedding_multiplier": 12.0, "residual_multiplier": 0.22, "logits_scaling": 6.0,
               "tie_word_embeddings": True},
    },
    {
        "name": "Falcon-H1-1.5B-Instruct", "arch": "falcon-h1",
        "hf": "tiiuae/Falcon-H1-1.5B-Instruct",
        "hp": {"hidden_size": 2048, "intermediate_size": 4608, "num_hidden_layers": 24,
               "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 128,
               "vocab_size": 65537, "mamba_d_state": 256, "mamba_d_conv": 4, "mamba_n_groups": 1,
               "mamba_n_heads": 48, "mamba_d_head": 64, "mamba_d_ssm": 3072,
               "max_position_embeddings": 131072, "rope_theta": 1e11, "rms_norm_eps": 1e-5},
    },
    {
        "name": "AI21-Jamba-Mini-1.7", "arch": "jamba", "hf": "ai21labs/AI21-Jamba-Mini-1.7",
        "hp": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 8, "num_experts": 16,
               "num_experts_per_tok": 2, "expert_layer_period": 2, "expert_layer_offset": 1,
               "attn_layer_period": 8, "attn_layer_offset": 4, "mamba_d_state": 16,
               "mamba_d_conv": 4, "mamba_expand": 2, "mamba_dt_rank": 256, "vocab_size": 65536,
               "max_position_embeddings": 262144, "rms_norm_eps": 1e-6},
    },
    {
        "name": "mamba-2.8b-hf", "arch": "mamba", "hf": "state-spaces/mamba-2.8b-hf",
        "hp": {"hidden_size": 2560, "num_hidden_layers": 64, "state_size": 16, "conv_kernel": 4,
               "expand": 2, "time_step_rank": 160, "vocab_size": 50280,
               "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True},
    },
    {
        "name": "v6-Finch-1B6-HF", "arch": "rwkv6", "hf": "RWKV/v6-Finch-1B6-HF",
        "hp": {"hidden_size": 2048, "num_hidden_layers": 24, "head_size": 64,
               "vocab_size": 65536, "layer_norm_epsilon": 1e-5, "rescale_every": 6},
    },
    {
        "name": "rwkv7-1.5B-world", "arch": "rwkv7", "hf": "fla-hub/rwkv7-1.5B-world",
        "hp": {"hidden_size": 2048, "num_hidden_layers": 24, "head_size": 64,
               "intermediate_size": 8192, "vocab_size": 65536, "layer_norm_epsilon": 1e-5},
    },
    {
        "name": "starcoder2-15b", "arch": "starcoder2", "hf": "bigcode/starcoder2-15b",
        "hp": {"hidden_size": 6144, "intermediate_size": 24576, "num_hidden_layers": 40,
               "num_attention_heads": 48, "num_key_value_heads": 4, "vocab_size": 49152,
               "max_position_embeddings": 16384, "rope_theta": 100000.0,
               "layer_norm_eps": 1e-5},
    },
    {
        "name": "internlm2_5-7b-chat", "arch": "internlm2",
        "hf": "internlm/internlm2_5-7b-chat",
        "hp": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 92544,
               "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-5},
    },
    {
        "name": "MiniCPM-2B-sft-bf16", "arch": "minicpm",
        "hf": "openbmb/MiniCPM-2B-sft-bf16",
        "hp": {"hidden_size": 2304, "intermediate_size": 5760, "num_hidden_layers": 40,
               "num_attention_heads": 36, "num_key_value_heads": 36, "vocab_size": 122753,
               "max_position_embeddings": 4096, "rope_theta": 10000.0, "rms_norm_eps": 1e-5,
               "scale_emb": 12, "scale_depth": 1.4, "tie_word_embeddings": True},
    },
    {
        "name": "ERNIE-4.5-0.3B-PT", "arch": "ernie4_5", "hf": "baidu/ERNIE-4.5-0.3B-PT",
        "hp": {"hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 18,
               "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 128,
               "vocab_size": 103424, "max_position_embeddings": 131072, "rope_theta": 500000.0,
               "rms_norm_eps": 1e-5, "tie_word_embeddings": True},
    },
    {
        "name": "Hunyuan-7B-Instruct", "arch": "hunyuan-dense",
        "hf": "tencent/Hunyuan-7B-Instruct",
        "hp": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
               "vocab_size": 128167, "max_position_embeddings": 262144, "rope_theta": 10000.0,
               "rope_scaling_alpha": 50.0, "rms_norm_eps": 1e-5},
    },
    {
        "name": "Apertus-8B-Instruct-2509", "arch": "apertus",
        "hf": "swiss-ai/Apertus-8B-Instruct-2509",
        "hp": {"hidden_size": 4096, "intermediate_size": 21504, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 131072,
               "max_position_embeddings": 65536, "rope_theta": 12000000.0, "rms_norm_eps": 1e-5,
               "rope_freqs": True},
    },
    {
        "name": "dots.llm1.inst", "arch": "dots1", "hf": "rednote-hilab/dots.llm1.inst",
        "hp": {"hidden_size": 4096, "intermediate_size": 10944, "moe_intermediate_size": 1408,
               "num_hidden_layers": 62, "num_attention_heads": 32, "num_key_value_heads": 32,
               "head_dim": 128, "n_routed_experts": 128, "n_shared_experts": 2,
               "num_experts_per_tok": 6, "first_k_dense_replace": 1, "vocab_size": 152064,
               "max_position_embeddings": 32768, "rope_theta": 10000000.0, "rms_norm_eps": 1e-5,
               "routed_scaling_factor": 2.5, "norm_topk_prob": True},
    },
    {
        "name": "Ling-mini-2.0", "arch": "bailingmoe2", "hf": "inclusionAI/Ling-mini-2.0",
        "hp": {"hidden_size": 2048, "intermediate_size": 5120, "moe_intermediate_size": 512,
               "num_hidden_layers": 20, "num_attention_heads": 16, "num_key_value_heads": 4,
               "head_dim": 128, "num_experts": 256, "num_shared_experts": 1,
               "num_experts_per_tok": 8, "first_k_dense_replace": 1, "n_group": 8,
               "topk_group": 4, "num_nextn_predict_layers": 1, "vocab_size": 157184,
               "max_position_embeddings": 32768, "rope_theta": 600000.0,
               "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-6,
               "routed_scaling_factor": 2.5, "norm_topk_prob": True},
    },
    {
        "name": "Phi-4-mini-instruct", "arch": "phi3",
        "hf": "microsoft/Phi-4-mini-instruct",
        "hp": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
               "num_attention_heads": 24, "num_key_value_heads": 8, "vocab_size": 200064,
               "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
               "rope_theta": 10000.0, "partial_rotary_factor": 0.75, "rms_norm_eps": 1e-5,
               "sliding_window": 262144, "tie_word_embeddings": True, "longrope": True},
    },
    {
        "name": "c4ai-command-r7b-12-2024", "arch": "cohere2",
        "hf": "CohereLabs/c4ai-command-r7b-12-2024",
        "hp": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 256000,
               "max_position_embeddings": 8192, "rope_theta": 50000.0, "layer_norm_eps": 1e-5,
               "logit_scale": 0.25, "sliding_window": 4096, "tie_word_embeddings": True},
    },
    {
        "name": "EXAONE-4.0-32B", "arch": "exaone4",
        "hf": "LGAI-EXAONE/EXAONE-4.0-32B",
        "hp": {"hidden_size": 5120, "intermediate_size": 27392, "num_hidden_layers": 64,
               "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
               "vocab_size": 102400, "max_position_embeddings": 131072,
               "rope_theta": 1000000.0, "rms_norm_eps": 1e-5, "sliding_window": 4096,
               "sliding_window_pattern": "LLLG", "rope_freqs": True},
    },
    {
        "name": "Olmo-3-7B-Instruct", "arch": "olmo2",
        "hf": "allenai/Olmo-3-7B-Instruct",
        "hp": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 100278,
               "max_position_embeddings": 65536, "rope_theta": 500000.0, "rms_norm_eps": 1e-6,
               "sliding_window": 4096,
               "layer_types": ["sliding_attention", "sliding_attention", "sliding_attention",
                               "full_attention"] * 8,
               "rope_scaling": {"rope_type": "yarn", "factor": 8.0,
                                "original_max_position_embeddings": 8192}},
    },
    {
        "name": "SmolLM3-3B", "arch": "smollm3",
        "hf": "HuggingFaceTB/SmolLM3-3B",
        "hp": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
               "num_attention_heads": 16, "num_key_value_heads": 4, "vocab_size": 128256,
               "max_position_embeddings": 65536, "rope_theta": 5000000.0, "rms_norm_eps": 1e-6,
               "tie_word_embeddings": True},
    },
    {
        "name": "GLM-4-9B-0414", "arch": "glm4", "hf": "zai-org/GLM-4-9B-0414",
        "hp": {"hidden_size": 4096, "intermediate_size": 13696, "num_hidden_layers": 40,
               "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128,
               "vocab_size": 151552, "max_position_embeddings": 32768, "rope_theta": 10000.0,
               "rms_norm_eps": 1e-5, "partial_rotary_factor": 0.5, "attention_bias": True},
    },
    {
        "name": "granite-3.3-8b-instruct", "arch": "granite",
        "hf": "ibm-granite/granite-3.3-8b-instruct",
        "hp": {"hidden_size": 4096, "intermediate_size": 12800, "num_hidden_layers": 40,
               "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 49159,
               "max_position_embeddings": 131072, "rope_theta": 10000000.0,
               "rms_norm_eps": 1e-5, "attention_multiplier": 0.0078125,
               "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
               "logits_scaling": 16.0, "tie_word_embeddings": True},
    },
    {
        "name": "ERNIE-4.5-21B-A3B-PT", "arch": "ernie4_5-moe",
        "hf": "baidu/ERNIE-4.5-21B-A3B-PT",
        "hp": {"hidden_size": 2560, "intermediate_size": 12288, "moe_intermediate_size": 1536,
               "num_hidden_layers": 28, "num_attention_heads": 20, "num_key_value_heads": 4,
               "head_dim": 128, "moe_num_experts": 64, "moe_k": 6, "moe_num_shared_experts": 2,
               "moe_layer_start_index": 1, "moe_layer_interval": 1, "vocab_size": 103424,
               "max_position_embeddings": 131072, "rope_theta": 500000.0,
               "rms_norm_eps": 1e-5, "tie_word_embeddings": True},
    },
    {
        "name": "Hunyuan-A13B-Instruct", "arch": "hunyuan-moe",
        "hf": "tencent/Hunyuan-A13B-Instruct",
        "hp": {"hidden_size": 4096, "intermediate_size": 3072, "moe_intermediate_size": 3072,
               "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
               "head_dim": 128, "num_experts": 64, "moe_topk": 8, "num_shared_expert": 1,
               "vocab_size": 128167, "max_position_embeddings": 262144, "rope_theta": 10000.0,
               "rope_scaling_alpha": 1000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True},
    },
    {
        "name": "Seed-OSS-36B-Instruct", "arch": "seed_oss",
        "hf": "ByteDance-Seed/Seed-OSS-36B-Instruct",
        "hp": {"hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
               "num_attention_heads": 80, "num_key_value_heads": 8, "head_dim": 128,
               "vocab_size": 155136, "max_position_embeddings": 524288,
               "rope_theta": 10000000.0, "rms_norm_eps": 1e-6, "attention_bias": True},
    },
    {
        "name": "phi-4", "arch": "phi3", "hf": "microsoft/phi-4",
        "hp": {"hidden_size": 5120, "intermediate_size": 17920, "num_hidden_layers": 40,
               "num_attention_heads": 40, "num_key_value_heads": 10, "vocab_size": 100352,
               "max_position_embeddings": 16384, "original_max_position_embeddings": 16384,
               "rope_theta": 250000.0, "rms_norm_eps": 1e-5},
    },
    {
        "name": "Qwen3.5-9B", "arch": "qwen35", "hf": "Qwen/Qwen3.5-9B",
        "hp": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 32,
               "num_attention_heads": 16, "num_key_value_heads": 4, "head_dim": 256,
               "linear_num_key_heads": 16, "linear_num_value_heads": 32,
               "linear_key_head_dim": 128, "linear_value_head_dim": 128,
               "linear_conv_kernel_dim": 4, "full_attention_interval": 4,
               "num_nextn_predict_layers": 1, "vocab_size": 248320,
               "max_position_embeddings": 262144, "rope_theta": 10000000.0,
               "partial_rotary_factor": 0.25, "mrope_section": [11, 11, 10, 0],
               "rms_norm_eps": 1e-6},
    },
    {
        "name": "gemma-3n-E4B-it", "arch": "gemma3n",
        "hf": "google/gemma-3n-E4B-it",
        "hp": {"hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 35,
               "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256,
               "vocab_size": 262400, "max_position_embeddings": 32768,
               "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
               "sliding_window": 512, "hidden_size_per_layer_input": 256,
               "num_kv_shared_layers": 15, "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    },
    {
        "name": "granite-4.0-h-tiny", "arch": "granitehybrid",
        "hf": "ibm-granite/granite-4.0-h-tiny",
        "hp": {"hidden_size": 1536, "intermediate_size": 512, "shared_intermediate_size": 1024,
               "num_hidden_layers": 40, "num_attention_heads": 12, "num_key_value_heads": 4,
               "num_local_experts": 64, "num_experts_per_tok": 6, "vocab_size": 100352,
               "max_position_embeddings": 131072, "mamba_d_state": 128, "mamba_n_groups": 1,
               "mamba_n_heads": 48, "mamba_d_head": 64, "mamba_d_conv": 4,
               "layer_types": (["mamba"] * 5 + ["attention"] + ["mamba"] * 4) * 4,
               "position_embedding_type": "nope", "rms_norm_eps": 1e-5,
               "attention_multiplier": 0.0078125, "embedding_multiplier": 12.0,
               "residual_multiplier": 0.22, "logits_scaling": 6.0,
               "tie_word_embeddings": True},
    },
    {
        "name": "NVIDIA-Nemotron-Nano-9B-v2", "arch": "nemotron_h",
        "hf": "nvidia/NVIDIA-Nemotron-Nano-9B-v2",
        "hp": {"hidden_size": 4480, "intermediate_size": 15680, "num_hidden_layers": 56,
               "num_attention_heads": 40, "num_key_value_heads": 8, "head_dim": 128,
               "vocab_size": 131072,
               "hybrid_override_pattern":
                   "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-",
               "ssm_state_size": 128, "conv_kernel": 4, "n_groups": 8,
               "mamba_num_heads": 128, "mamba_head_dim": 80,
               "max_position_embeddings": 131072, "layer_norm_epsilon": 1e-5},
    },
    {
        # config.json of the BF16 release (as reproduced verbatim in public code, e.g.
        # mehulbafnaa/jax-llm-examples nemotron3/tests/test_model.py); no MTP head
        "name": "NVIDIA-Nemotron-3-Nano-30B-A3B", "arch": "nemotron_h_moe",
        "hf": "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16",
        "hp": {"hidden_size": 2688, "intermediate_size": 1856, "num_hidden_layers": 52,
               "num_attention_heads": 32, "num_key_value_heads": 2, "head_dim": 128,
               "vocab_size": 131072,
               "hybrid_override_pattern":
                   "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME",
               "ssm_state_size": 128, "conv_kernel": 4, "n_groups": 8,
               "mamba_num_heads": 64, "mamba_head_dim": 64,
               "n_routed_experts": 128, "n_shared_experts": 1, "num_experts_per_tok": 6,
               "moe_intermediate_size": 1856, "moe_shared_expert_intermediate_size": 3712,
               "routed_scaling_factor": 2.5, "norm_topk_prob": True, "n_group": 1,
               "topk_group": 1, "rope_theta": 10000,
               "max_position_embeddings": 262144, "layer_norm_epsilon": 1e-5},
    },
]


# Test-only models are written in F16: a header-only file costs the same in any mix.
TEST_QUANT = "F16"


@dataclass(frozen=True)
class Fixture:
    """One model standing for its family: the spec, and the catalog label when it is one."""

    key: str  # "<arch>", or "<arch>:<model name>" for a further model of an architecture
    spec: ModelSpec
    label: str = ""  # catalog label ("<name> <quant>"), empty for a test-only model
    hf_repo: str = ""


def fixtures() -> list[Fixture]:
    """Every catalog model (in its first quant mix) and every test-only model."""
    from kvgui.core.model.catalog import load_catalog

    out: list[Fixture] = []
    seen: set[str] = set()
    for entry in load_catalog():
        if entry.name in seen:
            continue
        seen.add(entry.name)
        out.append(Fixture(_key(out, entry.arch, entry.name), entry.spec, entry.label,
                           entry.hf_repo))
    for d in TEST_MODELS:
        out.append(Fixture(_key(out, str(d["arch"]), str(d["name"])),
                           spec_from_dict(d, TEST_QUANT), "", str(d.get("hf", ""))))
    return out


def family_models(quant: str | None = None) -> dict[str, ModelSpec]:
    """key -> spec for every fixture (optionally all in one quant mix)."""
    return {f.key: f.spec if quant is None else
            ModelSpec(f.spec.name, f.spec.arch, quant, f.spec.hp) for f in fixtures()}


def _key(out: list[Fixture], arch: str, name: str) -> str:
    return f"{arch}:{name}" if any(f.spec.arch == arch for f in out) else arch
