"""Fixtures for the window tests: a real sparse GGUF of a catalog model, and a window that
plans for a fixed custom GPU (no hardware detection, no writes to the user's config)."""

from __future__ import annotations

from pathlib import Path

import pytest

import kvgui.ui  # noqa: F401  (makes PySide6 6.12 safe on Python 3.11 before any Qt call)
from kvgui.core.config.appconfig import AppConfig
from kvgui.core.devices.budget import HW_CUSTOM, HardwareChoice
from kvgui.core.model.catalog import find
from kvgui.core.sizes import GiB
from kvgui.testing.sparse_gguf import write_sparse_gguf

MODEL = ("Llama-3.1-8B-Instruct", "Q4_K_M")


@pytest.fixture(scope="session")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A header-faithful Llama-3.1-8B Q4_K_M file whose data section is a sparse hole."""
    path = tmp_path_factory.mktemp("models") / "Llama-3.1-8B-Instruct-Q4_K_M.gguf"
    return write_sparse_gguf(find(*MODEL), path)


def custom_config(gib: float = 8.0) -> AppConfig:
    return AppConfig(hardware=HardwareChoice(mode=HW_CUSTOM, custom_bytes=int(gib * GiB)))


@pytest.fixture
def make_config():
    """AppConfig planning for a custom GPU of the given GiB."""
    return custom_config


@pytest.fixture
def window(qtbot):
    from kvgui.ui.main_window import MainWindow

    win = MainWindow(custom_config(), detect_hardware=False, persist=False)
    qtbot.addWidget(win)
    win.resize(1400, 900)
    win.show()
    return win


@pytest.fixture
def open_model(qtbot):
    """open_model(window, path): open a file and wait until the window shows it."""

    def run(win, path: str | Path) -> None:
        with qtbot.waitSignal(win.ctl.modelChanged, timeout=20000):
            win.open_path(str(path))
        win.ctl.flush()

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The offscreen platform warns that it cannot pass size hints to a window manager it
    does not have (nor bring a window forward); that is not a fault of the window, so it
    does not fail these tests."""
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.qt_log_ignore("does not support propagateSizeHints",
                                                      "does not support raise"))
