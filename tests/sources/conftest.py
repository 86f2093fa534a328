"""A fake Hub on 127.0.0.1 (kvgui.testing.fake_hub) holding header-faithful sparse GGUFs.

One server for the session (its repos: kvgui.testing.hub_repos); each test gets it with faults
and the request log cleared, and its own header cache and Hub cache folders, so no test sees
another's cached headers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kvgui.testing import hub_repos
from kvgui.testing.fake_hub import FakeHub


@pytest.fixture(scope="session")
def hub_files(sparse_model: Callable[[str], Path],
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return hub_repos.write_files(tmp_path_factory.mktemp("hub_files"), sparse_model)


@pytest.fixture(scope="session")
def _hub(hub_files: dict[str, Path]) -> Iterator[FakeHub]:
    with FakeHub() as hub:
        hub_repos.populate(hub, hub_files)
        yield hub


@pytest.fixture
def hub(_hub: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    """The fake Hub, faults off, log empty; HF_ENDPOINT and the caches point at it/tmp."""
    _hub.delay, _hub.drop_after, _hub.drop_times = 0.0, None, 0
    _hub.short_body = _hub.corrupt = False
    _hub.fail.clear()
    _hub.clear_log()
    monkeypatch.setenv("HF_ENDPOINT", _hub.endpoint)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("KVGUI_CACHE_DIR", str(tmp_path / "kvgui-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield _hub
