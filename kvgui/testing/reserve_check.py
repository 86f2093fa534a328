"""kvgui's rebuilt reserve graph against llama.cpp's own, setting by setting.

For a model (a catalog label, written as a sparse header-faithful GGUF, or a .gguf path) and
a matrix of settings, runs the bundled llama.cpp's no_alloc dry run and compares its CPU
compute buffer and graph node count with what kvgui's builders and ggml-alloc replay give.

    python -m kvgui.testing.reserve_check "Gemma-3-12B-it Q4_K_M" [--swa]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.memory import builders, reserve
from kvgui.core.memory.estimate import context_shape
from kvgui.core.memory.graph.alloc import CPU_ALIGN
from kvgui.core.model.info import ModelInfo, load_model

ON, OFF = FlashAttn.ON, FlashAttn.OFF


def default_matrix(swa: bool = False) -> list[Settings]:
    """f16 / q8_0 / q4_0 caches, flash attention on and off, padding, -np, -kvu, -ub."""
    runs = [
        Settings(n_ctx=4096, flash_attn=ON),
        Settings(n_ctx=4096, flash_attn=OFF),
        Settings(n_ctx=10000, type_k="q8_0", type_v="q8_0", flash_attn=ON),  # padded
        Settings(n_ctx=32768, type_k="q4_0", type_v="q4_0", flash_attn=ON),
        Settings(n_ctx=8000, type_k="q8_0", type_v="f16", flash_attn=OFF),
        Settings(n_ctx=20000, type_k="f32", type_v="f32", flash_attn=ON, n_ubatch=256),
        Settings(n_ctx=12345, n_parallel=4, flash_attn=ON),
        Settings(n_ctx=12345, n_parallel=4, flash_attn=OFF),
        Settings(n_ctx=16384, n_parallel=4, kv_unified=True, flash_attn=ON),
        Settings(n_ctx=300, flash_attn=ON),  # a context shorter than the ubatch
        Settings(n_ctx=8192, n_ubatch=1024, flash_attn=ON),
        Settings(n_ctx=8192, n_ubatch=1024, flash_attn=OFF),
        Settings(n_ctx=8192, n_ubatch=1, n_batch=1, flash_attn=ON),
        Settings(n_ctx=8192, n_ubatch=7, n_batch=7, flash_attn=OFF),
    ]
    if swa:
        runs += [Settings(n_ctx=32768, swa_full=True, flash_attn=ON),
                 Settings(n_ctx=65536, type_k="q8_0", type_v="q8_0", n_ubatch=1024),
                 Settings(n_ctx=65536, flash_attn=OFF)]
    return runs


@dataclass(frozen=True)
class Row:
    settings: Settings
    llama_compute: int | None  # None: llama.cpp refused the settings
    llama_nodes: str | None
    ours: int | None
    our_nodes: int | None
    error: str = ""

    @property
    def equal(self) -> bool:
        if self.llama_compute is None:
            return True
        return self.ours == self.llama_compute and self.llama_nodes is not None \
            and self.llama_nodes.split("/")[0].strip() == str(self.our_nodes)


def ours(model: ModelInfo, s: Settings, fa: bool) -> tuple[int, int]:
    """kvgui's CPU compute buffer and node count for settings ``s`` (flash attention as
    llama.cpp resolved it)."""
    shape = context_shape(model, s)
    kinds = reserve.cache_kinds(model, s.type_k, s.type_v)
    values = reserve.shape_values(shape)
    key = reserve.graph_key(fa, kinds, values)
    result, _ = builders.build(model, reserve.params_for(key))
    return reserve.peak(model, shape, fa, kinds, CPU_ALIGN), len(result.gf.nodes)


def compare(path: str | Path, matrix: Sequence[Settings]) -> list[Row]:
    from kvgui.runtime.dryrun import DryRunError, dry_run_many

    model = load_model(path)
    rows = []
    for s, got in zip(matrix, dry_run_many(path, matrix, timeout=600), strict=True):
        if isinstance(got, DryRunError):
            rows.append(Row(s, None, None, None, None, got.reason))
            continue
        fa = bool(got.flash_attn)
        try:
            compute, nodes = ours(model, s, fa)
        except (reserve.UnsupportedGraph, AssertionError, KeyError, ValueError) as exc:
            rows.append(Row(s, got.compute_total, got.graph_nodes, None, None, repr(exc)))
            continue
        rows.append(Row(s, got.compute_total, got.graph_nodes, compute, nodes))
    return rows


def rpc_layout(model: ModelInfo, s: Settings, n_devices: int, n_cpu_moe: int = 0,
               endpoints: Sequence[str] = ()) -> reserve.Layout:
    """The scheduler's view of ``n_devices`` ggml-rpc-server devices of equal size for these
    settings (-ngl, -ts, -nkvo, --n-cpu-moe, -ot), as llama-fit-params sizes it (no_alloc:
    without llama.cpp's backend hints). The placement is the estimate's own (tensor overrides
    included); ``endpoints`` name the devices' buffer types ("RPC0[host:port]") for an -ot
    that names them."""
    from kvgui.core.devices.device_budget import DeviceBudget
    from kvgui.core.memory import estimate

    if n_cpu_moe:
        s = s.replace(n_cpu_moe=n_cpu_moe)
    gpus = [DeviceBudget(f"RPC{i}", 1 << 34,
                         buft=f"RPC0[{endpoints[i] if endpoints else f'rpc{i}:1'}]")
            for i in range(n_devices)]
    offload = estimate._placement(model, s, gpus, estimate.this_host()).offload
    offload = offload.with_kv_offload(s.kv_offload)
    backends = tuple(reserve.rpc_backend(i) for i in range(n_devices))
    return offload.layout_with((*backends, reserve.cpu_backend()), pins=False)


def _describe(s: Settings) -> str:
    parts = [f"ctx {s.n_ctx}", f"{s.type_k}/{s.type_v}", f"fa {s.flash_attn.value}",
             f"ub {s.n_ubatch}"]
    if s.n_parallel > 1:
        parts.append(f"np {s.n_parallel}" + (" kvu" if s.kv_unified else ""))
    if s.swa_full:
        parts.append("swa-full")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a catalog label or a .gguf path")
    ap.add_argument("--swa", action="store_true", help="add the sliding-window settings")
    args = ap.parse_args(argv)
    path = Path(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        if not path.is_file():
            from kvgui.core.model.catalog import find
            from kvgui.testing.sparse_gguf import write_sparse_gguf

            path = write_sparse_gguf(find(args.model), Path(tmp) / "model.gguf")
        rows = compare(path, default_matrix(args.swa))
    bad = 0
    for r in rows:
        if r.llama_compute is None:
            print(f"{_describe(r.settings):<48} llama.cpp refused: {r.error}")
            continue
        mark = "ok  " if r.equal else "DIFF"
        bad += not r.equal
        print(f"{mark} {_describe(r.settings):<48} llama.cpp {r.llama_compute:>12} B "
              f"{r.llama_nodes:>6} nodes | kvgui {r.ours!s:>12} B {r.our_nodes!s:>6} nodes"
              f"{'  ' + r.error if r.error else ''}")
    print(f"{len(rows) - bad} equal, {bad} different")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
