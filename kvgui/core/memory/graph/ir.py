"""The graph IR: ggml tensors (type, ne, nb, src, view_src, flags, name) and cgraphs.

A ``Tensor`` carries what ggml-alloc and ggml_backend_sched read from a ``ggml_tensor``: its
type, ``ne``/``nb`` (ints or ``sym.Sym``), the op and its sources, the view it aliases
(``view_src``, always the storage-owning tensor, as ggml_new_tensor_impl resolves it), the
INPUT/OUTPUT flags and the name llama.cpp's callback gives it (with the layer, ``il``).
Weights, the KV cache and recurrent states are leaves with external storage: ``loc`` says
where they live (``Loc``), which is what the scheduler assigns backends from. ``Graph`` adds
tensors in ggml_build_forward_expand's order: depth first, sources left to right, each once;
ops with no sources that are not views (op NONE) are leafs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kvgui.core.gguf.ggml_types import GGMLType
from kvgui.core.memory.graph.sym import Dim

# ggml_tensor_flag
INPUT = 1
OUTPUT = 2

# ops that only reinterpret their source (ggml-backend.cpp ggml_is_view_op)
VIEW_OPS = frozenset({"VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"})


@dataclass(frozen=True)
class Loc:
    """Where a tensor with its own buffer lives, as llama.cpp places it.

    ``kind``: "input" (token embeddings and other input-layer weights: host memory), "layer"
    (blk.``il``.* weights: the layer's device), "output" (output norm and head: the output
    layer's device), "kv" (the KV cache of layer ``il``), "rs" (recurrent state of layer
    ``il``). ``weight`` tells weights (buffer usage WEIGHTS, which pull ops to their
    backend) from caches and states."""

    kind: str
    il: int = -1

    @property
    def weight(self) -> bool:
        return self.kind in ("input", "layer", "output")


class Tensor:
    """One ggml_tensor of the graph."""

    __slots__ = ("flags", "il", "loc", "name", "nb", "ne", "op", "params", "src", "type",
                 "view_offs", "view_src")

    def __init__(self, op: str, type_: GGMLType, ne: tuple[Dim, Dim, Dim, Dim],
                 nb: tuple[Dim, Dim, Dim, Dim], src: list[Tensor | None] | None = None,
                 view_src: Tensor | None = None, view_offs: Dim = 0, il: int = -1,
                 loc: Loc | None = None, name: str = "") -> None:
        self.op = op
        self.type = type_
        self.ne = ne
        self.nb = nb
        self.src: list[Tensor | None] = src if src is not None else []
        self.view_src = view_src
        self.view_offs = view_offs
        self.flags = 0
        self.name = name
        self.il = il  # the layer being built when the tensor was made (-1: none)
        self.loc = loc  # external storage (weights, KV cache, states); None: ggml-alloc's
        self.params: dict[str, Any] = {}

    @property
    def is_input(self) -> bool:
        return bool(self.flags & INPUT)

    @property
    def is_output(self) -> bool:
        return bool(self.flags & OUTPUT)

    def layout(self) -> tuple[object, ...]:
        """What ggml_are_same_layout compares."""
        return (self.type.id, self.ne, self.nb)

    def __repr__(self) -> str:
        return f"<{self.op} {self.name or '?'} {self.type.name} {list(self.ne)}>"


class Graph:
    """A ggml_cgraph: ``nodes`` and ``leafs`` in the order ggml_visit_parents appends them."""

    def __init__(self) -> None:
        self.nodes: list[Tensor] = []
        self.leafs: list[Tensor] = []
        self._seen: set[int] = set()

    def expand(self, root: Tensor) -> None:
        """ggml_build_forward_expand (ggml_build_forward_select too: every candidate is
        visited, which only adds the unused one as a leaf or node)."""
        seen = self._seen
        if id(root) in seen:
            return
        seen.add(id(root))
        stack: list[tuple[Tensor, int]] = [(root, 0)]
        while stack:
            node, i = stack[-1]
            srcs = node.src
            while i < len(srcs):
                src = srcs[i]
                i += 1
                if src is not None and id(src) not in seen:
                    seen.add(id(src))
                    stack[-1] = (node, i)
                    stack.append((src, 0))
                    break
            else:
                stack.pop()
                (self.leafs if node.op == "NONE" else self.nodes).append(node)
