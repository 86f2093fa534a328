"""Regenerate resources/models.json, the model catalog the GUI opens on.

Each model is stored as a compact spec (llama.cpp arch + the HF config.json numbers that fix
its tensor table + the quant mixes offered); kvgui.core.model.archspec expands it to a full GGUF
header at load time. The derived figures written next to each spec (tensor count, parameter
count, file size) let the catalog list models without expanding them, and the tests check
that they still match archspec.

    python packaging/make_catalog.py          # rewrite resources/models.json
    python packaging/make_catalog.py --check  # exit 1 if the file is stale
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from kvgui.core.model.archspec import build_header, spec_from_dict

OUT = Path(__file__).resolve().parents[1] / "resources" / "models.json"

# Numbers from each model's public config.json on Hugging Face (text part for Gemma 3).
# Extras that config.json does not spell out the way the GGUF needs them:
#   rope_freqs      llama3 rope scaling: convert adds a rope_freqs.weight table
#   full_attn_idxs  LFM2's attention layers (the rest are short-conv layers)
#   vocab_size      tokens in the GGUF (Gemma 3: the 262144 tokenizer pieces, not the
#                   padded 262208 of config.json; convert drops the padding rows)
MODELS: list[dict[str, Any]] = [
    {
        "name": "Llama-3.1-8B-Instruct", "arch": "llama", "quants": ["Q4_K_M", "Q8_0"],
        "hf": "meta-llama/Llama-3.1-8B-Instruct",
        "hp": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
               "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
               "max_position_embeddings": 131072, "rope_theta": 500000.0,
               "rms_norm_eps": 1e-5, "rope_freqs": True},
    },
    {
        "name": "Llama-3.2-3B-Instruct", "arch": "llama", "quants": ["Q4_K_M", "F16"],
        "hf": "meta-llama/Llama-3.2-3B-Instruct",
        "hp": {"hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 28,
               "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
               "vocab_size": 128256, "max_position_embeddings": 131072,
               "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "tie_word_embeddings": True,
               "rope_freqs": True},
    },
    {
        "name": "Qwen2.5-7B-Instruct", "arch": "qwen2", "quants": ["Q4_K_M"],
        "hf": "Qwen/Qwen2.5-7B-Instruct",
        "hp": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
               "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
               "max_position_embeddings": 32768, "rope_theta": 1000000.0,
               "rms_norm_eps": 1e-6},
    },
    {
        "name": "Qwen2.5-32B-Instruct", "arch": "qwen2", "quants": ["Q4_K_M"],
        "hf": "Qwen/Qwen2.5-32B-Instruct",
        "hp": {"hidden_size": 5120, "intermediate_size": 27648, "num_hidden_layers": 64,
               "num_attention_heads": 40, "num_key_value_heads": 8, "vocab_size": 152064,
               "max_position_embeddings": 32768, "rope_theta": 1000000.0,
               "rms_norm_eps": 1e-6},
    },
    {
        "name": "Gemma-2-9B-it", "arch": "gemma2", "quants": ["Q4_K_M"],
        "hf": "google/gemma-2-9b-it",
        "hp": {"hidden_size": 3584, "intermediate_size": 14336, "num_hidden_layers": 42,
               "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
               "vocab_size": 256000, "max_position_embeddings": 8192, "rope_theta": 10000.0,
               "rms_norm_eps": 1e-6, "sliding_window": 4096, "attn_logit_softcapping": 50.0,
               "final_logit_softcapping": 30.0, "tie_word_embeddings": True},
    },
    {
        "name": "Gemma-3-12B-it", "arch": "gemma3", "quants": ["Q4_K_M"],
        "hf": "google/gemma-3-12b-it",
        "hp": {"hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48,
               "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256,
               "vocab_size": 262144, "max_position_embeddings": 131072,
               "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
               "rope_scaling": {"type": "linear", "factor": 8.0}, "sliding_window": 1024,
               "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    },
    {
        "name": "Gemma-3-27B-it", "arch": "gemma3", "quants": ["Q4_K_M"],
        "hf": "google/gemma-3-27b-it",
        "hp": {"hidden_size": 5376, "intermediate_size": 21504, "num_hidden_layers": 62,
               "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128,
               "vocab_size": 262144, "max_position_embeddings": 131072,
               "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
               "rope_scaling": {"type": "linear", "factor": 8.0}, "sliding_window": 1024,
               "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    },
    {
        "name": "Mistral-Nemo-Instruct-2407", "arch": "llama", "quants": ["Q4_K_M"],
        "hf": "mistralai/Mistral-Nemo-Instruct-2407",
        "hp": {"hidden_size": 5120, "intermediate_size": 14336, "num_hidden_layers": 40,
               "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
               "vocab_size": 131072, "max_position_embeddings": 1024000,
               "rope_theta": 1000000.0, "rms_norm_eps": 1e-5},
    },
    {
        "name": "Qwen3-8B", "arch": "qwen3", "quants": ["Q4_K_M", "Q6_K"],
        "hf": "Qwen/Qwen3-8B",
        "hp": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
               "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
               "vocab_size": 151936, "max_position_embeddings": 40960,
               "rope_theta": 1000000.0, "rms_norm_eps": 1e-6},
    },
    {
        "name": "Qwen3-30B-A3B", "arch": "qwen3moe", "quants": ["Q4_K_M"],
        "hf": "Qwen/Qwen3-30B-A3B",
        "hp": {"hidden_size": 2048, "intermediate_size": 6144, "moe_intermediate_size": 768,
               "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
               "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
               "vocab_size": 151936, "max_position_embeddings": 40960,
               "rope_theta": 1000000.0, "rms_norm_eps": 1e-6},
    },
    {
        "name": "DeepSeek-V2-Lite-Chat", "arch": "deepseek2", "quants": ["Q4_K_M"],
        "hf": "deepseek-ai/DeepSeek-V2-Lite-Chat",
        "hp": {"hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408,
               "num_hidden_layers": 27, "num_attention_heads": 16, "num_key_value_heads": 16,
               "kv_lora_rank": 512, "q_lora_rank": None, "qk_nope_head_dim": 128,
               "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 64,
               "n_shared_experts": 2, "num_experts_per_tok": 6, "first_k_dense_replace": 1,
               "routed_scaling_factor": 1.0, "norm_topk_prob": False, "vocab_size": 102400,
               "max_position_embeddings": 163840, "rope_theta": 10000.0,
               "rms_norm_eps": 1e-6,
               "rope_scaling": {"type": "yarn", "factor": 40.0,
                                "original_max_position_embeddings": 4096,
                                "mscale": 0.707, "mscale_all_dim": 0.707}},
    },
    {
        "name": "LFM2-1.2B", "arch": "lfm2", "quants": ["Q8_0"],
        "hf": "LiquidAI/LFM2-1.2B",
        # block_ff_dim 12288 auto-adjusted as convert does: 2/3 * 12288 -> multiple of 256
        "hp": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
               "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 65536,
               "max_position_embeddings": 128000, "rope_theta": 1000000.0,
               "rms_norm_eps": 1e-5, "conv_L_cache": 3, "full_attn_idxs": [2, 5, 8, 10, 12, 14],
               "tie_word_embeddings": True},
    },
    {
        "name": "Mamba-Codestral-7B-v0.1", "arch": "mamba2", "quants": ["Q4_K_M"],
        "hf": "mistralai/Mamba-Codestral-7B-v0.1",
        "hp": {"hidden_size": 4096, "num_hidden_layers": 64, "state_size": 128,
               "n_groups": 8, "head_dim": 64, "expand": 2, "conv_kernel": 4,
               "vocab_size": 32768, "layer_norm_epsilon": 1e-5},
    },
    {
        "name": "gpt-oss-20b", "arch": "gpt-oss", "quants": ["MXFP4_MOE"],
        "hf": "openai/gpt-oss-20b",
        "hp": {"hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 24,
               "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
               "num_local_experts": 32, "num_experts_per_tok": 4, "vocab_size": 201088,
               "max_position_embeddings": 131072, "rope_theta": 150000.0,
               "rms_norm_eps": 1e-5, "sliding_window": 128,
               "rope_scaling": {"type": "yarn", "factor": 32.0,
                                "original_max_position_embeddings": 4096}},
    },
    # --- families beyond the first fourteen (issue 13) ------------------------------------
    {
        "name": "Llama-4-Scout-17B-16E-Instruct", "arch": "llama4", "quants": ["Q4_K_M"],
        "hf": "meta-llama/Llama-4-Scout-17B-16E-Instruct",
        "hp": {"hidden_size": 5120, "intermediate_size": 8192, "intermediate_size_mlp": 16384,
               "num_hidden_layers": 48, "num_attention_heads": 40, "num_key_value_heads": 8,
               "head_dim": 128, "num_local_experts": 16, "num_experts_per_tok": 1,
               "interleave_moe_layer_step": 1, "vocab_size": 202048,
               "max_position_embeddings": 10485760, "rope_theta": 500000.0,
               "rms_norm_eps": 1e-5, "rope_freqs": True},
    },
    {
        "name": "Mistral-Small-3.2-24B-Instruct-2506", "arch": "mistral3", "quants": ["Q4_K_M"],
        "hf": "mistralai/Mistral-Small-3.2-24B-Instruct-2506",
        "hp": {"hidden_size": 5120, "intermediate_size": 32768, "num_hidden_layers": 40,
               "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
               "vocab_size": 131072, "max_position_embeddings": 131072,
               "rope_theta": 1000000000.0, "rms_norm_eps": 1e-5},
    },
    {
        "name": "GLM-4.5-Air", "arch": "glm4moe", "quants": ["Q4_K_M"], "hf": "zai-org/GLM-4.5-Air",
        "hp": {"hidden_size": 4096, "intermediate_size": 10944, "moe_intermediate_size": 1408,
               "num_hidden_layers": 46, "num_attention_heads": 96, "num_key_value_heads": 8,
               "head_dim": 128, "n_routed_experts": 128, "n_shared_experts": 1,
               "num_experts_per_tok": 8, "first_k_dense_replace": 1,
               "num_nextn_predict_layers": 1, "vocab_size": 151552,
               "max_position_embeddings": 131072, "rope_theta": 1000000.0,
               "rms_norm_eps": 1e-5, "partial_rotary_factor": 0.5, "attention_bias": True,
               "routed_scaling_factor": 1.0, "norm_topk_prob": True},
    },
    {
        "name": "Qwen3-Next-80B-A3B-Instruct", "arch": "qwen3next", "quants": ["Q4_K_M"],
        "hf": "Qwen/Qwen3-Next-80B-A3B-Instruct",
        "hp": {"hidden_size": 2048, "intermediate_size": 5120, "moe_intermediate_size": 512,
               "shared_expert_intermediate_size": 512, "num_hidden_layers": 48,
               "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
               "num_experts": 512, "num_experts_per_tok": 10, "linear_num_key_heads": 16,
               "linear_num_value_heads": 32, "linear_key_head_dim": 128,
               "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
               "full_attention_interval": 4, "num_nextn_predict_layers": 1,
               "vocab_size": 151936, "max_position_embeddings": 262144,
               "rope_theta": 10000000.0, "partial_rotary_factor": 0.25, "rms_norm_eps": 1e-6},
    },
    {
        "name": "Qwen3.5-35B-A3B", "arch": "qwen35moe", "quants": ["Q4_K_M"],
        "hf": "Qwen/Qwen3.5-35B-A3B",
        "hp": {"hidden_size": 2048, "moe_intermediate_size": 512,
               "shared_expert_intermediate_size": 512, "num_hidden_layers": 40,
               "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256,
               "num_experts": 256, "num_experts_per_tok": 8, "linear_num_key_heads": 16,
               "linear_num_value_heads": 32, "linear_key_head_dim": 128,
               "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
               "full_attention_interval": 4, "num_nextn_predict_layers": 1,
               "vocab_size": 248320, "max_position_embeddings": 262144,
               "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
               "mrope_section": [11, 11, 10, 0], "rms_norm_eps": 1e-6},
    },
    {
        "name": "gemma-4-26B-A4B-it", "arch": "gemma4", "quants": ["Q4_K_M"],
        "hf": "google/gemma-4-26B-A4B-it",
        "hp": {"hidden_size": 2816, "intermediate_size": 2112, "moe_intermediate_size": 704,
               "num_hidden_layers": 30, "num_attention_heads": 16, "num_key_value_heads": 8,
               "num_global_key_value_heads": 2, "head_dim": 256, "global_head_dim": 512,
               "attention_k_eq_v": True, "enable_moe_block": True, "num_experts": 128,
               "top_k_experts": 8, "num_kv_shared_layers": 0, "hidden_size_per_layer_input": 0,
               "sliding_window": 1024,
               "layer_types": (["sliding_attention"] * 5 + ["full_attention"]) * 5,
               "vocab_size": 262144, "max_position_embeddings": 262144,
               "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0,
               "final_logit_softcapping": 30.0, "rms_norm_eps": 1e-6,
               "tie_word_embeddings": True},
    },
    {
        "name": "gpt-oss-120b", "arch": "gpt-oss", "quants": ["MXFP4_MOE"],
        "hf": "openai/gpt-oss-120b",
        "hp": {"hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 36,
               "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64,
               "num_local_experts": 128, "num_experts_per_tok": 4, "vocab_size": 201088,
               "max_position_embeddings": 131072, "rope_theta": 150000.0,
               "rms_norm_eps": 1e-5, "sliding_window": 128,
               "rope_scaling": {"type": "yarn", "factor": 32.0,
                                "original_max_position_embeddings": 4096}},
    },
    {
        "name": "DeepSeek-R1-0528", "arch": "deepseek2", "quants": ["Q4_K_M"],
        "hf": "deepseek-ai/DeepSeek-R1-0528",
        "hp": {"hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048,
               "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
               "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
               "qk_nope_head_dim": 128, "v_head_dim": 128, "n_routed_experts": 256,
               "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3,
               "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5,
               "norm_topk_prob": True, "scoring_func": "sigmoid", "vocab_size": 129280,
               "max_position_embeddings": 163840, "rope_theta": 10000.0, "rms_norm_eps": 1e-6,
               "rope_scaling": {"type": "yarn", "factor": 40.0,
                                "original_max_position_embeddings": 4096, "mscale": 1.0,
                                "mscale_all_dim": 1.0}},
    },
]


def build() -> dict[str, Any]:
    models = []
    for m in MODELS:
        derived = {}
        for q in m["quants"]:
            header = build_header(spec_from_dict(m, q))
            derived[q] = {"n_tensors": len(header.tensors), "n_params": header.n_params,
                          "file_bytes": header.file_bytes}
        models.append({**m, "derived": derived})
    return {"format": 1, "models": models}


def render() -> str:
    return json.dumps(build(), indent=1, sort_keys=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that the file is current")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        current = OUT.read_text(encoding="utf-8") if OUT.exists() else ""
        if current != text:
            print(f"{OUT} is stale; run python packaging/make_catalog.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(text)} bytes, {len(MODELS)} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
