"""Whole-suite settings: headless Qt, and no test may touch the user's real config."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


import pytest


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    home = tmp_path_factory.mktemp("config")
    monkeypatch.setenv("KVGUI_CONFIG_DIR", str(home))
    yield
