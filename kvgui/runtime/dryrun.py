"""llama.cpp's own dry run: what it would allocate for a model and settings, without reading
weights or allocating the cache (``llama_model_params.no_alloc``, as llama-cli's ``--fit`` does).

It runs in a child process (``python -m kvgui.runtime.dryrun``, JSON request on stdin, one JSON
line per result on stdout) because llama.cpp may abort the whole process on a GGML_ASSERT.
Every setting is passed explicitly: llama-cpp-python's defaults are not llama-cli's.

Exact bytes per buffer type come from llama.cpp's memory breakdown (``llama_get_memory_breakdown``,
a C++ function the fit code uses, read here through the Itanium C++ ABI on Linux); the log
gives the rest (K/V split, output buffer) in MiB with two decimals.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvgui.core.commandline.llama_params import LOAD_MODE_NONE, LlamaParams, llama_params
from kvgui.core.config.settings import pad_ctx
from kvgui.runtime.childproc import (
    child_env,
    describe_exit,
    kill_group,
    python_command,
    signal_name,
)
from kvgui.runtime.llama_log import (
    BufferBytes,
    DeviceInfo,
    LlamaCppMemory,
    parse_llama_log,
)

if TYPE_CHECKING:
    from kvgui.core.config.settings import Settings

DEFAULT_TIMEOUT = 60.0
# Cells (padded n_ctx) beyond which a dry run is refused: llama.cpp's per-cell bookkeeping is
# host RAM even with no_alloc (measured ~52 B/cell: 10^8 cells took 5.2 GB and 6 s).
MAX_CELLS = 1 << 25
_TAIL_LINES = 12


class DryRunError(Exception):
    """The dry run failed: ``reason`` is one line for the user; ``log_tail``, llama.cpp's last
    lines; ``log``, all of it (when the child lived to send it)."""

    def __init__(self, reason: str, log_tail: str = "", log: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.log_tail = log_tail
        self.log = log or log_tail

    def __str__(self) -> str:
        return self.reason


class DryRunTimeout(DryRunError):
    """llama.cpp did not answer in time; the child was killed."""


class DryRunUnavailable(DryRunError):
    """llama-cpp-python is missing or does not import: ``reason`` says what to install."""


# --- parent side --------------------------------------------------------------------------

def run_request(settings: Settings) -> dict[str, Any]:
    """One run of the child's request: the translation's fields, as JSON values."""
    params = llama_params(settings)
    return {"model": dict(params.model) | {
        "tensor_split": list(params.model["tensor_split"]),
        "tensor_buft_overrides": [list(o) for o in params.model["tensor_buft_overrides"]]},
        "context": dict(params.context), "rpc_servers": list(params.rpc_servers)}


def _tail(text: str, n: int = _TAIL_LINES) -> str:
    return "\n".join([line for line in text.splitlines() if line.strip()][-n:])


_ASSERT = re.compile(r"(\S+):(\d+): (GGML_ASSERT\(.*\) failed)")


def _abort_reason(returncode: int | None, stderr: str) -> str:
    if m := _ASSERT.search(stderr):
        path = m.group(1)
        where = path[path.rfind("/src/") + 1:] if "/src/" in path else Path(path).name
        return f"llama.cpp aborted: {m.group(3)} ({where}:{m.group(2)})"
    for line in reversed(stderr.splitlines()):
        if "GGML_ASSERT" in line or "error" in line.lower() or "terminate called" in line:
            return f"llama.cpp stopped: {line.strip()}"
    if returncode is not None and returncode < 0:
        return f"llama.cpp crashed ({signal_name(-returncode)})"
    return f"the dry-run process {describe_exit(returncode)}"


def refusal(path: Path, settings: Settings) -> DryRunError | None:
    """Why a dry run of ``settings`` is not even started (no file, too many cells), or None."""
    if not path.is_file():
        return DryRunError(f"no such model file: {path}")
    cells = pad_ctx(settings.n_ctx)
    if not settings.kv_unified:  # each sequence's stream is padded (llama-context.cpp)
        cells = pad_ctx(cells // settings.n_parallel) * settings.n_parallel
    if cells > MAX_CELLS:
        return DryRunError(
            f"a context of {cells} cells is beyond what kvgui dry-runs (at most {MAX_CELLS}):"
            " llama.cpp keeps ~52 bytes of RAM per cell even without allocating the cache"
        )
    return None


def dry_run_many(
    model_path: str | os.PathLike[str],
    settings_list: Sequence[Settings],
    *,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[LlamaCppMemory | DryRunError]:
    """One child process for many settings: the model is read once, a context made per settings.

    Returns, per settings, the figures or the DryRunError that stopped that one.
    """
    path = Path(model_path)
    results: list[LlamaCppMemory | DryRunError | None] = [
        refusal(path, s) for s in settings_list]
    # A crash loses only the settings that caused it: the rest get a fresh child.
    while pending := [i for i, r in enumerate(results) if r is None]:
        replies, failure = _run_child(path, [settings_list[i] for i in pending], timeout)
        for j, r in replies.items():
            results[pending[j]] = r
        if failure is not None:
            first = next((i for i in pending if results[i] is None), None)
            if first is None:
                break
            results[first] = failure
            if isinstance(failure, (DryRunTimeout, DryRunUnavailable)):
                for i in pending:
                    if results[i] is None:
                        results[i] = failure
    return [r if r is not None else DryRunError("the dry run did not answer") for r in results]


CHILD_MODULE = "kvgui.runtime.dryrun"


def child_command() -> list[str]:
    return python_command(CHILD_MODULE)


def child_request(path: str | os.PathLike[str], settings_list: Sequence[Settings]) -> bytes:
    """What the child reads on stdin: the model and one run per settings (one JSON line)."""
    request = {"model": str(path), "runs": [run_request(s) for s in settings_list]}
    return (json.dumps(request) + "\n").encode()


def read_child_output(
    stdout: str, stderr: str, returncode: int | None, *, timeout: float, wall: float,
    timed_out: bool = False,
) -> tuple[dict[int, LlamaCppMemory | DryRunError], DryRunError | None]:
    """The child's answers by index, and why it stopped early (None: it finished).

    Shared by the synchronous ``dry_run_many`` and the window's process runner."""
    replies: dict[int, LlamaCppMemory | DryRunError] = {}
    done = False
    for line in stdout.splitlines():
        try:
            reply = json.loads(line)
        except ValueError:
            continue
        if not isinstance(reply, dict):
            continue
        if "unavailable" in reply:
            return replies, DryRunUnavailable(str(reply["unavailable"]))
        if "index" in reply:
            r = replies[reply["index"]] = _from_reply(reply)
            if isinstance(r, LlamaCppMemory):
                r.stats["process_s"] = round(wall, 6)  # the whole child, shared by the batch
        done = done or bool(reply.get("done"))
    if timed_out:
        return replies, DryRunTimeout(f"the dry run timed out after {timeout:g} s", _tail(stderr))
    if not done or returncode != 0:
        return replies, DryRunError(_abort_reason(returncode, stderr), _tail(stderr))
    return replies, None


def _run_child(
    path: Path, settings_list: Sequence[Settings], timeout: float
) -> tuple[dict[int, LlamaCppMemory | DryRunError], DryRunError | None]:
    """Run one child for ``settings_list``: its answers by index, and why it stopped early."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        child_command(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
        start_new_session=True,  # a timeout kills the child's whole group
    )
    timed_out = False
    try:
        out, err = proc.communicate(child_request(path, settings_list), timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_group(proc.pid)
        out, err = proc.communicate()
    return read_child_output(out.decode("utf-8", "replace"), err.decode("utf-8", "replace"),
                             proc.returncode, timeout=timeout,
                             wall=time.perf_counter() - t0, timed_out=timed_out)


def dry_run(
    model_path: str | os.PathLike[str], settings: Settings, *, timeout: float = DEFAULT_TIMEOUT
) -> LlamaCppMemory:
    """What llama.cpp would allocate for ``settings``; raises DryRunError with a one-line reason."""
    result = dry_run_many(model_path, [settings], timeout=timeout)[0]
    if isinstance(result, DryRunError):
        raise result
    return result


def _from_reply(reply: dict[str, Any]) -> LlamaCppMemory | DryRunError:
    log = reply.get("log", "")
    if not reply.get("ok"):
        return DryRunError(reply.get("error", "llama.cpp failed"), _tail(log), log)
    m = parse_llama_log(log)
    if reply.get("exact") is not None:
        m.exact = [BufferBytes(**b) for b in reply["exact"]]
    m.model_size = reply.get("model_size")
    m.devices = [DeviceInfo(**d) for d in reply.get("devices", [])]
    m.wall_s = reply.get("wall_s")
    m.stats = reply.get("stats", {})
    return m


# --- child side: the only place llama_cpp is imported ---------------------------------------

# Debug lines that repeat per tensor or per graph input and say nothing about memory.
_NOISE = ("llama_graph_n_input_tensors:", "create_tensor: loading tensor")


def _import_bindings() -> Any:
    """llama-cpp-python's ctypes bindings without its package ``__init__``.

    ``import llama_cpp`` also imports the high-level Llama class, numpy, jinja2 and the chat
    formats (~0.13 s); the dry run needs only ``llama_cpp.llama_cpp`` (~0.03 s). Registering
    the package without running its ``__init__`` lets the submodule import alone.
    """
    import importlib.util
    import types

    if "llama_cpp" not in sys.modules:
        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or spec.submodule_search_locations is None:
            raise ModuleNotFoundError("llama-cpp-python is not installed", name="llama_cpp")
        pkg = types.ModuleType("llama_cpp")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__file__ = spec.origin
        sys.modules["llama_cpp"] = pkg
    from llama_cpp import llama_cpp as lc

    return lc


def _load_ggml(lc: Any) -> Any:
    """libggml-base (dev and buffer-type queries) and libggml (device registry), as loaded."""
    from kvgui.runtime.llama_structs import ggml_api

    return ggml_api(lc)


_DEV_TYPES = ("cpu", "gpu", "igpu", "accel", "meta")


def _devices(g: Any) -> list[dict[str, Any]]:
    import ctypes

    out = []
    for i in range(g.ggml_backend_dev_count()):
        dev = g.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        g.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        t = g.ggml_backend_dev_type(dev)
        out.append({
            "name": (g.ggml_backend_dev_name(dev) or b"").decode(),
            "description": (g.ggml_backend_dev_description(dev) or b"").decode(),
            "type": _DEV_TYPES[t] if 0 <= t < len(_DEV_TYPES) else str(t),
            "free": free.value or None,
            "total": total.value or None,
        })
    return out


def _memory_breakdown(lc: Any, g: Any, ctx: Any) -> list[dict[str, Any]] | None:
    """llama.cpp's exact bytes per buffer type, or None where the C++ ABI is not libstdc++'s.

    ``llama_get_memory_breakdown`` returns a ``std::map<buft, {model, context, compute}>`` by
    value: the caller passes the return slot. libstdc++'s map is a red-black tree whose header
    (color, parent=root, left, right) follows an 8-byte comparator, then the node count; each
    node is 32 bytes of links followed by the key and the three size_t values.
    """
    import ctypes
    import struct

    if not sys.platform.startswith("linux"):
        return None
    fn = getattr(lc._lib, "_Z26llama_get_memory_breakdownPK13llama_context", None)
    if fn is None:
        return None
    fn.restype, fn.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_void_p]
    slot = ctypes.create_string_buffer(256)
    addr = ctypes.addressof(slot)
    if fn(addr, ctx) != addr:
        return None
    _color, root, left, right, count = struct.unpack_from("<i4xQQQQ", slot.raw, 8)
    header = addr + 8
    if not 1 <= count <= 64 or not root or not left or not right:
        return None
    if struct.unpack_from("<Q", ctypes.string_at(root, 16), 8)[0] != header:
        return None  # the root's parent must be the header: otherwise the layout is not ours
    rows: list[dict[str, Any]] = []
    stack: list[int] = []
    node = root
    while (stack or node) and len(rows) <= count:
        while node:
            stack.append(node)
            node = struct.unpack_from("<Q", ctypes.string_at(node, 24), 16)[0]
        node = stack.pop()
        raw = ctypes.string_at(node, 64)
        right_child, buft, model, context, compute = struct.unpack_from("<QQQQQ", raw, 24)
        dev = g.ggml_backend_buft_get_device(buft)
        rows.append({
            "name": (g.ggml_backend_buft_name(buft) or b"?").decode(),
            "is_host": bool(g.ggml_backend_buft_is_host(buft)),
            "device": (g.ggml_backend_dev_name(dev) or b"").decode() if dev else "CPU",
            "model": model,
            "context": context,
            "compute": compute,
        })
        node = right_child
    return rows if len(rows) == count else None


def _child_main() -> int:

    t_start = time.perf_counter()
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # anything llama.cpp prints itself goes to stderr, never into the reply
    reply = os.fdopen(reply_fd, "w", encoding="utf-8")

    def send(obj: dict[str, Any]) -> None:
        reply.write(json.dumps(obj) + "\n")
        reply.flush()

    request = json.loads(sys.stdin.readline())
    try:
        lc = _import_bindings()
    except Exception as exc:  # not installed, or its shared library does not load
        from kvgui.core.install_hints import llama_cpp_hint

        send({"unavailable": llama_cpp_hint(exc)})
        return 1

    from kvgui.runtime.llama_log import LlamaLogCapture, error_lines
    from kvgui.runtime.llama_structs import LaunchRefused, context_params, model_params

    t_import = time.perf_counter() - t_start

    def to_stderr(_level: int, text: str) -> None:
        if not text.startswith(_NOISE):
            os.write(2, text.encode("utf-8", "replace"))

    cap = LlamaLogCapture(sink=to_stderr)
    cap.install()
    lc.llama_backend_init()
    g = _load_ggml(lc)
    devices = _devices(g)

    def text_of(records: list[tuple[int, str]]) -> str:
        return "".join(t for _, t in records if not t.startswith(_NOISE))

    model = None
    model_key: str | None = None
    model_log = ""
    model_size: int | None = None
    load_s = 0.0
    keep: list[Any] = []
    failed: dict[str, tuple[str, str]] = {}  # model fields that did not load: why, the log
    for index, run in enumerate(request["runs"]):
        t0 = time.perf_counter()
        key = json.dumps([run["model"], run.get("rpc_servers", [])], sort_keys=True)
        if key in failed:
            reason, log_text = failed[key]
            send({"index": index, "ok": False, "error": reason, "log": log_text})
            continue
        if key != model_key:
            if model is not None:
                lc.llama_model_free(model)
                model = None
            cap.clear()
            params = LlamaParams(run["model"], run["context"],
                                 tuple(run.get("rpc_servers", ())))
            # only metadata: simulate the allocations (no_alloc needs the load without mmap)
            try:
                mp = model_params(lc, params, keep, no_alloc=True, load_mode=LOAD_MODE_NONE)
            except LaunchRefused as exc:  # no RPC in this build, an unknown buffer type
                send({"index": index, "ok": False, "error": str(exc), "log": ""})
                model_key = None
                continue
            t_load = time.perf_counter()
            model = lc.llama_model_load_from_file(request["model"].encode(), mp)
            load_s = time.perf_counter() - t_load
            model_log = text_of(cap.records)
            model_key = key
            if not model:
                errors = error_lines(cap.records)
                reason = "llama.cpp could not load the model"
                if errors:
                    reason += ": " + _one_line(errors[0])
                # (the runs with the same model fields fail alike; others may load: an -ot
                # pattern std::regex rejects fails only its own runs)
                failed[key] = (reason, model_log)
                send({"index": index, "ok": False, "error": reason, "log": model_log})
                model_key = None
                continue
            model_size = int(lc.llama_model_size(model))
        cap.clear()
        cp = context_params(lc, LlamaParams(run["model"], run["context"]))
        t_ctx = time.perf_counter()
        ctx = lc.llama_init_from_model(model, cp)
        ctx_s = time.perf_counter() - t_ctx
        ctx_log = text_of(cap.records)
        if not ctx:
            errors = error_lines(cap.records)
            reason = "llama.cpp could not create the context"
            if errors:
                reason += ": " + _one_line(errors[0])
            send({"index": index, "ok": False, "error": reason,
                  "log": model_log + ctx_log})
            continue
        exact = _memory_breakdown(lc, g, ctx)
        lc.llama_free(ctx)
        send({
            "index": index,
            "ok": True,
            "log": model_log + ctx_log,
            "exact": exact,
            "model_size": model_size,
            "devices": devices,
            "wall_s": round(time.perf_counter() - t0, 6),
            "stats": {
                "import_s": round(t_import, 6),
                "load_s": round(load_s, 6),  # 0 when the model was already loaded
                "context_s": round(ctx_s, 6),
                "max_rss": _max_rss(),
            },
        })
        load_s = 0.0
    if model is not None:
        lc.llama_model_free(model)
    cap.uninstall()
    send({"done": True, "import_s": round(t_import, 6),
          "total_s": round(time.perf_counter() - t_start, 6)})
    return 0


def _max_rss() -> int | None:
    """Peak resident memory of this process in bytes (proof the dry run read no weights)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def _one_line(reason: str) -> str:
    """llama.cpp's error line without its "function: " prefixes."""
    reason = " ".join(reason.split())
    while True:
        head, sep, rest = reason.partition(": ")
        if not (sep and head.isidentifier() and rest):
            return reason
        reason = rest


if __name__ == "__main__":
    raise SystemExit(_child_main())
