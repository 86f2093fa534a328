"""A real load (weights and cache allocated, not no_alloc) and what the GPU says it costs.

One child process per run, so each has a fresh CUDA context and NVML's per-process figure is
its own: ``python -m kvgui.testing.gpucheck.realload`` takes a JSON request on stdin and
prints one JSON line per phase on stdout (llama.cpp's log goes to stderr):

``init``     llama_backend_init done (ggml-cuda loaded; the CUDA context made by the first
             cudaMemGetInfo if ggml had not made it)
``model``    llama_model_load_from_file done (weights on the GPU)
``context``  llama_init_from_model done (KV cache, compute buffers; llama.cpp's exact
             breakdown read here)
``prompt``   a prompt filling the context (n_ctx - decode tokens, in n_batch chunks) decoded:
             cuBLAS workspaces and ggml-cuda's memory pool have grown to what it needs
``decode``   a few one-token decodes (CUDA graphs are captured for those); breakdown again

Each phase carries cudaMemGetInfo (the device's free/total, through the same libcudart
ggml-cuda loaded) and NVML (the device's used memory and this process's, where the driver
reports it). The parent records NVML before starting the child, so the process's whole cost is
``used now - used before`` and the CUDA overhead is that minus llama.cpp's CUDA buffers.

Uses llama-cpp-python's ctypes bindings (the CUDA build's libraries in their lib folder) and
kvgui's dry-run helpers for llama.cpp's exact breakdown; pynvml where it is installed.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def _cudart() -> Any | None:
    """The libcudart this process loaded (ggml-cuda's), with cudaMemGetInfo typed; or None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    paths = sorted({ln.split()[-1] for ln in maps.splitlines()
                    if "libcudart.so" in ln and ln.split()[-1].startswith("/")})
    if not paths:
        return None
    lib = ctypes.CDLL(paths[0])
    lib.cudaMemGetInfo.restype = ctypes.c_int
    lib.cudaMemGetInfo.argtypes = [ctypes.POINTER(ctypes.c_size_t)] * 2
    return lib


def cuda_mem(lib: Any | None) -> dict[str, int] | None:
    if lib is None:
        return None
    free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
    rc = lib.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total))
    if rc != 0:
        return {"error": rc}
    return {"free": free.value, "total": total.value, "used": total.value - free.value}


class Nvml:
    """NVML for one GPU (index 0): device memory and this process's, never raising."""

    def __init__(self, index: int = 0) -> None:
        self.nv: Any = None
        self.handle: Any = None
        self.error = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nv = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception as exc:  # no NVML (a CPU machine, the dry rehearsal): no figures
            self.error = f"{type(exc).__name__}: {exc}"

    def read(self, pid: int | None = None) -> dict[str, Any] | None:
        if self.nv is None:
            return None
        from kvgui.core.devices.hardware import nvidia

        try:
            total, free, used, reserved = nvidia.memory(self.nv, self.handle)
            out: dict[str, Any] = {"total": total, "free": free, "used": used,
                                   "reserved": reserved}
            procs = nvidia._processes(self.nv, self.handle)
            out["processes"] = [{"pid": p.pid, "used": p.used} for p in procs]
            if pid is not None:
                mine = [p.used for p in procs if p.pid == pid]
                out["process_used"] = mine[0] if mine else None
            return out
        except Exception as exc:  # a query this driver refuses
            return {"error": f"{type(exc).__name__}: {exc}"}


def _child_main() -> int:
    from kvgui.runtime.dryrun import _import_bindings, _load_ggml, _memory_breakdown

    reply_fd = os.dup(1)
    os.dup2(2, 1)  # llama.cpp's own prints go to stderr
    reply = os.fdopen(reply_fd, "w", encoding="utf-8")
    request = json.loads(sys.stdin.read())
    t_start = time.monotonic()
    pid = os.getpid()
    nvml = Nvml()

    def send(obj: dict[str, Any]) -> None:
        reply.write(json.dumps(obj) + "\n")
        reply.flush()

    lc = _import_bindings()
    lc.llama_backend_init()
    g = _load_ggml(lc)
    cudart = _cudart()

    def phase(name: str, **extra: Any) -> None:
        send({"phase": name, "t": round(time.monotonic() - t_start, 3),
              "cuda": cuda_mem(cudart), "nvml": nvml.read(pid), **extra})

    phase("init", nvml_error=nvml.error or None, cudart=bool(cudart))
    mp = lc.llama_model_default_params()
    for k, v in request["model_params"].items():
        setattr(mp, k, v)
    model = lc.llama_model_load_from_file(request["model"].encode(), mp)
    if not model:
        send({"phase": "error", "error": "llama.cpp could not load the model"})
        return 1
    phase("model", model_size=int(lc.llama_model_size(model)))
    cp = lc.llama_context_default_params()
    for k, v in request["context_params"].items():
        setattr(cp, k, v)
    ctx = lc.llama_init_from_model(model, cp)
    if not ctx:
        send({"phase": "error", "error": "llama.cpp could not create the context"})
        return 1
    n_ctx = int(lc.llama_n_ctx(ctx))
    phase("context", n_ctx=n_ctx, breakdown=_memory_breakdown(lc, g, ctx))

    vocab = lc.llama_model_get_vocab(model)
    n_vocab = int(lc.llama_vocab_n_tokens(vocab))
    n_batch = int(request["context_params"].get("n_batch", 2048))
    n_decode = int(request.get("decode_tokens", 8))
    n_prompt = min(int(request.get("prompt_tokens") or n_ctx), n_ctx) - n_decode
    batch = lc.llama_batch_init(n_batch, 0, 1)

    def decode(start: int, n: int) -> int:
        for i in range(n):
            pos = start + i
            batch.token[i] = (1000 + pos % 7919) % n_vocab
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == n - 1
        batch.n_tokens = n
        return int(lc.llama_decode(ctx, batch))

    t0 = time.monotonic()
    pos = 0
    while pos < n_prompt:
        n = min(n_batch, n_prompt - pos)
        rc = decode(pos, n)
        if rc != 0:
            send({"phase": "error", "error": f"llama_decode returned {rc} at {pos}"})
            return 1
        pos += n
    phase("prompt", tokens=pos, seconds=round(time.monotonic() - t0, 3))
    t0 = time.monotonic()
    for _ in range(n_decode):
        rc = decode(pos, 1)
        if rc != 0:
            send({"phase": "error", "error": f"llama_decode returned {rc} at {pos}"})
            return 1
        pos += 1
    phase("decode", tokens=n_decode, seconds=round(time.monotonic() - t0, 3),
          breakdown=_memory_breakdown(lc, g, ctx))
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    send({"phase": "done", "t": round(time.monotonic() - t_start, 3)})
    return 0


# --- parent side ------------------------------------------------------------------------------

def request_for(model: Path, settings: Any, prompt_tokens: int | None = None,
                decode_tokens: int = 8) -> dict[str, Any]:
    """The child's request: llama.cpp's parameter fields as kvgui's launch sets them."""
    from kvgui.core.commandline.llama_params import llama_params

    params = llama_params(settings)
    mp = dict(params.model)
    if mp.pop("tensor_split", ()):
        raise ValueError("the real load runs on one GPU: no tensor split")
    if mp.pop("tensor_buft_overrides", ()):  # (a pointer: kvgui.runtime.llama_structs)
        raise ValueError("the real load takes no tensor overrides (-ot, --n-cpu-moe)")
    return {"model": str(model), "model_params": mp, "context_params": dict(params.context),
            "prompt_tokens": prompt_tokens, "decode_tokens": decode_tokens}


def run(request: dict[str, Any], timeout: float, env: dict[str, str] | None = None
        ) -> dict[str, Any]:
    """Run one child; returns its phases (whatever it sent before dying or timing out),
    NVML before it started, and why it stopped if it did not finish."""
    import signal
    import subprocess

    nvml = Nvml()
    before = nvml.read()
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "kvgui.testing.gpucheck.realload"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    error = ""
    try:
        out, err = proc.communicate(json.dumps(request).encode(), timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        error = f"timed out after {timeout:.0f} s"
    phases = []
    for line in out.decode("utf-8", "replace").splitlines():
        try:
            phases.append(json.loads(line))
        except ValueError:
            continue
    done = any(p.get("phase") == "done" for p in phases)
    if not error and not done:
        failed = [p["error"] for p in phases if p.get("phase") == "error"]
        error = failed[0] if failed else f"the child exited with {proc.returncode}"
    log_text = err.decode("utf-8", "replace")
    tail = "\n".join([ln for ln in log_text.splitlines() if ln.strip()][-8:])
    return {"nvml_before": before, "phases": phases, "seconds": round(time.monotonic() - t0, 2),
            "error": error or None, "log_tail": tail if error else None,
            "graph": _graph_line(log_text)}


def _graph_line(log_text: str) -> str | None:
    lines = [ln for ln in log_text.splitlines() if "graph: nodes =" in ln]
    return lines[-1].split("sched_reserve:")[-1].strip() if lines else None


if __name__ == "__main__":
    raise SystemExit(_child_main())
