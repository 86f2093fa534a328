"""The PyInstaller bundle (packaging/build.sh -> dist/kvgui/): it builds, and the program in it
runs the CLI, the llama.cpp child processes and the window, from its own files only.

Slow (a build is ~30 s to minutes, ~240 MB): KVGUI_TEST_PACKAGING=1 to run. The desktop
integration files are checked always (fast).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from kvgui import __version__

ROOT = Path(__file__).resolve().parents[1]
LINUX_DIR = ROOT / "packaging" / "linux"
APP_ID = "io.github.kvgui"

needs_build = pytest.mark.skipif(os.environ.get("KVGUI_TEST_PACKAGING") != "1",
                                 reason="builds the PyInstaller bundle: KVGUI_TEST_PACKAGING=1")


# --- desktop integration (fast) -----------------------------------------------------------


def _desktop_entry() -> dict[str, str]:
    entry: dict[str, str] = {}
    group = None
    for line in (LINUX_DIR / f"{APP_ID}.desktop").read_text(encoding="utf-8").splitlines():
        if line.startswith("["):
            group = line.strip("[]")
        elif "=" in line and group == "Desktop Entry":
            key, _, value = line.partition("=")
            entry[key] = value
    return entry


def test_desktop_file_launches_kvgui_with_its_icon() -> None:
    entry = _desktop_entry()
    assert entry["Type"] == "Application"
    assert entry["Exec"].split()[0] == "kvgui"  # the console script pyproject installs
    icon = entry["Icon"]
    for size in (16, 32, 48, 64, 128, 256, 512):
        png = ROOT / "resources" / "icons" / "hicolor" / f"{size}x{size}" / "apps" / f"{icon}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    assert (ROOT / "resources" / f"{icon}.svg").exists()
    if shutil.which("desktop-file-validate"):
        out = subprocess.run(["desktop-file-validate", str(LINUX_DIR / f"{APP_ID}.desktop")],
                             capture_output=True, text=True)
        assert out.returncode == 0 and "error" not in out.stdout.lower(), out.stdout


def test_metainfo_names_the_desktop_file_and_the_binary() -> None:
    path = LINUX_DIR / f"{APP_ID}.metainfo.xml"
    root = ET.parse(path).getroot()
    assert root.findtext("id") == APP_ID
    assert root.findtext("launchable") == f"{APP_ID}.desktop"
    assert root.findtext("provides/binary") == "kvgui"
    releases = [r.get("version") for r in root.iter("release")]
    assert __version__ in releases  # a release entry for the version being shipped
    if shutil.which("appstreamcli"):
        out = subprocess.run(["appstreamcli", "validate", "--no-net", str(path)],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stdout


def test_icons_are_renders_of_the_svg(qapp, tmp_path: Path) -> None:
    """The committed PNGs are what render_icons.py makes of resources/kvgui.svg now."""
    sys.path.insert(0, str(ROOT / "packaging"))
    try:
        import render_icons
    finally:
        sys.path.pop(0)
    from PySide6.QtGui import QImage

    render_icons.render(ROOT / "resources" / "kvgui.svg", tmp_path, (48,))
    fresh = QImage(str(tmp_path / "48x48" / "apps" / "kvgui.png"))
    committed = QImage(str(ROOT / "resources" / "icons" / "hicolor" / "48x48" / "apps" /
                           "kvgui.png"))
    assert not fresh.isNull() and fresh.size() == committed.size()
    diff = sum(abs(fresh.pixelColor(x, y).alpha() - committed.pixelColor(x, y).alpha())
               for x in range(48) for y in range(48))
    assert diff < 48 * 48  # fonts may differ by a pixel's antialiasing, not the shape


# --- the bundle (slow) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle() -> Path:
    """dist/kvgui, built once per test run. Under xdist every worker gets its own module-scoped
    fixture: unguarded, two workers ran PyInstaller into the same dist/ at once and one of them
    failed on a file the other had just removed. So the build holds a lock, and a worker that
    finds the bundle already built by this run (xdist's run id, shared by its workers) reuses it."""
    import fcntl

    exe = ROOT / "dist" / "kvgui" / ("kvgui.exe" if os.name == "nt" else "kvgui")
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID", f"pid-{os.getpid()}")
    (ROOT / "build").mkdir(exist_ok=True)
    stamp = ROOT / "build" / "bundle-run-id"
    with open(ROOT / "build" / "bundle.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (exe.is_file() and stamp.is_file() and stamp.read_text() == run_id):
            env = dict(os.environ, PYTHON=sys.executable)
            proc = subprocess.run(["bash", str(ROOT / "packaging" / "build.sh")], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=1800)
            assert proc.returncode == 0, proc.stderr[-4000:]
            stamp.write_text(run_id)
    assert exe.is_file()
    return exe


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(KVGUI_CONFIG_DIR=str(tmp_path / "config"),
               KVGUI_LOG_DIR=str(tmp_path / "config" / "log"), QT_QPA_PLATFORM="offscreen")
    env.update(extra)
    return env


def _run(exe: Path, *args: str, env: dict[str, str], timeout: float = 120):
    # cwd outside the checkout, so nothing can be imported from the source tree by accident
    return subprocess.run([str(exe), *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=Path(env["KVGUI_CONFIG_DIR"]).parent)


@pytest.mark.slow
@needs_build
def test_bundle_carries_what_kvgui_loads_at_run_time(bundle: Path) -> None:
    internal = bundle.parent / "_internal"
    assert (internal / "kvgui" / "resources" / "models.json").is_file()
    libs = {p.name for p in (internal / "llama_cpp" / "lib").iterdir()}
    assert {"libllama.so", "libggml.so", "libggml-base.so"} <= libs or any(
        n.startswith(("llama.", "libllama.")) for n in libs)
    platforms = {p.name for p in (internal / "PySide6" / "Qt" / "plugins" / "platforms")
                 .iterdir()} if sys.platform.startswith("linux") else set()
    if platforms:
        assert {"libqxcb.so", "libqoffscreen.so"} <= platforms
        assert not {"libqeglfs.so", "libqlinuxfb.so", "libqvnc.so"} & platforms


@pytest.mark.slow
@needs_build
def test_bundle_version(bundle: Path, tmp_path: Path) -> None:
    out = _run(bundle, "--version", env=_env(tmp_path))
    assert out.returncode == 0 and out.stdout.strip() == f"kvgui {__version__}"


@pytest.mark.slow
@needs_build
def test_bundle_estimate_matches_the_source(bundle: Path, tmp_path: Path, sparse_model) -> None:
    model = str(sparse_model("Llama-3.2-3B-Instruct Q4_K_M"))
    # a fixed budget: by default it is the memory free right now, different per run
    args = ("estimate", model, "-c", "16384", "-ctk", "q8_0", "-ctv", "q8_0",
            "--gpu-model", "RTX 4060", "--ram", "32GiB", "--json")
    frozen = _run(bundle, *args, env=_env(tmp_path))
    assert frozen.returncode == 0, frozen.stderr
    source = subprocess.run([sys.executable, "-m", "kvgui", *args], capture_output=True,
                            text=True, timeout=120, cwd=ROOT)
    assert json.loads(frozen.stdout) == json.loads(source.stdout)


@pytest.mark.slow
@needs_build
def test_bundle_runs_llama_cpp_in_its_child(bundle: Path, tmp_path: Path, sparse_model) -> None:
    """verify starts ``<bundle> -m kvgui.runtime.dryrun``: the entry point must act as Python
    there, and the bundled libllama must load."""
    model = str(sparse_model("Llama-3.2-3B-Instruct Q4_K_M"))
    out = _run(bundle, "verify", model, "-c", "4096", "--json", env=_env(tmp_path))
    data = json.loads(out.stdout)
    assert out.returncode == 0 and data["error"] is None, out.stdout + out.stderr
    assert data["llama_cpp"]["kv"] == data["estimate"]["kv"]


@pytest.mark.slow
@needs_build
def test_bundle_window_starts_offscreen_on_a_model(bundle: Path, tmp_path: Path,
                                                   sparse_model) -> None:
    model = str(sparse_model("Llama-3.2-3B-Instruct Q4_K_M"))
    env = _env(tmp_path)
    proc = subprocess.Popen([str(bundle), model], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        alive = proc.poll() is None
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert alive, err
    assert "Traceback" not in err and "Error" not in err, err
    log = tmp_path / "config" / "log" / "kvgui.log"  # KVGUI_LOG_DIR
    assert log.exists() and "CRITICAL" not in log.read_text(encoding="utf-8")


@pytest.mark.slow
@needs_build
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="X11 display probe")
def test_bundle_display_probe_runs_in_the_bundle(bundle: Path, tmp_path: Path) -> None:
    """The display check runs ``<bundle> -c <probe>``; with no X server it must end in one
    line, never in Qt's abort."""
    display = next(f":{n}" for n in range(150, 400) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    env = _env(tmp_path, QT_QPA_PLATFORM="xcb", DISPLAY=display)
    out = _run(bundle, env=env)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("kvgui: "), out.stderr
