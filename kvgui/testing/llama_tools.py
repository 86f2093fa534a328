"""llama.cpp's own command-line tools, built from exactly the llama.cpp that the installed
llama-cpp-python bundles, so tests can ask the real ``llama-fit-params``, ``ggml-rpc-server``,
``llama-server``, ``llama-cli`` and ``llama-perplexity`` what they do with a model.

Why build them: llama-cpp-python ships the libraries but not the tools, and a tool from another
llama.cpp commit (a distro package, a release download) allocates differently. So the source is
the sdist of the *installed* llama-cpp-python version (its ``vendor/llama.cpp``), and the CPU
backend is configured with the CPU options that llama-cpp-python's own build recorded in the
``ggml-config.cmake`` it installs (``GGML_NATIVE``, the ``GGML_AVX*``/``AMX`` switches, OpenMP,
``GGML_SCHED_MAX_COPIES``…), so both make the same buffer choices (e.g. the AMX/repack weight
buffers) on this machine. GPU backends stay off and RPC is on: the devices the tools see are
exactly the ``ggml-rpc-server`` processes a test starts (:mod:`kvgui.testing.rpc`).

The binaries land in ``<user cache>/kvgui/llama.cpp-<commit>-<options hash>/bin`` and later runs
reuse them; a file lock keeps two pytest sessions (or CI jobs) from building at once.

    python -m kvgui.testing.llama_tools build   # build once (minutes); prints the bin folder
    python -m kvgui.testing.llama_tools where   # the bin folder, or why there is none
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DIST = "llama-cpp-python"
#: target name -> what it is for. (The RPC server's target is ``ggml-rpc-server`` in this commit;
#: older llama.cpp called it ``rpc-server``.)
TOOLS = ("ggml-rpc-server", "llama-fit-params", "llama-server", "llama-cli", "llama-perplexity")

#: ggml options that decide how the CPU backend computes and which buffers it makes; copied
#: from the installed library's ggml-config.cmake so the tools' CPU backend matches it.
_CPU_OPTIONS = (
    "GGML_NATIVE", "GGML_CPU", "GGML_CPU_ALL_VARIANTS", "GGML_BACKEND_DL", "GGML_OPENMP",
    "GGML_LLAMAFILE", "GGML_CPU_REPACK", "GGML_CPU_KLEIDIAI", "GGML_CPU_HBM",
    "GGML_CPU_ARM_ARCH", "GGML_CPU_POWERPC_CPUTYPE", "GGML_SSE42", "GGML_AVX", "GGML_AVX2",
    "GGML_AVX_VNNI", "GGML_AVX512", "GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16",
    "GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16", "GGML_FMA", "GGML_F16C", "GGML_BMI2",
    "GGML_LASX", "GGML_LSX", "GGML_RVV", "GGML_RV_ZFH", "GGML_RV_ZVFH", "GGML_RV_ZICBOP",
    "GGML_RV_ZIHINTPAUSE", "GGML_RV_ZVFBFWMA", "GGML_BLAS", "GGML_BLAS_VENDOR",
    "GGML_ACCELERATE", "GGML_SCHED_MAX_COPIES",
)
#: what every tools build sets, whatever the bundled library did.
_FIXED_OPTIONS = {
    "CMAKE_BUILD_TYPE": "Release",
    "BUILD_SHARED_LIBS": "OFF",  # self-contained binaries: bin/ is all the cache keeps
    "GGML_RPC": "ON",
    "GGML_CUDA": "OFF", "GGML_HIP": "OFF", "GGML_METAL": "OFF", "GGML_VULKAN": "OFF",
    "GGML_SYCL": "OFF", "GGML_OPENCL": "OFF", "GGML_MUSA": "OFF",
    "LLAMA_OPENSSL": "OFF",  # no https: the tools never download anything
    "LLAMA_BUILD_TESTS": "OFF", "LLAMA_BUILD_EXAMPLES": "OFF", "LLAMA_BUILD_APP": "OFF",
    "LLAMA_BUILD_TOOLS": "ON", "LLAMA_BUILD_SERVER": "ON",
    "LLAMA_BUILD_UI": "OFF", "LLAMA_USE_PREBUILT_UI": "OFF",  # no npm, no HF download
    "GGML_CCACHE": "OFF",
}
#: set to an unpacked llama-cpp-python sdist (the folder holding PKG-INFO and vendor/) to use it
#: instead of downloading one; ignored unless its version is the installed one.
SOURCE_ENV = "KVGUI_LLAMA_CPP_PYTHON_SRC"
CACHE_ENV = "KVGUI_CACHE_DIR"  # overrides platformdirs' user cache dir (CI caches it)


class ToolsError(RuntimeError):
    """A one-line reason the tools (or their source) are not available."""


class SourceUnavailable(ToolsError):
    """The sdist could not be fetched (typically: offline)."""


@dataclass(frozen=True)
class LlamaTools:
    """The built tools, by name: ``tools.path("llama-fit-params")`` or the properties."""

    bin: Path

    def path(self, name: str) -> Path:
        p = self.bin / (name + (".exe" if os.name == "nt" else ""))
        if not p.is_file():
            raise ToolsError(f"{name} missing from {self.bin}")
        return p

    @property
    def rpc_server(self) -> Path:
        return self.path("ggml-rpc-server")

    @property
    def fit_params(self) -> Path:
        return self.path("llama-fit-params")

    @property
    def server(self) -> Path:
        return self.path("llama-server")

    @property
    def cli(self) -> Path:
        return self.path("llama-cli")

    @property
    def perplexity(self) -> Path:
        return self.path("llama-perplexity")

    def info(self) -> dict[str, object]:
        """What the build recorded: version, commit, cmake options, CPU features, seconds."""
        info: dict[str, object] = json.loads((self.bin.parent / "build.json").read_text())
        return info


# --- what is installed -----------------------------------------------------------------------

def installed_version() -> str:
    try:
        return importlib.metadata.version(DIST)
    except importlib.metadata.PackageNotFoundError as e:
        raise ToolsError(f"{DIST} is not installed: pip install -e '.[test]'") from e


def bundled_build_options() -> dict[str, str]:
    """The ``set(GGML_… "value")`` lines of the ggml-config.cmake that llama-cpp-python's own
    build installed: how the bundled library was configured. Empty when it installed none."""
    try:
        files = importlib.metadata.distribution(DIST).files or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    for f in files:
        if str(f).replace("\\", "/").endswith("cmake/ggml/ggml-config.cmake"):
            text = Path(str(f.locate())).read_text(encoding="utf-8", errors="replace")
            return dict(re.findall(r'^set\((GGML_\w+) "([^"]*)"\)', text, re.M))
    return {}


def cmake_options(bundled: Mapping[str, str] | None = None) -> dict[str, str]:
    """The -D options of the tools build: the bundled library's CPU choices + the fixed ones."""
    bundled = bundled_build_options() if bundled is None else bundled
    if not bundled:
        log.warning("%s installed no ggml-config.cmake; building with ggml's default CPU "
                    "options (what llama-cpp-python's own build uses too)", DIST)
    opts = {k: bundled[k] for k in _CPU_OPTIONS if bundled.get(k, "") != ""}
    opts.update(_FIXED_OPTIONS)
    # The sdist's vendor/llama.cpp holds a .git file that points at a folder the sdist lacks,
    # so llama.cpp's build-info finds no commit and the tools report "commit unknown"; the
    # bundled library knows its own: the tools are told it, so their --version names the
    # same commit (kvgui reads a llama-server's commit from there).
    if commit := bundled_commit(bundled):
        opts["LLAMA_BUILD_COMMIT"] = commit
        if re.fullmatch(r"\d+", bundled.get("GGML_BUILD_NUMBER", "")):
            opts["LLAMA_BUILD_NUMBER"] = bundled["GGML_BUILD_NUMBER"]
    return opts


def cpu_features() -> str:
    """The host CPU's feature flags (what -march=native compiles for), for the cache key."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return " ".join(sorted(line.split(":", 1)[1].split()))
    return f"{platform.machine()} {platform.processor()}"


def bundled_commit(bundled: Mapping[str, str] | None = None) -> str:
    """The llama.cpp commit the bundled library reports ("" when its build did not know)."""
    bundled = bundled_build_options() if bundled is None else bundled
    commit = bundled.get("GGML_BUILD_COMMIT", "").removesuffix("-dirty")
    return commit if re.fullmatch(r"[0-9a-f]{6,40}", commit) else ""


# --- where things live -----------------------------------------------------------------------

def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    import platformdirs

    return Path(platformdirs.user_cache_dir("kvgui"))


def build_key(version: str | None = None, options: Mapping[str, str] | None = None) -> str:
    """``llama.cpp-<commit>-<hash>``: the hash covers the llama-cpp-python version, the cmake
    options, the targets and (for -march=native builds) the CPU they were compiled for."""
    version = version or installed_version()
    bundled = bundled_build_options()
    options = cmake_options(bundled) if options is None else options
    parts = [version, json.dumps(sorted(options.items())), ",".join(TOOLS)]
    if options.get("GGML_NATIVE", "ON").upper() in ("ON", "1", "TRUE"):
        parts.append(cpu_features())
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]
    return f"llama.cpp-{bundled_commit(bundled) or 'lcp' + version}-{digest}"


def tools_dir(key: str | None = None) -> Path:
    return cache_root() / (key or build_key())


def find_tools() -> LlamaTools | None:
    """The tools built for the installed llama-cpp-python and this CPU, or None."""
    try:
        folder = tools_dir()
    except ToolsError as e:
        log.info("no llama.cpp tools: %s", e)
        return None
    if (folder / "build.json").is_file() and all(
            (folder / "bin" / t).is_file() or (folder / "bin" / f"{t}.exe").is_file()
            for t in TOOLS):
        return LlamaTools(folder / "bin")
    return None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created), held for the with-block, across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        if sys.platform == "win32":
            import msvcrt

            while True:
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    time.sleep(1)
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --- the source ------------------------------------------------------------------------------

def _sdist_version(root: Path) -> str:
    with contextlib.suppress(OSError):
        m = re.search(r"^Version:\s*(\S+)", (root / "PKG-INFO").read_text(), re.M)
        if m:
            return m.group(1)
    return ""


def llama_cpp_source(version: str | None = None) -> Path:
    """The ``vendor/llama.cpp`` tree of the installed llama-cpp-python's sdist: from
    $KVGUI_LLAMA_CPP_PYTHON_SRC when that is the same version, else downloaded once
    (``pip download``) and unpacked into the cache. Raises SourceUnavailable when offline."""
    version = version or installed_version()
    env = os.environ.get(SOURCE_ENV)
    if env:
        root = Path(env)
        if _sdist_version(root) == version and (root / "vendor/llama.cpp/CMakeLists.txt").is_file():
            return root / "vendor" / "llama.cpp"
        log.warning("%s=%s is not an unpacked %s %s sdist; ignoring it",
                    SOURCE_ENV, env, DIST, version)
    root = cache_root() / "src" / f"llama_cpp_python-{version}"
    done = root / ".kvgui-unpacked"
    if done.is_file():
        return root / "vendor" / "llama.cpp"
    with file_lock(cache_root() / "src" / f"llama_cpp_python-{version}.lock"):
        if not done.is_file():
            sdist = _download_sdist(version)
            _unpack(sdist, root)
            done.write_text(version)
            sdist.unlink()  # the unpacked tree is what is kept
    return root / "vendor" / "llama.cpp"


def _download_sdist(version: str) -> Path:
    folder = cache_root() / "sdist"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"llama_cpp_python-{version}.tar.gz"
    if (folder / name).is_file():
        return folder / name
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", "-q",
               f"{DIST}=={version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        got = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not got:
            lines = [ln for ln in (proc.stderr + proc.stdout).splitlines()
                     if ln.strip() and "is ignored" not in ln]
            raise SourceUnavailable(
                f"cannot download the {DIST} {version} sdist (offline?): "
                + (lines[-1].strip() if lines else f"pip exited with {proc.returncode}"))
        got[0].replace(folder / name)
    return folder / name


def _unpack(sdist: Path, root: Path) -> None:
    """Unpack PKG-INFO and vendor/llama.cpp/ of the sdist into ``root`` (atomically)."""
    tmp = Path(tempfile.mkdtemp(dir=root.parent if root.parent.exists() else None,
                                prefix=root.name + ".tmp"))
    try:
        with tarfile.open(sdist) as tar:
            members = []
            for m in tar.getmembers():
                rel = m.name.split("/", 1)[1] if "/" in m.name else ""
                if rel == "PKG-INFO" or rel.startswith("vendor/llama.cpp/"):
                    m.name = rel
                    members.append(m)
            kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(tmp, members=members, **kw)  # type: ignore[arg-type]
        if root.exists():
            shutil.rmtree(root)
        tmp.replace(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- the build -------------------------------------------------------------------------------

def _check_toolchain() -> None:
    if not shutil.which("cmake"):
        raise ToolsError("cmake not found: install it (apt-get install cmake / pip install cmake)")
    cxx = os.environ.get("CXX")
    if not (cxx and shutil.which(cxx)) and not any(
            shutil.which(c) for c in ("c++", "g++", "clang++", "cl")):
        raise ToolsError("no C++ compiler found: install one (apt-get install build-essential)")


def build(*, jobs: int | None = None, force: bool = False) -> LlamaTools:
    """Build the tools into the cache (or return them when built already). Holds the lock."""
    version = installed_version()
    bundled = bundled_build_options()
    options = cmake_options(bundled)
    key = build_key(version, options)
    folder = cache_root() / key
    with file_lock(cache_root() / f"{key}.lock"):
        found = find_tools()
        if found and not force:
            if sys.platform.startswith("linux"):
                memory_shim(found)
            return found
        _check_toolchain()
        source = llama_cpp_source(version)
        work = cache_root() / f"{key}.build"
        logfile = cache_root() / f"{key}.log"
        jobs = jobs or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                        else os.cpu_count() or 1)
        generator = ["-G", "Ninja"] if shutil.which("ninja") else []
        configure = ["cmake", "-S", str(source), "-B", str(work), *generator,
                     *(f"-D{k}={v}" for k, v in options.items())]
        make = ["cmake", "--build", str(work), "--config", "Release", "-j", str(jobs),
                "--target", *TOOLS]
        start = time.monotonic()
        with open(logfile, "w", encoding="utf-8") as out:
            for cmd in (configure, make):
                out.write("$ " + " ".join(cmd) + "\n")
                out.flush()
                rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                                    check=False).returncode
                if rc != 0:
                    raise ToolsError(f"{cmd[1]} {'configure' if cmd is configure else 'build'} "
                                     f"failed ({rc}): {_last_error(logfile)} — log: {logfile}")
        seconds = time.monotonic() - start
        bin_tmp = folder.with_name(folder.name + ".bin-tmp")
        shutil.rmtree(bin_tmp, ignore_errors=True)
        bin_tmp.mkdir(parents=True)
        for t in TOOLS:
            exe = _built(work, t)
            shutil.copy2(exe, bin_tmp / exe.name)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        bin_tmp.replace(folder / "bin")
        shutil.move(str(logfile), folder / "build.log")
        (folder / "build.json").write_text(json.dumps({
            "llama_cpp_python": version, "commit": bundled_commit(bundled),
            "source": str(source), "cmake_options": options, "jobs": jobs,
            "seconds": round(seconds), "cpu_features": cpu_features(),
            "bundled_options_found": bool(bundled),
        }, indent=1))
        shutil.rmtree(work, ignore_errors=True)
        log.info("built llama.cpp tools in %.0f s: %s", seconds, folder / "bin")
        tools = LlamaTools(folder / "bin")
        if sys.platform.startswith("linux"):
            memory_shim(tools)
        return tools


#: a preload library that makes ``sysconf(_SC_PHYS_PAGES)`` report $KVGUI_PHYS_MEM_BYTES of RAM.
#: ggml's CPU device reports physical RAM as its memory (free = total), and an RPC server over
#: the CPU device passes that on to the client; with this, each ``ggml-rpc-server`` is a device
#: of a chosen size (an 8, 12 or 16 GiB "card") to llama.cpp's --fit. This commit's rpc-server
#: has no option for it (ggml-cpu.cpp: ggml_backend_cpu_device_get_memory).
PHYS_MEM_ENV = "KVGUI_PHYS_MEM_BYTES"
_SHIM_NAME = "libkvgui_physmem.so"
_SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

long sysconf(int name) {
    static long (*real)(int) = 0;
    if (!real) real = (long (*)(int)) dlsym(RTLD_NEXT, "sysconf");
    if (name == _SC_PHYS_PAGES || name == _SC_AVPHYS_PAGES) {
        const char * s = getenv("KVGUI_PHYS_MEM_BYTES");
        if (s && *s) return (long) (strtoull(s, 0, 10) / (unsigned long long) real(_SC_PAGESIZE));
    }
    return real(name);
}
"""


def memory_shim(tools: LlamaTools) -> Path:
    """The sysconf preload library next to the tools (compiled on first use; Linux only)."""
    if not sys.platform.startswith("linux"):
        raise ToolsError("faking an RPC device's memory size needs LD_PRELOAD (Linux only)")
    shim = tools.bin / _SHIM_NAME
    if shim.is_file():
        return shim
    with file_lock(tools.bin.parent / "shim.lock"):
        if shim.is_file():
            return shim
        compilers = (os.environ.get("CC"), "cc", "gcc", "clang")
        cc = next((c for c in compilers if c and shutil.which(c)), None)
        if cc is None:
            raise ToolsError("no C compiler for the memory shim: apt-get install build-essential")
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "physmem.c"
            src.write_text(_SHIM_SOURCE)
            out = Path(tmp) / _SHIM_NAME
            proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(src), "-ldl"],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise ToolsError(f"compiling the memory shim failed: {proc.stderr.strip()[-300:]}")
            shutil.copy2(out, shim.with_name(shim.name + ".tmp"))
            shim.with_name(shim.name + ".tmp").replace(shim)
    return shim


def _built(work: Path, target: str) -> Path:
    for sub in ("bin", "bin/Release", "."):
        for name in (target, target + ".exe"):
            if (work / sub / name).is_file():
                return work / sub / name
    raise ToolsError(f"the build made no {target} under {work}")


def _last_error(logfile: Path) -> str:
    lines = logfile.read_text(encoding="utf-8", errors="replace").splitlines()
    errors = [ln for ln in lines if re.search(r"error|Error|ERROR", ln)]
    return (errors or lines or ["(empty log)"])[-1].strip()[:300]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kvgui.testing.llama_tools",
                                 description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the tools once (minutes) and print their folder")
    b.add_argument("-j", "--jobs", type=int, default=None)
    b.add_argument("--force", action="store_true", help="rebuild even when built")
    sub.add_parser("where", help="print the tools' folder, or why there is none")
    sub.add_parser("source", help="fetch the bundled llama.cpp source; print its folder")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.cmd == "build":
            print(build(jobs=args.jobs, force=args.force).bin)
        elif args.cmd == "source":
            print(llama_cpp_source())
        else:
            found = find_tools()
            if not found:
                print(f"not built (would be {tools_dir()}/bin): "
                      "python -m kvgui.testing.llama_tools build", file=sys.stderr)
                return 1
            print(found.bin)
    except ToolsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
