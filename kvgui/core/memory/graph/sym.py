"""Symbolic tensor dimensions: small polynomials over the shape variables of one ubatch.

A reserve graph is built once per model and replayed for every context, so a tensor's ``ne``
cannot be plain numbers: ``n_tokens`` is ``n_seqs * U``, the mask is ``K x U`` per stream, the
logits ``n_vocab x O``. A dimension is an ``int`` when it is fixed (a head size, n_embd) and a
``Sym`` otherwise: a polynomial with integer coefficients over the variables below. Products and
sums stay polynomials, so byte sizes (``ggml_row_size * ne1 * ne2 * ne3``) and strides do too,
and two layouts compare exactly (ggml_are_same_layout) without knowing the numbers.

Variables (``VARS``): ``U`` tokens per sequence of the ubatch (n_seq_tokens), ``O`` outputs,
``K`` KV cells per stream, ``W`` sliding-window cells per stream. ``n_seqs`` and ``n_stream``
are small integers known when the graph is built (a graph per -np / -kvu); a variable whose
value is 1 is built as the constant 1 (ggml treats dimensions of 1 specially: contiguity,
broadcasting), see ``Shape.key``.

Padded quantities (GGML_PAD(n, k) of a symbolic n) are *derived variables*: a new name whose
value is computed from the others when a shape is evaluated (``pad``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Union

# The base variables, in the order the docstring gives them.
VARS = ("U", "O", "K", "W")

Mono = tuple[str, ...]  # a monomial: variable names, sorted, repeated for powers
Dim = Union[int, "Sym"]

# derived variables: name -> (the variables it reads, how its value follows from them)
_DERIVED: dict[str, Callable[[Mapping[str, int]], int]] = {}


class SymbolicError(ValueError):
    """ggml would branch on a value the symbolic graph does not know (e.g. an inexact
    division): the graph cannot be built symbolically this way."""


class Sym:
    """A polynomial in the shape variables, never a constant (those are ints)."""

    __slots__ = ("_hash", "terms")

    def __init__(self, terms: tuple[tuple[Mono, int], ...]) -> None:
        self.terms = terms  # sorted by monomial, no zero coefficient, not a constant alone
        self._hash = hash(terms)

    @staticmethod
    def var(name: str) -> Sym:
        return Sym((((name,), 1),))

    @staticmethod
    def make(acc: Mapping[Mono, int]) -> Dim:
        terms = tuple(sorted((m, c) for m, c in acc.items() if c))
        if not terms:
            return 0
        if len(terms) == 1 and not terms[0][0]:
            return terms[0][1]
        return Sym(terms)

    def _acc(self) -> dict[Mono, int]:
        return dict(self.terms)

    def __add__(self, other: Dim) -> Dim:
        acc = self._acc()
        for m, c in _terms(other):
            acc[m] = acc.get(m, 0) + c
        return Sym.make(acc)

    __radd__ = __add__

    def __neg__(self) -> Dim:
        return Sym.make({m: -c for m, c in self.terms})

    def __sub__(self, other: Dim) -> Dim:
        return self + (-other)

    def __rsub__(self, other: Dim) -> Dim:
        return (-self) + other

    def __mul__(self, other: Dim) -> Dim:
        if isinstance(other, int):
            if other == 0:
                return 0
            return Sym(tuple((m, c * other) for m, c in self.terms))
        acc: dict[Mono, int] = {}
        for m1, c1 in self.terms:
            for m2, c2 in other.terms:
                m = tuple(sorted(m1 + m2))
                acc[m] = acc.get(m, 0) + c1 * c2
        return Sym.make(acc)

    __rmul__ = __mul__

    def __floordiv__(self, other: int) -> Dim:
        if not isinstance(other, int) or other == 0:
            raise SymbolicError(f"cannot divide {self} by {other}")
        if any(c % other for _, c in self.terms):
            raise SymbolicError(f"{self} is not a multiple of {other}")
        return Sym.make({m: c // other for m, c in self.terms})

    def __mod__(self, other: int) -> int:
        """Only when every term is a multiple (then 0); otherwise the value decides."""
        if isinstance(other, int) and other and all(c % other == 0 for _, c in self.terms):
            return 0
        raise SymbolicError(f"{self} % {other} depends on the shape")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sym) and self.terms == other.terms

    def __hash__(self) -> int:
        return self._hash

    def eval(self, env: Mapping[str, int]) -> int:
        total = 0
        for m, c in self.terms:
            for v in m:
                c *= env[v]
            total += c
        return total

    def variables(self) -> set[str]:
        return {v for m, _ in self.terms for v in m}

    def __repr__(self) -> str:
        parts = []
        for m, c in self.terms:
            body = "*".join(m)
            parts.append(str(c) if not m else body if c == 1 else f"{c}*{body}")
        return " + ".join(parts)


def _terms(d: Dim) -> Iterable[tuple[Mono, int]]:
    if isinstance(d, int):
        return (((), d),) if d else ()
    return d.terms


U, O, K, W = (Sym.var(v) for v in VARS)  # noqa: E741 (the variables' own names)


def evaluate(d: Dim, env: Mapping[str, int]) -> int:
    return d if isinstance(d, int) else d.eval(env)


def monomials(d: Dim) -> tuple[tuple[Mono, int], ...]:
    """``d`` as (monomial, coefficient) pairs; () for 0, ((), c) for a constant."""
    return tuple(_terms(d))


def gt(a: Dim, b: Dim) -> bool:
    """a > b for every positive value of the variables (what ggml's comparisons of strides
    mean here); SymbolicError where the values decide."""
    if isinstance(a, int) and isinstance(b, int):
        return a > b
    diff = a - b
    coeffs = [c for _, c in _terms(diff)]
    if coeffs and all(c >= 0 for c in coeffs):
        return True
    if all(c <= 0 for c in coeffs):
        return False
    raise SymbolicError(f"whether {a!r} > {b!r} depends on the shape")


def pad(d: Dim, n: int) -> Dim:
    """GGML_PAD(d, n): a multiple of n at least d; a derived variable when d is symbolic."""
    if isinstance(d, int):
        return -(-d // n) * n
    if all(c % n == 0 for _, c in d.terms):
        return d  # (a multiple of n whatever the values)
    name = f"pad({d!r},{n})"
    if name not in _DERIVED:
        inner = d

        def value(env: Mapping[str, int]) -> int:
            return -(-inner.eval(env) // n) * n

        _DERIVED[name] = value
    return Sym.var(name)


def with_derived(env: dict[str, int], names: Iterable[str]) -> dict[str, int]:
    """``env`` completed with the values of the derived variables among ``names``."""
    for name in names:
        if name not in env:
            env[name] = _DERIVED[name](env)
    return env
