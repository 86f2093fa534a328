"""Per-architecture GGUF layouts: which tensors a converted model of each architecture has,
with which shapes, and which metadata keys (see base.py). ``LAYOUTS`` maps the llama.cpp
architecture name to its Layout; each names the llama.cpp and convert files it follows."""

from __future__ import annotations

from kvgui.core.model.layouts import recurrent, transformers
from kvgui.core.model.layouts.base import Hp, Layout, Shapes, common_metadata

LAYOUTS: dict[str, Layout] = {**transformers.LAYOUTS, **recurrent.LAYOUTS}

__all__ = ["LAYOUTS", "Hp", "Layout", "Shapes", "common_metadata"]
