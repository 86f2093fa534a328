"""The user's own llama.cpp binaries: where they are, what they are, what they accept.

Most llama.cpp users already have its tools (a CUDA/Vulkan/ROCm/Metal release archive or their
own build); kvgui runs those for Serve, Verify (llama-fit-params) and Open in terminal. Which
one: the folder the user chose once (Settings ▸ llama.cpp folder, remembered in the app config),
else one on PATH, else none (``MISSING_HINT`` says how to get one).

Before anything is launched the binary is asked, without loading a model:
``--version`` (is it llama.cpp at all, which build), ``--list-devices`` (which backends and
devices it sees) and ``--help`` (which flags it knows). A command line with a flag the build
does not know is refused with the flags named, before a launch that would only fail.
Answers are kept per (path, size, mtime): probing a CUDA build takes a second or two.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kvgui.runtime.childproc import child_env

log = logging.getLogger(__name__)

LLAMA_SERVER = "llama-server"
LLAMA_FIT_PARAMS = "llama-fit-params"
LLAMA_CLI = "llama-cli"
PROBE_TIMEOUT_S = 30.0

MISSING_HINT = (
    "get llama.cpp's binaries from https://github.com/ggml-org/llama.cpp/releases (CUDA, "
    "Vulkan, ROCm, Metal and CPU builds), or build them (cmake -B build && cmake --build build "
    "--target {tool}), then choose their folder in Settings ▸ llama.cpp folder")


class ToolError(Exception):
    """A binary that cannot be used as asked: one line saying why (and what to do)."""


class NotLlamaCpp(ToolError):
    """The program answered, but not as llama.cpp does."""


class UnknownFlags(ToolError):
    """The build does not know some of the flags kvgui would pass (an older llama.cpp)."""

    def __init__(self, tool: ToolInfo, flags: Sequence[str]) -> None:
        self.flags = tuple(flags)
        super().__init__(
            f"this {tool.name} ({tool.version_line or 'unknown version'}) does not know "
            f"{', '.join(self.flags)}: it is older than the llama.cpp kvgui exports for - "
            "update it, or remove these settings")


@dataclass(frozen=True)
class Device:
    """One line of ``--list-devices``: "CUDA0: NVIDIA GeForce RTX 4090 (24563 MiB, … free)"."""

    name: str
    description: str
    total_mib: int | None
    free_mib: int | None

    @property
    def backend(self) -> str:
        """"CUDA0" -> "CUDA", "Vulkan1" -> "Vulkan", "RPC[127.0.0.1:5000]" -> "RPC"."""
        m = re.match(r"[A-Za-z]+", self.name)
        return m.group(0) if m else self.name


@dataclass(frozen=True)
class ToolInfo:
    """What a llama.cpp binary said about itself."""

    path: str
    name: str  # llama-server, llama-fit-params, ...
    version: str | None  # "b7000" / "7000"
    commit: str | None
    version_line: str  # the "version: …" line as printed
    built_with: str  # the "built with …" line, "" if absent
    devices: tuple[Device, ...]
    flags: frozenset[str]

    @property
    def backends(self) -> tuple[str, ...]:
        """The backends with a device ("CUDA", "Vulkan"…); empty for a CPU-only build."""
        seen: list[str] = []
        for d in self.devices:
            if d.backend not in seen:
                seen.append(d.backend)
        return tuple(seen)

    def summary(self) -> str:
        """"llama-server version: 7000 (abc123) · CUDA: CUDA0 NVIDIA RTX 4090 (24 GiB)"."""
        devs = ", ".join(
            f"{d.name} {d.description}" + (f" ({d.total_mib} MiB)" if d.total_mib else "")
            for d in self.devices) or "CPU only"
        return f"{self.name} {self.version_line or '(no version)'} · {devs}"

    def unknown_flags(self, argv: Sequence[str]) -> list[str]:
        """The flags of ``argv`` (program first) this build's ``--help`` does not list."""
        out: list[str] = []
        for token in argv[1:]:
            flag = token.split("=", 1)[0]
            if _FLAG.fullmatch(flag) and flag not in self.flags and flag not in out:
                out.append(flag)
        return out

    def check(self, argv: Sequence[str]) -> None:
        """Raise UnknownFlags when ``argv`` uses flags this build does not know."""
        if unknown := self.unknown_flags(argv):
            raise UnknownFlags(self, unknown)


_FLAG = re.compile(r"--?[A-Za-z][A-Za-z0-9_-]*")
# "version: 7000 (build 7000, commit abc1234)" (this llama.cpp), "version: 6895 (4341dc8bc)"
_VERSION = re.compile(
    r"^version: (?P<version>\S+)(?: \((?:build \d+, commit )?(?P<commit>[^)]*)\))?", re.M)
_BUILT = re.compile(r"^built with .*$", re.M)
_DEVICE = re.compile(
    r"^\s+(?P<name>\S+): (?P<desc>.*?)(?: \((?P<total>\d+) MiB, (?P<free>\d+) MiB free\))?\s*$")


def parse_version(text: str) -> tuple[str | None, str | None, str, str]:
    """(version, commit, the version line, the built-with line) from ``--version``."""
    m = _VERSION.search(text)
    built = _BUILT.search(text)
    if m is None:
        return None, None, "", built.group(0) if built else ""
    return m.group("version"), m.group("commit"), m.group(0).strip(), \
        built.group(0) if built else ""


def parse_devices(text: str) -> tuple[Device, ...]:
    """The devices of ``--list-devices`` (after "Available devices:"); "(none)" gives ()."""
    out: list[Device] = []
    seen_header = False
    for line in text.splitlines():
        if line.strip() == "Available devices:":
            seen_header = True
            continue
        if not seen_header or line.strip() in ("", "(none)"):
            continue
        m = _DEVICE.match(line)
        if m:
            total, free = m.group("total"), m.group("free")
            out.append(Device(m.group("name"), m.group("desc"),
                              int(total) if total else None, int(free) if free else None))
    return tuple(out)


def parse_help_flags(text: str) -> frozenset[str]:
    """Every flag ``--help`` lists: option lines start with them ("-c,    --ctx-size N …",
    "-fa,   --flash-attn [on|off|auto]", "-kvu, --kv-unified, -no-kvu, --no-kv-unified")."""
    flags: set[str] = set()
    for line in text.splitlines():
        if not line.startswith("-"):
            continue
        for token in line.split():  # "-a, --bb, --cc VALUE   help": names end with ","
            word = token.rstrip(",")
            if _FLAG.fullmatch(word):
                flags.add(word)
            if not token.endswith(","):
                break
    return frozenset(flags)


def _run(path: str, *args: str) -> str:
    """stdout + stderr of ``path args`` (the tools print some of this on stderr)."""
    try:
        r = subprocess.run([path, *args], capture_output=True, text=True, errors="replace",
                           timeout=PROBE_TIMEOUT_S, env=child_env(), check=False,
                           stdin=subprocess.DEVNULL, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise ToolError(f"{path} {' '.join(args)} did not answer in {PROBE_TIMEOUT_S:g} s") \
            from None
    except OSError as exc:
        raise ToolError(f"cannot run {path}: {exc.strerror or exc}") from None
    return r.stdout + r.stderr


_PROBED: dict[tuple[str, int, int], ToolInfo] = {}


def probe(path: str | os.PathLike[str]) -> ToolInfo:
    """Ask the binary what it is; NotLlamaCpp when it does not answer like llama.cpp."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as exc:
        raise ToolError(f"no such program: {p} ({exc.strerror})") from None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key in _PROBED:
        return _PROBED[key]
    version, commit, line, built = parse_version(_run(str(p), "--version"))
    if version is None:
        raise NotLlamaCpp(f"{p} is not a llama.cpp program: its --version does not say "
                          "'version: …' as llama.cpp's tools do")
    flags = parse_help_flags(_run(str(p), "--help"))
    if "--model" not in flags and "-m" not in flags:
        raise NotLlamaCpp(f"{p} is not a llama.cpp program that loads models: its --help "
                          "lists no -m/--model")
    devices = parse_devices(_run(str(p), "--list-devices")) if "--list-devices" in flags \
        else ()
    name = p.name[:-4] if p.name.lower().endswith(".exe") else p.name
    info = ToolInfo(str(p), name, version, commit, line, built, devices, flags)
    _PROBED[key] = info
    log.info("probed %s: %s", p, info.summary())
    return info


def _exe(name: str) -> str:
    return name + (".exe" if os.name == "nt" else "")


def find_tool(name: str, folder: str | os.PathLike[str] | None = None,
              *, search_path: bool = True) -> Path | None:
    """``name`` in ``folder`` (also its ``bin/`` and ``build/bin/``), else on PATH, else None."""
    if folder:
        base = Path(folder).expanduser()
        for sub in (base, base / "bin", base / "build" / "bin"):
            candidate = sub / _exe(name)
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return candidate
    if search_path:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def require_tool(name: str, folder: str | os.PathLike[str] | None = None) -> ToolInfo:
    """The probed tool, or ToolError saying where kvgui looked and how to get one."""
    path = find_tool(name, folder)
    if path is None:
        where = f"in {folder} or on PATH" if folder else "on PATH (no llama.cpp folder chosen)"
        raise ToolError(f"no {name} {where}: " + MISSING_HINT.format(tool=name))
    info = probe(path)
    if info.name != name and name not in Path(info.path).name:
        log.warning("%s answers like llama.cpp but is named %s", name, info.name)
    return info


def flags_of(argvs: Iterable[Sequence[str]]) -> set[str]:
    """All flags used by some command lines (for messages and tests)."""
    return {t for argv in argvs for t in argv[1:] if _FLAG.fullmatch(t)}
