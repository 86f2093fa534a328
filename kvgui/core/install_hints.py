"""One-line "what to install" hints for the failures a newcomer meets first.

The GUI entry, the CLI and the llama.cpp child processes all end up telling the user the same
few things (the Debian packages Qt needs on X11, how to install or rebuild llama-cpp-python);
keeping the wording here means every place says it the same way, and the README can quote it.
Nothing here imports Qt or llama_cpp: the hints are built from the exception already caught.
"""

from __future__ import annotations

import re

# What a minimal Debian/Ubuntu system (a container, a server with ssh -X) lacks for PySide6's
# xcb platform plugin: with their dependencies these cover every library that libqxcb.so,
# libQt6XcbQpa, libQt6Gui/Core/Widgets/DBus and the xcb GL integrations link outside the wheel
# (tests/test_first_run.py checks that against ldd and apt). Qt >= 6.5 refuses to start
# without xcb-cursor; glib is linked by QtCore itself.
QT_X11_DEBIAN_PACKAGES: tuple[str, ...] = (
    "libxcb-cursor0",
    "libxcb-icccm4",
    "libxcb-keysyms1",
    "libxcb-image0",
    "libxcb-render-util0",
    "libxcb-shape0",
    "libxkbcommon-x11-0",
    "libegl1",
    "libgl1",
    "libfontconfig1",
    "libdbus-1-3",
    "libglib2.0-0",
)

# The range pyproject.toml requires: the estimate is verified against this llama.cpp.
LLAMA_CPP_REQUIREMENT = "llama-cpp-python>=0.3.36,<0.4"

_SONAME = re.compile(r"(lib[\w+.-]+?\.so(?:\.\d+)*)")
_GPU_RUNTIMES = ("libcuda", "libcudart", "libcublas", "libnvidia", "libamdhip", "libhip",
                 "librocblas", "libhipblas", "libvulkan", "libMTL")


# Debian names that do not follow the soname rule below.
_DEBIAN_EXCEPTIONS = {"libglib-2.0": "libglib2.0-0", "libgthread-2.0": "libglib2.0-0",
                      "libgobject-2.0": "libglib2.0-0", "libgio-2.0": "libglib2.0-0"}


def debian_package(soname: str) -> str:
    """Debian's package for a shared library, by Debian's naming policy: libxcb-cursor.so.0 ->
    libxcb-cursor0, libdbus-1.so.3 -> libdbus-1-3 (a dash when the name ends in a digit),
    libEGL.so.1 -> libegl1; glib's are the exception (libglib2.0-0)."""
    m = re.search(r"(lib[\w+.-]+?)\.so\.(\d+)", soname)
    if not m:
        return soname
    name, version = m.group(1), m.group(2)
    if name in _DEBIAN_EXCEPTIONS:
        return _DEBIAN_EXCEPTIONS[name]
    name = name.lower()
    return f"{name}-{version}" if name[-1].isdigit() else f"{name}{version}"


def apt_install(packages: tuple[str, ...] | list[str]) -> str:
    """The Debian/Ubuntu command that installs ``packages``."""
    return "sudo apt install " + " ".join(packages)


def qt_x11_hint() -> str:
    """Everything Qt needs on X11, for when the exact missing library is not known."""
    return f"Qt needs these X11 libraries (Debian/Ubuntu): {apt_install(QT_X11_DEBIAN_PACKAGES)}"


def no_display_hint() -> str:
    """What to do when there is no display to open a window on."""
    return ("no display: neither DISPLAY nor WAYLAND_DISPLAY is set. Run kvgui in a desktop "
            "session (or with ssh -X), or use the command line: kvgui estimate MODEL, "
            "kvgui fit MODEL")


def llama_cpp_install_command(*, cuda: bool = False) -> str:
    """The pip command for llama-cpp-python: the default CPU build, or a CUDA rebuild."""
    if cuda:
        return (f'CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall --no-cache-dir '
                f'"{LLAMA_CPP_REQUIREMENT}"')
    return f'pip install "{LLAMA_CPP_REQUIREMENT}"'


def llama_cpp_hint(error: BaseException | None = None) -> str:
    """One line for a failed ``import llama_cpp`` (or its bindings): what went wrong and the
    command that fixes it. ``error`` is the exception the import raised; None = not installed.
    """
    if error is None or (isinstance(error, ModuleNotFoundError)
                         and (error.name or "").split(".")[0] == "llama_cpp"):
        return ("llama-cpp-python is not installed (kvgui chat, verify and measure run the "
                f"model through it): {llama_cpp_install_command()}")
    detail = " ".join(str(error).split()) or type(error).__name__
    lib = _missing_library(detail)
    if lib and lib.startswith(_GPU_RUNTIMES):
        return (f"llama-cpp-python was built for a GPU, but {lib} is missing (install the GPU "
                f"driver/runtime, or the CPU build: pip install --force-reinstall "
                f'--no-cache-dir "{LLAMA_CPP_REQUIREMENT}")')
    if len(detail) > 160:
        detail = detail[:157] + "..."
    return (f"llama-cpp-python failed to import ({type(error).__name__}: {detail}); reinstall "
            f'it: pip install --force-reinstall --no-cache-dir "{LLAMA_CPP_REQUIREMENT}" '
            f"(for NVIDIA GPUs: {llama_cpp_install_command(cuda=True)})")


def no_gpu_build_hint() -> str:
    """For a llama-cpp-python that works but was built without GPU support."""
    return ("this llama-cpp-python was built without GPU support, so llama.cpp runs on the "
            f"CPU; for an NVIDIA GPU rebuild it: {llama_cpp_install_command(cuda=True)}")


def _missing_library(text: str) -> str | None:
    """The shared library a loader error names as missing ("libcuda.so.1: cannot open ...")."""
    if "cannot open shared object" not in text and "No such file" not in text:
        return None
    names = _SONAME.findall(text.split("cannot open shared object")[0])
    return names[-1] if names else None
