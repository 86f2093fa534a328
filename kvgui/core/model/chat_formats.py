"""Which prompt format to chat with a GGUF in, when the file brings no chat template.

A GGUF's ``tokenizer.chat_template`` is the authority. Without one (a base model, or a file
converted without it) llama-cpp-python silently falls back to llama-2's format whatever the
model is; kvgui says so, offers a completion mode (the model continues the text), and offers a
template picked by the architecture first (Gemma's turn markers for a Gemma model).

The names are llama-cpp-python's chat formats (``llama_chat_format``'s registry, 0.3.36).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

# llama-cpp-python 0.3.36's registered chat formats that plain chat can use.
CHAT_FORMATS = (
    "chatml", "gemma", "llama-3", "llama-2", "mistral-instruct", "qwen", "zephyr", "vicuna",
    "alpaca", "chatglm3", "baichuan-2", "openchat", "phind", "intel", "saiga",
)
LLAMA_CPP_PYTHON_FALLBACK = "llama-2"  # what it uses when the GGUF has no template

# general.architecture -> the format models of that architecture are usually tuned with
_USUAL: Mapping[str, str] = MappingProxyType({
    "gemma": "gemma", "gemma2": "gemma", "gemma3": "gemma", "gemma3n": "gemma",
    "gemma-embedding": "gemma",
    "qwen": "qwen", "qwen2": "chatml", "qwen2moe": "chatml", "qwen3": "chatml",
    "qwen3moe": "chatml", "qwen2vl": "chatml",
    "mistral3": "mistral-instruct", "mistral": "mistral-instruct",
    "chatglm": "chatglm3", "glm4": "chatglm3",
    "baichuan": "baichuan-2",
    "phi3": "chatml", "stablelm": "chatml", "mpt": "chatml", "starcoder2": "chatml",
    "internlm2": "chatml", "olmo2": "chatml", "smollm3": "chatml",
})


def usual_format(architecture: str | None, tokenizer_pre: str | None = None) -> str | None:
    """The architecture's usual chat format; a llama model by its tokenizer (llama-3's BPE
    or llama-2's SentencePiece). None when kvgui knows no usual one."""
    arch = (architecture or "").lower()
    if arch == "llama":
        return "llama-3" if (tokenizer_pre or "").startswith("llama-bpe") or \
            tokenizer_pre == "llama3" else "llama-2"
    return _USUAL.get(arch)


def format_choices(architecture: str | None, tokenizer_pre: str | None = None) -> list[str]:
    """Every chat format, the architecture's usual one first."""
    first = usual_format(architecture, tokenizer_pre)
    return ([first] if first else []) + [f for f in CHAT_FORMATS if f != first]
