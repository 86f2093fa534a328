"""A newcomer's first run: every failure a fresh machine produces (no display, Qt's X11
libraries missing, llama-cpp-python missing or broken) ends in one line saying what to do,
never a traceback; and, slow and opt-in (KVGUI_TEST_FIRST_RUN=1), a fresh clone installs into a
fresh virtual environment and runs.

The failures are produced for real, through the ``kvgui`` entry point in a child process: an
unset DISPLAY, an X display nobody serves, a shared library hidden from the dynamic loader
(an LD_AUDIT module compiled here), a ``llama_cpp`` that cannot be imported.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from kvgui.core import install_hints

ROOT = Path(__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux")
NO_DISPLAY_VARS = ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NO_DISPLAY_VARS}
    env.update(extra)
    return env


def _kvgui(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvgui", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)


def _one_line(proc: subprocess.CompletedProcess, status: int = 1) -> str:
    """The single line the user sees on stderr (asserting that is all they see)."""
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert proc.returncode == status, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("kvgui"), lines[0]
    return lines[0]


def _free_display() -> str:
    for n in range(150, 400):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return f":{n}"
    pytest.skip("no free X display number")


def _qt_dir() -> Path:
    import PySide6

    return Path(PySide6.__file__).parent / "Qt"


def _xcb_chain() -> list[Path]:
    """The files Qt loads to open an X11 window: the xcb plugin and what it links from the wheel."""
    qt = _qt_dir()
    files = [qt / "plugins" / "platforms" / "libqxcb.so",
             *sorted((qt / "plugins" / "xcbglintegrations").glob("*.so"))]
    files += [qt / "lib" / f"libQt6{m}.so.6"
              for m in ("XcbQpa", "Gui", "Core", "Widgets", "DBus", "OpenGL")]
    return [f for f in files if f.exists()]


def _ldd(files: list[Path]) -> tuple[set[str], set[str]]:
    """(system libraries the files link, resolved paths; sonames the loader cannot find)."""
    found: set[str] = set()
    missing: set[str] = set()
    qt_root = str(_qt_dir().parent)
    for f in files:
        out = subprocess.run(["ldd", str(f)], capture_output=True, text=True).stdout
        for line in out.splitlines():
            name, _, rest = line.strip().partition(" => ")
            if "not found" in rest:
                missing.add(name)
            elif rest.startswith("/") and not rest.startswith(qt_root):
                found.add(rest.split(" (")[0])
    return found, missing


# --- no display --------------------------------------------------------------------------


@pytest.mark.skipif(not LINUX, reason="DISPLAY/WAYLAND_DISPLAY are how Linux finds a display")
def test_no_display_is_one_line_saying_what_to_do() -> None:
    line = _one_line(_kvgui(env=_env()))
    assert "DISPLAY" in line
    assert "kvgui estimate" in line  # the way forward without a display: the CLI


@pytest.mark.skipif(not LINUX, reason="the xcb platform plugin is Linux's")
def test_unreachable_x_display_is_one_line_naming_the_cause() -> None:
    """An X display nobody serves. Qt 6.5+ then also prints its generic "xcb-cursor0 is
    needed" hint even when the library is installed: kvgui must not repeat that as the cause."""
    if shutil.which("ldd") is None:
        pytest.skip("ldd is needed to know which X11 libraries this system lacks")
    display = _free_display()
    line = _one_line(_kvgui(env=_env(QT_QPA_PLATFORM="xcb", DISPLAY=display)))
    _, missing = _ldd(_xcb_chain())
    if missing:  # this machine really lacks some: then naming them is the right answer
        for soname in missing:
            assert install_hints.debian_package(soname) in line, line
    else:
        assert "display" in line.lower() and display in line, line
        assert "apt install" not in line and "missing" not in line, line


_AUDIT_C = r"""
#define _GNU_SOURCE
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static char buf[4096];
unsigned int la_version(unsigned int version) { (void)version; return LAV_CURRENT; }
/* Send the lookup of $KVGUI_TEST_HIDE_LIB to a path that does not exist: the loader then fails
   as if the library were not installed ("...: cannot open shared object file"). */
char *la_objsearch(const char *name, uintptr_t *cookie, unsigned int flag) {
    (void)cookie; (void)flag;
    const char *hide = getenv("KVGUI_TEST_HIDE_LIB");
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    if (hide && *hide && strcmp(base, hide) == 0) {
        snprintf(buf, sizeof buf, "/nonexistent-kvgui-test/%s", base);
        return buf;
    }
    return (char *)name;
}
"""


@pytest.fixture(scope="module")
def hide_library(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], dict[str, str]]:
    """env for a child in which the dynamic loader cannot find one library (glibc LD_AUDIT)."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if not LINUX or cc is None:
        pytest.skip("needs Linux and a C compiler to hide a library from the loader")
    folder = tmp_path_factory.mktemp("audit")
    (folder / "hide.c").write_text(_AUDIT_C)
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(folder / "hide.so"),
                    str(folder / "hide.c")], check=True, capture_output=True)

    def env_without(soname: str) -> dict[str, str]:
        return _env(LD_AUDIT=str(folder / "hide.so"), KVGUI_TEST_HIDE_LIB=soname,
                    QT_QPA_PLATFORM="xcb", DISPLAY=_free_display())

    return env_without


@pytest.mark.parametrize("soname", ["libxcb-cursor.so.0", "libxkbcommon-x11.so.0",
                                    "libxcb-icccm.so.4"])
def test_missing_x11_library_names_its_debian_package(soname: str, hide_library) -> None:
    if not any(soname in lib for lib in _ldd(_xcb_chain())[0]):
        pytest.skip(f"Qt's xcb plugin here does not link {soname}")
    line = _one_line(_kvgui(env=hide_library(soname)))
    package = install_hints.debian_package(soname)
    assert "apt install" in line and package in line, line
    others = {"libxcb-cursor.so.0", "libxkbcommon-x11.so.0", "libxcb-icccm.so.4"} - {soname}
    for other in others:  # present on this machine: not to be reported missing
        assert other not in line, line


def test_debian_package_names_follow_debian_policy() -> None:
    cases = {"libxcb-cursor.so.0": "libxcb-cursor0", "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
             "libEGL.so.1": "libegl1", "libdbus-1.so.3": "libdbus-1-3",
             "libglib-2.0.so.0": "libglib2.0-0", "libxcb-render-util.so.0": "libxcb-render-util0"}
    assert {s: install_hints.debian_package(s) for s in cases} == cases


@pytest.mark.skipif(not LINUX, reason="Debian packages")
def test_qt_x11_package_list_covers_what_the_xcb_plugin_links() -> None:
    """Every system library Qt's X11 path links belongs to a package the hint installs (or to
    one they depend on, or to the base system), checked against ldd, dpkg and apt here."""
    if not all(shutil.which(t) for t in ("ldd", "dpkg", "dpkg-query", "apt-cache")):
        pytest.skip("needs a Debian-like system (ldd, dpkg, apt-cache)")
    libs, missing = _ldd(_xcb_chain())
    owners: set[str] = {install_hints.debian_package(s) for s in missing}
    for path in sorted(libs):
        candidates = [path, str(Path(path).resolve())]
        for p in candidates:
            out = subprocess.run(["dpkg", "-S", p], capture_output=True, text=True)
            if out.returncode == 0:
                owners.add(out.stdout.split(":", 1)[0].split(",")[0].strip())
                break
    closure = subprocess.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
         "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances",
         *install_hints.QT_X11_DEBIAN_PACKAGES], capture_output=True, text=True).stdout
    covered = {line.split(":")[0].strip() for line in closure.splitlines()
               if line and not line.startswith(" ")}
    if not covered:
        pytest.skip("apt has no package lists here")
    uncovered = sorted(owners - covered)
    prio = subprocess.run(["dpkg-query", "-W", "-f", "${Package} ${Priority}\n", *uncovered],
                          capture_output=True, text=True).stdout if uncovered else ""
    base = {line.split()[0] for line in prio.splitlines() if line.endswith(" required")}
    assert sorted(set(uncovered) - base) == []


# --- llama-cpp-python missing or broken ----------------------------------------------------

_BROKEN = {
    # the CUDA wheel on a machine without the NVIDIA driver (what llama_cpp really raises)
    "no_cuda_driver": "raise RuntimeError(\"Failed to load shared library '/x/llama_cpp/lib/"
                      "libllama.so': libcuda.so.1: cannot open shared object file: No such "
                      "file or directory\")\n",
    # a dependency of llama_cpp gone missing
    "broken_dependency": "raise ModuleNotFoundError(\"No module named 'typing_extensions'\", "
                         "name='typing_extensions')\n",
}
_EXPECT = {
    "missing": ("not installed", 'pip install "llama-cpp-python'),
    "no_cuda_driver": ("libcuda.so.1", "pip install"),
    "broken_dependency": ("typing_extensions", "pip install --force-reinstall"),
}


def _llama_env(case: str, folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    if case == "missing":  # exactly what Python does when the package is not there
        (folder / "sitecustomize.py").write_text("import sys\nsys.modules['llama_cpp'] = None\n")
    else:
        pkg = folder / "llama_cpp"
        pkg.mkdir(exist_ok=True)
        (pkg / "__init__.py").write_text(_BROKEN[case])
        (pkg / "llama_cpp.py").write_text(_BROKEN[case])  # the bindings, imported alone
    env = _env(QT_QPA_PLATFORM="offscreen")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH")) if p)
    return env


@pytest.mark.parametrize("case", ["missing", "no_cuda_driver", "broken_dependency"])
@pytest.mark.parametrize("command", ["verify", "chat"])
def test_llama_cpp_problems_say_what_to_install(command: str, case: str, sparse_model,
                                                tmp_path: Path) -> None:
    model = sparse_model("Llama-3.2-3B-Instruct Q4_K_M")
    args = [command, str(model), "-c", "512"] + (["-p", "hi"] if command == "chat" else [])
    proc = _kvgui(*args, env=_llama_env(case, tmp_path / "site"))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out  # exit status 4: llama.cpp failed
    assert "Traceback" not in out and 'File "' not in out, out
    lines = [line for line in out.splitlines() if "llama-cpp-python" in line]
    assert len(lines) == 1, out  # said once, on one line
    for needle in _EXPECT[case]:
        assert needle in lines[0], lines[0]


def test_llama_cpp_hints() -> None:
    missing = install_hints.llama_cpp_hint(ModuleNotFoundError("x", name="llama_cpp"))
    assert missing == install_hints.llama_cpp_hint(None)
    assert install_hints.LLAMA_CPP_REQUIREMENT in missing and "not installed" in missing
    cuda = install_hints.llama_cpp_hint(RuntimeError(
        "Failed to load shared library '/a/lib/libllama.so': libcudart.so.12: cannot open "
        "shared object file: No such file or directory"))
    assert "libcudart.so.12" in cuda and "driver" in cuda
    dep = install_hints.llama_cpp_hint(ModuleNotFoundError("No module named 'numpy'",
                                                           name="numpy"))
    assert "numpy" in dep and "--force-reinstall" in dep and "DGGML_CUDA=on" in dep
    for hint in (missing, cuda, dep, install_hints.qt_x11_hint(),
                 install_hints.no_display_hint(), install_hints.no_gpu_build_hint()):
        assert "\n" not in hint


# --- slow: a fresh clone into a fresh virtual environment -----------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("KVGUI_TEST_FIRST_RUN") != "1",
                    reason="pip-installs kvgui into a new venv (~1 min): KVGUI_TEST_FIRST_RUN=1")
def test_fresh_clone_installs_and_runs(tmp_path: Path, sparse_model) -> None:
    """What the README's install command does on a new machine: clone, venv, pip install
    (not editable: the wheel must carry the resources), then the CLI and the window."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("needs the git checkout")
    clone, venv = tmp_path / "kvgui", tmp_path / "venv"
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", ROOT.as_uri(), str(clone)],
                   check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    pip = subprocess.run([str(bindir / "python"), "-m", "pip", "install", "--quiet", str(clone)],
                         capture_output=True, text=True, timeout=1200)
    assert pip.returncode == 0, pip.stderr[-3000:]
    env = _env(QT_QPA_PLATFORM="offscreen", KVGUI_CONFIG_DIR=str(tmp_path / "config"),
               KVGUI_LOG_DIR=str(tmp_path / "config" / "log"))
    env.pop("PYTHONPATH", None)
    kvgui = str(bindir / "kvgui")

    version = subprocess.run([kvgui, "--version"], capture_output=True, text=True, env=env,
                             timeout=60, cwd=tmp_path)
    clone_version = subprocess.run(
        [str(bindir / "python"), "-c", "import kvgui; print(kvgui.__version__)"],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path).stdout.strip()
    assert version.stdout.strip() == f"kvgui {clone_version}"

    model = str(sparse_model("Llama-3.2-3B-Instruct Q4_K_M"))
    est = subprocess.run([kvgui, "estimate", model, "-c", "8192", "--json"],
                         capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    assert est.returncode == 0, est.stderr
    assert json.loads(est.stdout)  # one JSON object
    verify = subprocess.run([kvgui, "verify", model, "-c", "8192", "--json"],
                            capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert verify.returncode == 0 and json.loads(verify.stdout)["error"] is None, verify.stdout

    files = subprocess.run(
        [str(bindir / "python"), "-c",
         "from importlib import resources; r = resources.files('kvgui.resources'); "
         "print(*sorted(p.name for p in r.iterdir()))"],
        capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path).stdout.split()
    for name in ("models.json", "gpus.json", "sample_text.txt", "kvgui.svg"):
        assert name in files, files

    gui = subprocess.Popen([kvgui, model], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and gui.poll() is None:
            time.sleep(0.1)
        assert gui.poll() is None, gui.communicate()[1]  # still up: the window runs
    finally:
        gui.terminate()
        _, err = gui.communicate(timeout=20)
    assert "Traceback" not in err
    log = tmp_path / "config" / "log" / "kvgui.log"  # KVGUI_LOG_DIR
    assert log.exists() and "CRITICAL" not in log.read_text(encoding="utf-8")
