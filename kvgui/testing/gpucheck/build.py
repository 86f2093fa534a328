"""The CUDA check's llama.cpp build: ggml (CPU + CUDA), libllama and llama-fit-params only.

Shared libraries, so the same build serves llama-fit-params and llama-cpp-python's ctypes
bindings (kvgui's dry run and the real load put them where the bindings look). CUDA code for
the one architecture of the lent GPU (``-DCMAKE_CUDA_ARCHITECTURES=90``: the H200), and
of the flash-attention vector kernels only the K/V type pairs the check uses:
``GGML_CUDA_FA_QUANTS`` (ggml/cmake/common.cmake ggml_cuda_fattn_vec_instances; f16-f16 is
always built; ``GGML_CUDA_FA_ALL_QUANTS`` is off by default and deprecated). The MMA and tile
kernels of fattn, mmq and mmf have no such option: all their template instances are built.
The CPU options are ggml's defaults, as llama-cpp-python's pip build has them
(``GGML_NATIVE`` on: the CPU backend is compiled for the device's processor, which decides
its extra weight buffers).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

#: the flash-attention vector kernels' K-V pairs beyond f16-f16 (GGML_CUDA_FA_QUANTS syntax)
FA_QUANTS = "q8_0-q8_0,q4_0-q4_0"
#: built first (what kvgui's dry run and the real loads need), then llama-fit-params (its
#: common library is ~140 more C++ files), while the GPU steps run
TARGETS = ("llama",)
LATER_TARGETS = ("llama-fit-params",)
LIBRARIES = ("libllama.so", "libggml.so", "libggml-base.so", "libggml-cpu.so")

_COMMON = {
    "CMAKE_BUILD_TYPE": "Release",
    "BUILD_SHARED_LIBS": "ON",
    "GGML_RPC": "OFF",
    "LLAMA_BUILD_TESTS": "OFF", "LLAMA_BUILD_EXAMPLES": "OFF", "LLAMA_BUILD_SERVER": "OFF",
    "LLAMA_BUILD_APP": "OFF", "LLAMA_BUILD_TOOLS": "ON", "LLAMA_BUILD_COMMON": "ON",
    "LLAMA_BUILD_UI": "OFF", "LLAMA_USE_PREBUILT_UI": "OFF",
    "LLAMA_OPENSSL": "OFF", "GGML_CCACHE": "OFF",
}


def cmake_options(cuda: bool = True, arch: str = "90") -> dict[str, str]:
    """The -D options: CUDA for ``arch`` (the device run), or the same build without CUDA (the
    dry rehearsal's proof that the subset configures and builds)."""
    opts = dict(_COMMON)
    if cuda:
        opts.update({"GGML_CUDA": "ON", "CMAKE_CUDA_ARCHITECTURES": arch,
                     "GGML_CUDA_FA_QUANTS": FA_QUANTS,
                     "GGML_CUDA_NCCL": "OFF"})  # one GPU: no NCCL to find or link
    else:
        opts["GGML_CUDA"] = "OFF"
    return opts


@dataclass
class BuildResult:
    ok: bool
    build_dir: str
    lib_dir: str = ""
    fit_params: str = ""
    configure_s: float = 0.0
    build_s: float = 0.0
    jobs: int = 0
    options: dict[str, str] = field(default_factory=dict)
    error: str = ""
    log_tail: str = ""
    libraries: dict[str, int] = field(default_factory=dict)  # name -> bytes

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)


def _tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def build(source: Path, build_dir: Path, *, cuda: bool = True, jobs: int | None = None,
          timeout: float = 420.0, options: Mapping[str, str] | None = None,
          logfile: Path | None = None, targets: tuple[str, ...] = TARGETS) -> BuildResult:
    """Configure and build ``targets`` within ``timeout`` seconds (configure included);
    never raises for a failed or late build: the result says what happened."""
    jobs = jobs or len(os.sched_getaffinity(0))
    opts = dict(options) if options is not None else cmake_options(cuda)
    logfile = logfile or build_dir.with_suffix(".log")
    build_dir.mkdir(parents=True, exist_ok=True)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = ["cmake", "-S", str(source), "-B", str(build_dir), *generator,
                 *(f"-D{k}={v}" for k, v in opts.items())]
    make = ["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", *targets]
    result = BuildResult(False, str(build_dir), jobs=jobs, options=opts)
    deadline = time.monotonic() + timeout
    with open(logfile, "w", encoding="utf-8") as out:
        for step, cmd in (("configure", configure), ("build", make)):
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            t0 = time.monotonic()
            left = deadline - t0
            if left <= 1:
                result.error = f"no time left for the {step}"
                break
            try:
                rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, timeout=left,
                                    check=False).returncode
            except subprocess.TimeoutExpired:
                rc = None
            elapsed = round(time.monotonic() - t0, 1)
            setattr(result, f"{step}_s", elapsed)
            if rc != 0:
                result.error = (f"{step} timed out after {elapsed} s" if rc is None
                                else f"{step} failed ({rc})")
                break
        else:
            result.ok = True
    result.log_tail = _tail(logfile)
    if result.ok:
        bin_dir = build_dir / "bin"
        result.lib_dir = str(bin_dir)
        result.fit_params = str(bin_dir / "llama-fit-params")
        result.libraries = {p.name: p.stat().st_size for p in sorted(bin_dir.glob("lib*.so"))}
        missing = [n for n in LIBRARIES if n not in result.libraries]
        if cuda and "libggml-cuda.so" not in result.libraries:
            missing.append("libggml-cuda.so")
        if "llama-fit-params" in targets and not Path(result.fit_params).is_file():
            missing.append("llama-fit-params")
        if missing:
            result.ok = False
            result.error = f"the build made no {missing} in {bin_dir}"
    return result


class LaterBuild:
    """``LATER_TARGETS`` built in the background (the build folder configured already)."""

    def __init__(self, build_dir: Path, jobs: int, logfile: Path) -> None:
        self.build_dir = build_dir
        self.logfile = logfile
        self.t0 = time.monotonic()
        self.seconds: float | None = None
        self._out = open(logfile, "a", encoding="utf-8")  # noqa: SIM115 (closed in wait)
        cmd = ["cmake", "--build", str(build_dir), "-j", str(jobs), "--target", *LATER_TARGETS]
        self._out.write("$ " + " ".join(cmd) + "\n")
        self._out.flush()
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait(self, timeout: float) -> Path | None:
        """llama-fit-params once built within ``timeout`` s, else None (the build stopped)."""
        try:
            rc = self.proc.wait(timeout=max(0.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
            rc = None
        self.seconds = round(time.monotonic() - self.t0, 1)
        self._out.close()
        binary = self.build_dir / "bin" / "llama-fit-params"
        return binary if rc == 0 and binary.is_file() else None


def install_into_bindings(lib_dir: Path, site: Path) -> Path:
    """Link the build's libraries into llama-cpp-python's ``llama_cpp/lib`` under ``site``,
    where its bindings, kvgui's dry run and kvgui's CPU-backend probe all look."""
    dest = site / "llama_cpp" / "lib"
    dest.mkdir(parents=True, exist_ok=True)
    for lib in lib_dir.glob("lib*.so*"):
        target = dest / lib.name
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(lib.resolve())
    return dest


# --- the build, brought back and carried again --------------------------------------------
#
# A second call (a rerun after a run cut short) need not build again: the first one writes the
# built libraries and llama-fit-params to $OUT in parts the device tool brings back (each part
# at most 16 MiB); copied into .gpucheck/prebuilt/ and carried, they replace the build.

PART_BYTES = 15 << 20
MAX_PARTS = 3
PREBUILT_DIR = "prebuilt"
PREBUILT_NAME = "llama-cuda-bin.tar.xz"


def pack_artifacts(bin_dir: Path, out_dir: Path, options: Mapping[str, str]) -> dict[str, object]:
    """``out_dir/llama-cuda-bin.tar.xz.partNN`` (the libraries and llama-fit-params of
    ``bin_dir``) and a stamp of the options they were built with; or why not."""
    names = sorted(p.name for p in bin_dir.iterdir()
                   if p.name.startswith("lib") and ".so" in p.name)
    if (bin_dir / "llama-fit-params").is_file():
        names.append("llama-fit-params")
    out_dir.mkdir(parents=True, exist_ok=True)
    whole = out_dir / PREBUILT_NAME
    cmd = ["tar", "-C", str(bin_dir), "-I", "xz -T0 -3", "-cf", str(whole), *names]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"parts": [], "error": proc.stderr.strip()[-300:]}
    size = whole.stat().st_size
    if size > PART_BYTES * MAX_PARTS:
        whole.unlink()
        return {"parts": [], "bytes": size,
                "error": f"{size >> 20} MiB: more than {MAX_PARTS} parts of {PART_BYTES >> 20}"}
    parts = []
    with open(whole, "rb") as f:
        i = 0
        while block := f.read(PART_BYTES):
            part = out_dir / f"{PREBUILT_NAME}.part{i:02d}"
            part.write_bytes(block)
            parts.append(part.name)
            i += 1
    whole.unlink()
    (out_dir / f"{PREBUILT_NAME}.json").write_text(
        json.dumps({"options": dict(options), "parts": parts, "bytes": size}))
    return {"parts": parts, "bytes": size, "error": None}


def unpack_artifacts(folder: Path, bin_dir: Path, options: Mapping[str, str]) -> bool:
    """Reassemble ``folder``'s parts into ``bin_dir`` when they were built with ``options``."""
    stamp = folder / f"{PREBUILT_NAME}.json"
    if not stamp.is_file():
        return False
    meta = json.loads(stamp.read_text())
    if meta.get("options") != dict(options):
        log.warning("the carried build was made with other options: building afresh")
        return False
    bin_dir.mkdir(parents=True, exist_ok=True)
    whole = bin_dir.parent / PREBUILT_NAME
    with open(whole, "wb") as out:
        for name in meta["parts"]:
            out.write((folder / name).read_bytes())
    subprocess.run(["tar", "-C", str(bin_dir), "-xf", str(whole)], check=True)
    whole.unlink()
    return True
