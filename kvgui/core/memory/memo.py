"""The estimate's memo for one model: what it works out once and reuses per slider step.

Placements per -ngl/split, the rule check per cache pair, compute programs and peaks per
context shape. It is an explicit object owned by whoever estimates a model repeatedly (the
window's controller, ``fit``'s searches, the CLI's tables); an ``estimate()`` without one works
everything out afresh. Nothing is hidden in the model: a ModelInfo stays a plain value.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class ModelMemo:
    """Bounded memo tables, one per kind of result, all for ``model``."""

    def __init__(self, model: object, limit: int = 4096) -> None:
        self.model = model
        self.limit = limit
        self._tables: dict[str, dict[Hashable, Any]] = {}

    def get(self, kind: str, key: Hashable, make: Callable[[], T]) -> T:
        table = self._tables.setdefault(kind, {})
        try:
            return table[key]
        except KeyError:
            pass
        value = make()
        self.put(kind, key, value)
        return value

    def peek(self, kind: str, key: Hashable) -> Any:
        """The value stored for ``key``, or None."""
        return self._tables.get(kind, {}).get(key)

    def put(self, kind: str, key: Hashable, value: Any) -> None:
        table = self._tables.setdefault(kind, {})
        if len(table) >= self.limit:
            table.clear()  # a slider sweep never needs this many; start over rather than grow
        table[key] = value

    def for_model(self, model: object) -> ModelMemo:
        """This memo if it belongs to ``model``, else a fresh one (a memo never mixes models)."""
        return self if model is self.model else ModelMemo(model, self.limit)

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())
