"""Regenerate kvgui/core/memory/tensor_ops.py: the ggml op each weight tensor feeds.

llama.cpp picks a weight's buffer type by asking each buffer type in turn whether it supports
the op the weight is used with (src/llama-model-loader.cpp: select_weight_buft). That op comes
from LLM_TENSOR_INFOS in src/llama-arch.cpp, keyed by the same enum as the tensor's name in
LLM_TENSOR_NAMES. This script joins the two tables of the bundled llama.cpp's source.

    python packaging/make_tensor_ops.py LLAMA_CPP_DIR          # rewrite the module
    python packaging/make_tensor_ops.py LLAMA_CPP_DIR --check  # exit 1 if it is stale

LLAMA_CPP_DIR is the vendor/llama.cpp of the llama-cpp-python sdist (DEVELOPERS.md).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "kvgui" / "core" / "memory" / "tensor_ops.py"

_NAME = re.compile(r'\{\s*(LLM_TENSOR_\w+)\s*,\s*"([^"]+)"\s*\}')
_INFO = re.compile(r"\{\s*(LLM_TENSOR_\w+)\s*,\s*\{\s*LLM_TENSOR_LAYER_(\w+)\s*,"
                   r"\s*GGML_OP_(\w+)\s*\}\s*\}")


def _table(source: str, start: str) -> str:
    """The text of the std::map initializer that follows ``start``."""
    i = source.index(start)
    return source[i: source.index("};", i)]


def build(llama_cpp: Path) -> dict[str, tuple[str, str]]:
    """{tensor name without "blk.N." and suffix: (layer kind, op)} from llama-arch.cpp."""
    src = (llama_cpp / "src" / "llama-arch.cpp").read_text()
    names = dict(_NAME.findall(_table(src, "LLM_TENSOR_NAMES =")))
    infos = {e: (layer.lower(), op) for e, layer, op in
             _INFO.findall(_table(src, "LLM_TENSOR_INFOS ="))}
    out: dict[str, tuple[str, str]] = {}
    for enum, pattern in names.items():
        if enum not in infos:
            continue
        key = re.sub(r"^(\w+\.)?blk\.%d\.", r"\1", pattern).replace(".%d", ".*")
        layer, op = infos[enum]
        seen = out.get(key)
        # one name, two enums (e.g. token_embd_norm): keep a matmul op if either is one,
        # since that is the only case where the buffer type could differ
        if seen is not None and seen != (layer, op) and "MUL_MAT" in seen[1]:
            continue
        out[key] = (layer, op)
    return dict(sorted(out.items()))


def render(table: dict[str, tuple[str, str]], llama_cpp: Path) -> str:
    rows = "\n".join(f'    "{k}": ("{layer}", "{op}"),' for k, (layer, op) in table.items())
    return f'''"""The ggml op each weight feeds, by tensor name: generated from llama.cpp's
src/llama-arch.cpp (LLM_TENSOR_NAMES joined with LLM_TENSOR_INFOS) by
packaging/make_tensor_ops.py. Do not edit by hand.

Keys are the GGUF tensor names without the "blk.N." prefix and the ".weight"/".bias"
suffix ("attn_q", "ffn_up_exps", "token_embd"); ".*" stands for a per-expert index.
Values: (layer kind: input / output / repeating, GGML op name).
"""

from __future__ import annotations

TENSOR_OPS: dict[str, tuple[str, str]] = {{
{rows}
}}
'''


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("llama_cpp", type=Path)
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    text = render(build(args.llama_cpp), args.llama_cpp)
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is stale: run packaging/make_tensor_ops.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
