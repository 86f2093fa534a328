"""The host CPU as llama.cpp's CPU backend sees it: which extra weight buffer types it has.

llama.cpp keeps a CPU weight in the first buffer type of its list that supports the op the
weight feeds (src/llama-model.cpp make_cpu_buft_list: ACCEL, GPU host, the CPU backend's
*extra* buffer types, plain CPU). The extra ones repack weights for faster kernels, and AMX's
packing is larger than the file's tensor, so how much RAM the weights take depends on them.

Which extra buffer types exist is fixed when ggml is compiled: AMX needs ``__AMX_INT8__`` and
``__AVX512VNNI__`` (a -march=native build on a Sapphire Rapids or later Xeon), CPU_REPACK's
kernel choice reads compile-time features (ggml_cpu_has_avx2 & co. are #if's), and AMX also
needs the kernel's permission at run time (arch_prctl ARCH_REQ_XCOMP_PERM). So the truth is
the installed build's answer (llama_backend.probe_host_cpu); the processor's own flags say
what a native build on it would have, for when no build is installed.

Pure data: nothing here imports llama_cpp; ``read_cpu_flags`` reads /proc/cpuinfo.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

log = logging.getLogger(__name__)

AMX = "AMX"
REPACK = "CPU_REPACK"
KLEIDIAI = "KLEIDIAI"
SPACEMIT = "SPACEMIT"  # RISC-V IME (ggml-cpu/spacemit)

# Extra buffer types whose placement and sizes kvgui follows (ggml-cpu/amx, ggml-cpu/repack.cpp)
MODELED = frozenset({AMX, REPACK})


@dataclass(frozen=True)
class HostCpu:
    """llama.cpp's CPU backend: its extra buffer types, in the order llama.cpp tries them,
    and the compiled-in features that decide CPU_REPACK's kernels.

    ``extra_buffers``: names as ggml gives them ("AMX", "CPU_REPACK", "KLEIDIAI", ...).
    ``features``: ggml_backend_get_features names that are on ("AVX2", "AVX512", "AMX_INT8",
    "NEON", "DOTPROD", "MATMUL_INT8", "SVE", ...); ``sve_cnt`` is SVE's vector length in bytes.
    ``cpu_flags``: what the processor itself reports (lower-case /proc/cpuinfo flags).
    ``source``: where the description comes from, said to the user with the figures.
    """

    extra_buffers: tuple[str, ...] = ()
    features: frozenset[str] = frozenset()
    sve_cnt: int = 0
    cpu_flags: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    source: str = "assumed: no extra CPU buffer types"
    # why this build's extra-buffer kernels crash at the first decode ("" if they do not, or
    # unchecked): kvgui.runtime.cpu_kernels checks it; llama.cpp then needs -nr
    kernels_crash: str = ""

    def has(self, feature: str) -> bool:
        return feature in self.features

    @property
    def amx(self) -> bool:
        return AMX in self.extra_buffers

    @property
    def repack(self) -> bool:
        return REPACK in self.extra_buffers

    @property
    def unmodeled(self) -> tuple[str, ...]:
        """Extra buffer types whose rules kvgui does not follow (their figures may differ)."""
        return tuple(b for b in self.extra_buffers if b not in MODELED)

    def without_extra_buffers(self) -> HostCpu:
        """llama.cpp run with -nr / --no-repack (use_extra_bufts = false)."""
        return replace(self, extra_buffers=(), source=self.source + ", --no-repack",
                       kernels_crash="")

    def to_dict(self) -> dict[str, object]:
        return {"extra_buffers": list(self.extra_buffers), "features": sorted(self.features),
                "sve_cnt": self.sve_cnt, "source": self.source,
                "kernels_crash": self.kernels_crash or None}


def _preset(name: str, extra: tuple[str, ...], features: Iterable[str]) -> HostCpu:
    return HostCpu(extra, frozenset(features), source=f"assumed: {name}")


_X86 = ("SSE3", "SSSE3", "AVX", "F16C", "FMA")
# "Planning for another machine": the CPU backends of common native builds.
PRESETS: dict[str, HostCpu] = {
    "none": _preset("none (no extra CPU buffer types, or -nr)", (), ()),
    "avx2": _preset("x86 AVX2 (CPU_REPACK)", (REPACK,), (*_X86, "AVX2")),
    "avx512": _preset("x86 AVX-512 (CPU_REPACK)", (REPACK,),
                      (*_X86, "AVX2", "AVX512", "AVX512_VNNI")),
    "amx": _preset("x86 AMX (AMX, CPU_REPACK)", (AMX, REPACK),
                   (*_X86, "AVX2", "AVX512", "AVX512_VNNI", "AMX_INT8")),
    "arm-dotprod": _preset("Arm NEON dot product (CPU_REPACK)", (REPACK,),
                           ("NEON", "ARM_FMA", "DOTPROD")),
    "arm-i8mm": _preset("Arm NEON i8mm (CPU_REPACK)", (REPACK,),
                        ("NEON", "ARM_FMA", "DOTPROD", "MATMUL_INT8")),
}


def preset(name: str) -> HostCpu:
    try:
        return PRESETS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown CPU {name!r}: one of {', '.join(PRESETS)}") from None


# /proc/cpuinfo flag -> ggml feature name, for what a native build would compile in
_X86_FLAGS = {"sse3": "SSE3", "pni": "SSE3", "ssse3": "SSSE3", "avx": "AVX", "f16c": "F16C",
              "fma": "FMA", "avx2": "AVX2", "avx512f": "AVX512", "avx512_vnni": "AVX512_VNNI",
              "avx512vbmi": "AVX512_VBMI", "avx512_bf16": "AVX512_BF16",
              "avx_vnni": "AVX_VNNI", "bmi2": "BMI2", "amx_int8": "AMX_INT8"}
_ARM_FLAGS = {"asimd": "NEON", "asimddp": "DOTPROD", "i8mm": "MATMUL_INT8", "sve": "SVE",
              "sme": "SME"}


def native_build(flags: Iterable[str], machine: str = "") -> HostCpu:
    """What a -march=native build (pip's default for llama-cpp-python) has on a CPU with
    these flags: AMX with amx_int8 + avx512_vnni, CPU_REPACK always (GGML_CPU_REPACK is on
    by default)."""
    flags = frozenset(f.lower() for f in flags)
    arm = machine.lower() in ("arm64", "aarch64") or "asimd" in flags
    table = _ARM_FLAGS if arm else _X86_FLAGS
    features = {table[f] for f in flags if f in table}
    if arm:
        features.add("ARM_FMA")
    extra: list[str] = []
    if "AMX_INT8" in features and "AVX512_VNNI" in features:
        extra.append(AMX)
    extra.append(REPACK)
    return HostCpu(tuple(extra), frozenset(features), cpu_flags=flags,
                   source="assumed: a native llama.cpp build for this CPU's flags")


def from_backend(extra: Sequence[str], features: dict[str, str],
                 flags: frozenset[str] = frozenset(), version: str | None = None
                 ) -> HostCpu:
    """A HostCpu from what ggml's CPU backend says of itself (extra buffer type names, and
    the features from ggml_backend_get_features, "1" when on)."""
    on = frozenset(k for k, v in features.items() if v not in ("", "0"))
    try:
        sve_cnt = int(features.get("SVE_CNT", 0) or 0)
    except ValueError:
        sve_cnt = 0
    what = f"llama-cpp-python {version}" if version else "the installed llama-cpp-python"
    return HostCpu(tuple(extra), on, sve_cnt, cpu_flags=flags, source=f"{what}'s CPU backend")


def parse_cpuinfo(text: str) -> frozenset[str]:
    """The flags of the first processor in /proc/cpuinfo ("flags" on x86, "Features" on Arm)."""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return frozenset()


def read_cpu_flags(path: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """This CPU's flags where cheap to read (Linux); empty elsewhere."""
    try:
        return parse_cpuinfo(path.read_text(errors="replace"))
    except OSError as exc:
        log.debug("no CPU flags from %s: %s", path, exc)
        return frozenset()


def machine() -> str:
    return platform.machine()
