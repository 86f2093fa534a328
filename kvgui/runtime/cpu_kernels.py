"""Does this llama.cpp's CPU backend survive its own extra-buffer kernels (AMX, repack)?

A llama-cpp-python built with ``-march=native`` by GCC 12 on a CPU with AMX compiles
ggml-cpu/amx/mmq.cpp's ``ggml_tile_config_init`` so that the stores filling the tile
configuration are dropped (GCC 12's ``_tile_loadconfig`` has no memory operand); the first
AMX matrix multiplication then loads a half-zeroed configuration and the process dies with
SIGSEGV (a general protection fault on ``ldtilecfg``). That is Debian 12's default compiler
and any recent Xeon: the load and the dry run work, the first token crashes. llama.cpp's
``-nr`` (``--no-repack``: no extra CPU buffer types) avoids those kernels.

``check_kernels`` finds out for real, once per build: a child process writes a tiny model
whose matrices the extra buffer types take, loads it with them and decodes one token. The
answer is cached by the library's path, size and time, so a new build is checked again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from kvgui.runtime.childproc import child_env

log = logging.getLogger(__name__)

TIMEOUT_S = 60.0
_GCC = re.compile(rb"GCC: \([^)]*\) (\d+)\.(\d+)")


@dataclass(frozen=True)
class KernelCheck:
    """The outcome: ``ok`` False when a decode through the extra buffers crashed."""

    ok: bool
    library: str
    compiler: str = ""  # e.g. "GCC 12.2", from the library's .comment section
    detail: str = ""  # how it failed ("killed by SIGSEGV"), or why it was not checked
    checked: bool = True  # False: could not be checked (no llama-cpp-python, a timeout)

    @property
    def advice(self) -> str:
        if self.ok:
            return ""
        built = f" (built by {self.compiler})" if self.compiler else ""
        return (f"this llama-cpp-python{built} crashes in its AMX/repack CPU kernels "
                f"({self.detail}); run llama.cpp with -nr (--no-repack), or rebuild "
                "llama-cpp-python with GCC 13 or newer")


_CHILD = r"""
import sys
from pathlib import Path
from kvgui.testing.tiny_model import write_tiny_model
import llama_cpp
path = Path(sys.argv[1])
# matrices every extra CPU buffer type takes: AMX (ne0, ne1 multiples of 32) and repack
write_tiny_model(path, dtype="q4_0", n_embd=256, n_head=4, n_head_kv=2, n_ff=512,
                 tensor_types={"token_embd": "q8_0", "output": "q8_0"})
llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_batch=64, verbose=False)
llm.eval(llm.tokenize(b"hello hello hello"))
print("ok")
"""


def library_path() -> Path | None:
    """libggml-cpu of the installed llama-cpp-python (without importing it)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    for name in ("libggml-cpu.so", "libggml-cpu.dylib", "ggml-cpu.dll"):
        if (lib / name).exists():
            return lib / name
    return None


def compiler_of(library: Path) -> str:
    """"GCC 12.2" from an ELF's .comment section (read as bytes: no tool needed)."""
    try:
        data = library.read_bytes()
    except OSError:
        return ""
    m = _GCC.search(data)
    return f"GCC {int(m.group(1))}.{int(m.group(2))}" if m else ""


def _cache_file() -> Path:
    from kvgui.core.config.appconfig import user_dir

    return user_dir("KVGUI_CACHE_DIR", "cache") / "cpu_kernels.json"


def _key(library: Path) -> str:
    st = library.stat()
    return f"{library}:{st.st_size}:{int(st.st_mtime)}"


def check_kernels(*, use_cache: bool = True, timeout: float = TIMEOUT_S) -> KernelCheck:
    """Whether the installed build decodes through its extra CPU buffers (cached).

    ``KVGUI_CHECK_KERNELS=0`` skips the check (the test suite does, so that its figures do not
    depend on this machine's build; tests of the check itself turn it back on)."""
    if os.environ.get("KVGUI_CHECK_KERNELS", "1") == "0":
        return KernelCheck(True, "", detail="skipped (KVGUI_CHECK_KERNELS=0)", checked=False)
    library = library_path()
    if library is None:
        return KernelCheck(True, "", detail="llama-cpp-python is not installed", checked=False)
    key = _key(library)
    cache = _cache_file()
    if use_cache:
        try:
            saved = json.loads(cache.read_text(encoding="utf-8"))
            if saved.get("key") == key:
                return KernelCheck(**saved["result"])
        except (OSError, ValueError, TypeError, KeyError):
            pass
    result = _run_child(library, timeout)
    if result.checked:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({"key": key, "result": asdict(result)}),
                             encoding="utf-8")
        except OSError:
            log.info("cannot cache the kernel check in %s", cache, exc_info=True)
    return result


def _run_child(library: Path, timeout: float) -> KernelCheck:
    import tempfile

    compiler = compiler_of(library)
    with tempfile.TemporaryDirectory(prefix="kvgui-kernels-") as tmp:
        try:
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(Path(tmp) / "k.gguf")],
                                  capture_output=True, text=True, timeout=timeout,
                                  env=child_env())
        except subprocess.TimeoutExpired:
            return KernelCheck(True, str(library), compiler, f"no answer in {timeout:.0f} s",
                               checked=False)
        except OSError as exc:
            return KernelCheck(True, str(library), compiler, str(exc), checked=False)
    if proc.returncode == 0 and proc.stdout.strip().endswith("ok"):
        return KernelCheck(True, str(library), compiler)
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        log.warning("llama.cpp's CPU kernels crashed (%s) in %s", name, library)
        return KernelCheck(False, str(library), compiler, f"killed by {name}")
    tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
    log.info("kernel check failed without a crash: %s", tail)
    return KernelCheck(True, str(library), compiler, f"not checked: {tail[:200]}",
                       checked=False)


if __name__ == "__main__":  # python -m kvgui.runtime.cpu_kernels
    r = check_kernels(use_cache=os.environ.get("KVGUI_NO_CACHE") is None)
    print(json.dumps(asdict(r), indent=2))
    sys.exit(0 if r.ok else 1)
