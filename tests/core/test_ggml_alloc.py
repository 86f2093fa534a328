"""The ggml-alloc replica: the inline allocator against the reference one, and the replay's
layer reuse against a full replay, on random graphs (the real graphs are in test_compute.py
and, against llama.cpp itself, test_against_llama_cpp.py)."""

from __future__ import annotations

import random

import pytest

from kvgui.core.gguf import ggml_types
from kvgui.core.memory.graph import alloc as ggml_alloc
from kvgui.core.memory.graph.alloc import Allocator, Program, record, replay
from kvgui.core.memory.graph.ir import INPUT, OUTPUT, Graph, Tensor
from kvgui.core.memory.graph.sym import Dim, U

F32 = ggml_types.by_name("f32")


def tensor(op: str, width: Dim, *srcs: Tensor | None, il: int = -1) -> Tensor:
    """An f32 vector of ``width`` elements: ADD can reuse a parent of the same width in place,
    MUL_MAT never does."""
    return Tensor(op, F32, (width, 1, 1, 1), (4, 4 * width, 4 * width, 4 * width),
                  list(srcs), il=il)


def leaf(width: Dim) -> Tensor:
    t = tensor("NONE", width)
    t.flags |= INPUT
    return t


@pytest.mark.parametrize("scan", [False, True])
@pytest.mark.parametrize("seed", range(40))
def test_inline_allocator_equals_the_reference(seed: int, scan: bool) -> None:
    # the scan mode with empty tensors too: freed anywhere (beyond the endless block even,
    # as a recurrent state's empty extra-row copies are over several devices), ggml keeps
    # its list out of address order and the scan follows it
    rng = random.Random(seed)
    sizes = [32, 64, 96, 128, 256, 1024, 4096] + ([0] if scan else [])
    ops: list[tuple[int, int]] = []
    placed: list[int] = []
    n = 0
    kind = [rng.randrange(len(sizes)) for _ in range(300)]  # each storage's size
    for _ in range(rng.randint(1, 300)):
        if placed and rng.random() < 0.45:
            s = placed.pop(rng.randrange(len(placed)))
            ops.append((~s, kind[s]))
        else:
            ops.append((n, kind[n]))
            placed.append(n)
            n += 1
    al = Allocator()
    expected = [0] * n
    for s, k in ops:
        if s >= 0:
            expected[s] = al.alloc(sizes[k])
        else:
            al.free(expected[~s], sizes[k])
    offset = [0] * n
    hoff: list[int] = [0] if scan else []  # (the scan lists the endless block too)
    hsize: list[int] = [ggml_alloc._UNBOUNDED] if scan else []
    tail, top = ggml_alloc._run(tuple(ops), sizes, offset, hoff, hsize, 0, 0, scan)
    assert offset == expected
    blocks = [[o, sz] for o, sz in zip(hoff, hsize, strict=True)]
    if scan:
        assert blocks == al.blocks
    else:
        assert [*blocks, [tail]] == [*al.blocks[:-1], [al.blocks[-1][0]]]
    assert top == al.max_size
    program = Program(tuple((x,) for x in sizes), tuple((0, x) for x in sizes), n, tuple(ops),
                      (), (), (), ())
    assert replay(program, (1,), 32) == al.max_size


def random_graph(rng: random.Random) -> Graph:
    """Layers of a few kinds in a pattern, each reading the residual stream, its own
    intermediates and some inputs (freed after their last user), some ops in place."""
    g = Graph()
    widths: list[Dim] = [rng.choice([0, 1, 2, 3, 8]) + rng.choice([0, 0, 1, 4]) * U
                         for _ in range(6)]

    def op(*srcs: Tensor | None, w: int = 0, inplace: bool = False, il: int = -1) -> Tensor:
        return tensor("ADD" if inplace else "MUL_MAT", widths[w], *srcs, il=il)

    inputs = [leaf(widths[rng.randrange(6)]) for _ in range(rng.randint(1, 4))]
    cur = op(inputs[0])
    g.expand(cur)
    n_layer = rng.randint(1, 24)
    # each kind of layer: (source, width, in place) per intermediate, the inputs it reads
    kinds = [([(rng.randrange(1 + i), rng.randrange(6), rng.random() < 0.3)
               for i in range(rng.randint(1, 5))],
              [i for i in range(len(inputs)) if rng.random() < 0.5])
             for _ in range(rng.randint(1, 3))]
    pattern = [rng.randrange(len(kinds)) for _ in range(rng.randint(1, 4))]
    last_use = [rng.randrange(n_layer + 1) for _ in inputs]  # (n_layer: the output head)
    for il in range(n_layer):
        steps, reads = kinds[pattern[il % len(pattern)]]
        first = op(cur, inplace=True, il=il)
        parts = [first]
        for src, w, inplace in steps:
            parts.append(op(parts[src], w=w, inplace=inplace, il=il))
        for i, x in enumerate(inputs):
            if (i in reads and il < last_use[i]) or il == last_use[i]:
                parts.append(op(parts[-1], x, w=steps[0][1], il=il))
        cur = op(first, parts[-1], inplace=True, il=il)  # the residual stream goes on in place
        g.expand(cur)
    out = op(cur, *(x for i, x in enumerate(inputs) if last_use[i] == n_layer), w=5)
    out.flags |= OUTPUT
    g.expand(out)
    return g


@pytest.mark.parametrize("seed", range(80))
def test_layer_reuse_equals_the_full_replay(seed: int) -> None:
    rng = random.Random(seed)
    program = record(random_graph(rng))
    for _ in range(8):
        scale = program.scale({"U": rng.choice([1, 2, 3, 7, 64, 100])})
        for align in (ggml_alloc.CPU_ALIGN, ggml_alloc.CUDA_ALIGN):
            assert replay(program, scale, align) == replay(program, scale, align, shortcut=False)


def test_alike_layers_share_a_shape_and_an_input_freed_makes_its_own() -> None:
    g = Graph()
    mask = leaf(U)
    cur = tensor("MUL_MAT", U, mask)  # (so the first layer can go on in place too)
    for il in range(5):
        first = tensor("ADD", U, cur, il=il)
        attn = tensor("MUL_MAT", U, *((first, mask) if il < 4 else (first,)), il=il)
        cur = tensor("ADD", U, first, attn, il=il)
    g.expand(cur)
    program = record(g)
    # layers 0..2 are alike; layer 3 is the mask's last user and frees it (4: the epilogue)
    assert program.shapes == (0, 0, 0, 1)


def test_a_cast_counts_itself_among_its_children() -> None:
    """ggml_cast's second source is itself: ggml-alloc counts it as one more child, which it
    drops at the cast's own step, so the cast lives until its real consumer is done."""
    from kvgui.core.memory.graph import ops as ggml

    ctx = ggml.Context()
    x = ggml.new_tensor_1d(ctx, F32, 64)
    ggml.set_input(x)
    product = ggml.mul(ctx, x, x)
    y = ggml.cast(ctx, product, ggml_types.by_name("f16"))
    z = ggml.mul_mat(ctx, y, x)
    g = Graph()
    g.expand(z)
    assert y.src == [product, y] and g.nodes == [product, y, z]
    ops = record(g).prologue
    # x, the product, the cast; the product is freed; z; then the cast and x
    assert ops == ((0, 0), (1, 0), (2, 1), (~1, 0), (3, 2), (~2, 1), (~0, 0))
