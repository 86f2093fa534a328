"""Building llama.cpp's tools from the bundled source: options, cache key, lock, source, errors.
(The built tools themselves are exercised by test_rpc.py.)"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kvgui.testing import llama_tools as lt


def test_the_bundled_librarys_build_options_are_read() -> None:
    bundled = lt.bundled_build_options()
    if not bundled:
        pytest.skip("this llama-cpp-python installed no ggml-config.cmake")
    assert bundled["GGML_CPU"] == "ON" and "GGML_NATIVE" in bundled
    opts = lt.cmake_options(bundled)
    assert opts["GGML_NATIVE"] == bundled["GGML_NATIVE"]
    assert opts["GGML_SCHED_MAX_COPIES"] == bundled["GGML_SCHED_MAX_COPIES"]


def test_cpu_choices_are_copied_and_the_rest_fixed() -> None:
    bundled = {"GGML_NATIVE": "OFF", "GGML_AVX2": "ON", "GGML_AMX_INT8": "OFF",
               "GGML_CUDA": "ON", "GGML_RPC": "OFF", "GGML_CPU_ARM_ARCH": "",
               "GGML_BUILD_COMMIT": "0c1e570-dirty", "GGML_SCHED_MAX_COPIES": "4"}
    opts = lt.cmake_options(bundled)
    assert opts["GGML_NATIVE"] == "OFF" and opts["GGML_AVX2"] == "ON"
    assert opts["GGML_AMX_INT8"] == "OFF" and opts["GGML_SCHED_MAX_COPIES"] == "4"
    assert opts["GGML_CUDA"] == "OFF" and opts["GGML_RPC"] == "ON"  # devices = the RPC servers
    assert opts["LLAMA_OPENSSL"] == "OFF" and opts["CMAKE_BUILD_TYPE"] == "Release"
    assert "GGML_CPU_ARM_ARCH" not in opts and "GGML_BUILD_COMMIT" not in opts
    # the tools' --version names the bundled commit (the sdist's build-info finds none)
    assert opts["LLAMA_BUILD_COMMIT"] == "0c1e570" and "LLAMA_BUILD_NUMBER" not in opts
    assert "LLAMA_BUILD_COMMIT" not in lt.cmake_options({"GGML_BUILD_COMMIT": "unknown"})
    assert lt.bundled_commit(bundled) == "0c1e570"
    assert lt.bundled_commit({"GGML_BUILD_COMMIT": "unknown"}) == ""


def test_the_cache_key_follows_version_and_options() -> None:
    a = lt.build_key("0.3.36", {"GGML_NATIVE": "OFF"})
    assert a == lt.build_key("0.3.36", {"GGML_NATIVE": "OFF"})
    assert a != lt.build_key("0.3.37", {"GGML_NATIVE": "OFF"})
    assert a != lt.build_key("0.3.36", {"GGML_NATIVE": "OFF", "GGML_AVX2": "ON"})
    assert a.startswith("llama.cpp-")


def test_the_lock_excludes_another_process(tmp_path: Path) -> None:
    if os.name == "nt":
        pytest.skip("fcntl only")
    lock = tmp_path / "x.lock"
    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a+b')\n"
             "try:\n fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB); print('got')\n"
             "except BlockingIOError: print('busy')")
    with lt.file_lock(lock):
        held = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True,
                              text=True, timeout=30).stdout.strip()
    free = subprocess.run([sys.executable, "-c", probe, str(lock)], capture_output=True,
                          text=True, timeout=30).stdout.strip()
    assert (held, free) == ("busy", "got")


def _fake_sdist(path: Path, version: str) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in ((f"llama_cpp_python-{version}/PKG-INFO", f"Version: {version}\n"),
                           (f"llama_cpp_python-{version}/vendor/llama.cpp/CMakeLists.txt", "x"),
                           (f"llama_cpp_python-{version}/vendor/llama.cpp/common/arg.cpp", "y"),
                           (f"llama_cpp_python-{version}/llama_cpp/llama.py", "z")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_the_source_comes_from_the_cached_sdist(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lt.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(lt.SOURCE_ENV, raising=False)
    sdist = tmp_path / "cache" / "sdist" / "llama_cpp_python-9.9.9.tar.gz"
    sdist.parent.mkdir(parents=True)
    _fake_sdist(sdist, "9.9.9")
    src = lt.llama_cpp_source("9.9.9")
    assert (src / "common" / "arg.cpp").read_text() == "y"
    assert not (src.parent.parent / "llama_cpp").exists()  # only vendor/llama.cpp is unpacked
    assert not sdist.exists()  # the unpacked tree is what is kept
    assert lt.llama_cpp_source("9.9.9") == src  # and reused


def test_an_unpacked_sdist_of_the_same_version_is_used(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "unpacked"
    (root / "vendor" / "llama.cpp").mkdir(parents=True)
    (root / "vendor" / "llama.cpp" / "CMakeLists.txt").write_text("x")
    (root / "PKG-INFO").write_text("Name: llama_cpp_python\nVersion: 9.9.9\n")
    monkeypatch.setenv(lt.SOURCE_ENV, str(root))
    assert lt.llama_cpp_source("9.9.9") == root / "vendor" / "llama.cpp"


def test_offline_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(lt.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(lt.SOURCE_ENV, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no extra indexes or find-links
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(lt.SourceUnavailable) as e:
        lt.llama_cpp_source("9.9.9")
    message = str(e.value)
    assert "offline?" in message and "\n" not in message and "9.9.9" in message


def test_missing_cmake_or_compiler_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lt.shutil, "which", lambda name: None)
    with pytest.raises(lt.ToolsError, match=r"^cmake not found"):
        lt._check_toolchain()
    monkeypatch.setattr(lt.shutil, "which", lambda name: name if name == "cmake" else None)
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(lt.ToolsError, match=r"^no C\+\+ compiler"):
        lt._check_toolchain()


def test_where_says_how_to_build(tmp_path: Path) -> None:
    env = {**os.environ, lt.CACHE_ENV: str(tmp_path)}
    r = subprocess.run([sys.executable, "-m", "kvgui.testing.llama_tools", "where"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "python -m kvgui.testing.llama_tools build" in r.stderr


def test_the_memory_shim_sets_the_reported_ram(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("LD_PRELOAD: Linux only")
    try:
        shim = lt.memory_shim(lt.LlamaTools(tmp_path))
    except lt.ToolsError as e:
        pytest.skip(str(e))
    code = "import os; print(os.sysconf('SC_PHYS_PAGES') * os.sysconf('SC_PAGE_SIZE'))"
    env = {**os.environ, "LD_PRELOAD": str(shim), lt.PHYS_MEM_ENV: str(12 << 30)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=60, check=True).stdout
    assert int(out) == 12 << 30
    env.pop(lt.PHYS_MEM_ENV)
    real = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=60, check=True).stdout
    assert int(real) == os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
