"""Write resources/llama_args.json from the bundled llama.cpp's common/arg.cpp.

    python packaging/make_llama_args.py /path/to/llama.cpp [commit]

The source is the llama-cpp-python sdist's vendor/llama.cpp (the commit the installed
library bundles); tests/core/test_arg_table.py re-reads it and compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from kvgui.core.commandline.arg_table import parse_arg_cpp, to_json

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    source = Path(argv[0]) / "common" / "arg.cpp"
    commit = argv[1] if len(argv) > 1 else "0c1e570"
    specs = parse_arg_cpp(source.read_text(encoding="utf-8"))
    out = ROOT / "resources" / "llama_args.json"
    out.write_text(json.dumps(to_json(specs, commit), indent=1) + "\n", encoding="utf-8")
    print(f"{len(specs)} options -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
