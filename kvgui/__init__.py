"""kvgui: will this GGUF model fit on my GPU, at this context, with which KV cache type?"""

__version__ = "0.1.0"
