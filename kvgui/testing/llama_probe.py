"""Ask the real llama.cpp whether it accepts GGUF files: load each with ``no_alloc`` (header
only, no weights read) and create a small context, in a child process because llama.cpp may
abort() on a file it rejects.

All files go through one child; if it dies, the file it was on is reported with the tail of
its log and a fresh child carries on with the rest.

    python -m kvgui.testing.llama_probe FILE.gguf ...   # one JSON line per file
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

_MARK = "### kvgui-probe "


@dataclass(frozen=True)
class ProbeResult:
    path: str
    loaded: bool
    context: bool = False
    n_params: int = 0
    model_size: int = 0  # llama_model_size: bytes of all tensors
    n_layer: int = 0
    n_ctx_train: int = 0
    error: str = ""  # the log lines that say why, when it did not load


def probe(paths: Sequence[str | Path], *, n_ctx: int = 512, timeout: float = 300.0
          ) -> dict[str, ProbeResult]:
    """Load every file in llama.cpp (no_alloc, no mmap, CPU) and report what it made of it."""
    todo = [str(p) for p in paths]
    results: dict[str, ProbeResult] = {}
    while todo:
        proc = subprocess.run(
            [sys.executable, "-m", "kvgui.testing.llama_probe", f"--n-ctx={n_ctx}", *todo],
            capture_output=True, text=True, timeout=timeout, check=False)
        logs = _split_log(proc.stderr)
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                d = json.loads(line)
                r = ProbeResult(**d)
                if not (r.loaded and r.context):
                    r = ProbeResult(**{**d, "error": _why(logs.get(r.path, ""))})
                results[r.path] = r
        todo = [p for p in todo if p not in results]
        if todo:  # the child died on todo[0]
            results[todo[0]] = ProbeResult(
                todo[0], loaded=False,
                error=f"llama.cpp exited with {proc.returncode}: "
                      + _why(logs.get(todo[0], proc.stderr)))
            todo = todo[1:]
    return results


def _split_log(stderr: str) -> dict[str, str]:
    out: dict[str, list[str]] = {}
    current: list[str] = []
    for line in stderr.splitlines():
        if line.startswith(_MARK):
            current = out.setdefault(line[len(_MARK):], [])
        else:
            current.append(line)
    return {k: "\n".join(v) for k, v in out.items()}


def _why(log: str) -> str:
    lines = [ln for ln in log.splitlines()
             if any(w in ln.lower() for w in ("error", "failed", "abort", "assert", "exception"))]
    return "\n".join((lines or log.splitlines())[-6:])


def _child(paths: Sequence[str], n_ctx: int) -> None:
    import llama_cpp.llama_cpp as L

    L.llama_backend_init()
    for path in paths:
        print(_MARK + path, file=sys.stderr, flush=True)
        mp = L.llama_model_default_params()
        mp.no_alloc = True
        mp.load_mode = 0  # LLAMA_LOAD_MODE_NONE: no mmap
        mp.n_gpu_layers = 0
        model = L.llama_model_load_from_file(path.encode(), mp)
        res: dict[str, object] = {"path": path, "loaded": bool(model)}
        if model:
            res.update(n_params=int(L.llama_model_n_params(model)),
                       model_size=int(L.llama_model_size(model)),
                       n_layer=int(L.llama_model_n_layer(model)),
                       n_ctx_train=int(L.llama_model_n_ctx_train(model)))
            cp = L.llama_context_default_params()
            cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx
            ctx = L.llama_init_from_model(model, cp)
            res["context"] = bool(ctx)
            if ctx:
                L.llama_free(ctx)
            L.llama_model_free(model)
        print(json.dumps(res), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    n_ctx = 512
    if args and args[0].startswith("--n-ctx="):
        n_ctx = int(args.pop(0).split("=", 1)[1])
    _child(args, n_ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
