"""Downloading a quant into the Hub cache, from the Hub on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from pathlib import Path

import pytest

from kvgui.sources import download as dl
from kvgui.sources.hub import HubConfig, list_repo
from kvgui.sources.hub_errors import HubError
from kvgui.sources.modelref import HubRef
from kvgui.sources.resolve import open_reference
from kvgui.testing.fake_hub import FakeHub
from kvgui.testing.hub_repos import PRIVATE, TINY, TOKEN


def _tiny(cfg: HubConfig | None = None):  # type: ignore[no-untyped-def]
    listing = list_repo(TINY, config=cfg)
    return listing, listing.group(HubRef(TINY))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_lands_where_huggingface_hub_and_llama_cpp_look(
        hub: FakeHub, hub_files: dict[str, Path], tmp_path: Path) -> None:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    seen: list[dl.Progress] = []
    listing, group = _tiny()
    (path,) = dl.download(listing, group, on_progress=seen.append)
    cache = tmp_path / "hf-cache"
    assert path == cache / "models--kvgui-test--tiny-GGUF" / "snapshots" / listing.commit / \
        "tiny-F16.gguf"
    sha = _sha(hub_files["tiny"])
    assert path.is_symlink() and os.readlink(path) == f"../../blobs/{sha}"
    assert path.read_bytes() == hub_files["tiny"].read_bytes()
    # llama.cpp's -hf reads refs/main, then snapshots/<commit>/<file> (common/hf-cache.cpp)
    assert (cache / "models--kvgui-test--tiny-GGUF" / "refs" / "main").read_text() == \
        listing.commit
    # huggingface_hub finds it without the network
    assert try_to_load_from_cache(TINY, "tiny-F16.gguf", cache_dir=cache) == str(path)
    assert hf_hub_download(TINY, "tiny-F16.gguf", cache_dir=cache,
                           local_files_only=True) == str(path)
    assert seen[-1].done == seen[-1].total == hub_files["tiny"].stat().st_size
    assert seen[-1].parts == 1
    # opened again, the model is the downloaded file: ready to launch
    opened = open_reference(f"{TINY}")
    assert opened.local_path == str(path) and opened.info.path == str(path)
    assert opened.hf_args == ["-hf", TINY + ":F16"]


def test_resumes_after_a_dropped_connection(hub: FakeHub, hub_files: dict[str, Path]) -> None:
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE  # http_get writes in these

    listing, group = _tiny()
    assert hub_files["tiny"].stat().st_size > DOWNLOAD_CHUNK_SIZE + (2 << 20)
    hub.drop_after, hub.drop_times = DOWNLOAD_CHUNK_SIZE + (1 << 20), 1  # dies once, mid-body
    (path,) = dl.download(listing, group)
    assert _sha(path) == _sha(hub_files["tiny"])
    gets = hub.requests("GET", "/cdn/")
    assert [g.range for g in gets] == [None, f"bytes={DOWNLOAD_CHUNK_SIZE}-"]
    assert gets[0].sent == DOWNLOAD_CHUNK_SIZE + (1 << 20)


def test_cancel_keeps_the_partial_file_and_resume_continues(
        hub: FakeHub, hub_files: dict[str, Path]) -> None:
    listing, group = _tiny()
    cancel = threading.Event()

    def progress(p: dl.Progress) -> None:
        if p.done >= 1 << 20:
            cancel.set()

    with pytest.raises(dl.Cancelled):
        dl.download(listing, group, on_progress=progress, cancel=cancel)
    partial = next((HubConfig.from_env().hub_cache / "models--kvgui-test--tiny-GGUF" /
                    "blobs").glob("*.incomplete"))
    kept = partial.stat().st_size
    assert 1 << 20 <= kept < hub_files["tiny"].stat().st_size
    hub.clear_log()
    seen: list[dl.Progress] = []
    (path,) = dl.download(listing, group, on_progress=seen.append)
    assert hub.requests("GET", "/cdn/")[0].range == f"bytes={kept}-"
    assert _sha(path) == _sha(hub_files["tiny"]) and not partial.exists()
    assert seen[0].done > kept  # progress counts what was already there


def test_wrong_checksum_deletes_the_download(hub: FakeHub) -> None:
    listing, group = _tiny()
    hub.corrupt = True
    with pytest.raises(HubError, match=r"sha256 is .*, the Hub publishes .*deleted") as err:
        dl.download(listing, group)
    assert err.value.kind == "checksum"
    repo_dir = HubConfig.from_env().hub_cache / "models--kvgui-test--tiny-GGUF"
    assert list((repo_dir / "blobs").iterdir()) == []
    assert not (repo_dir / "snapshots").exists()


def test_not_enough_disk_stops_before_the_first_byte(
        hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    listing, group = _tiny()
    monkeypatch.setattr(dl, "free_disk", lambda path: 3 << 20)  # the disk is the hardware
    with pytest.raises(HubError, match=r"the download needs .* but .* has 3.00 MiB free") as err:
        dl.download(listing, group)
    assert err.value.kind == "disk"
    assert hub.requests("GET", "/cdn/") == []


def test_read_only_hub_cache(hub: FakeHub, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("HF_HUB_CACHE", str(blocker / "hub"))  # cannot be created, even by root
    listing, group = _tiny()
    with pytest.raises(HubError, match=r"cannot write to the Hub cache at .*HF_HUB_CACHE"):
        dl.download(listing, group)
    assert hub.requests("GET", "/cdn/") == []


def test_offline_and_private(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    listing, group = _tiny()
    cfg = dataclasses.replace(HubConfig.from_env(), offline=True)
    with pytest.raises(HubError, match="offline"):
        dl.download(listing, group, config=cfg)
    cfg = HubConfig.from_env(token=TOKEN)
    private = list_repo(PRIVATE, config=cfg)
    (path,) = dl.download(private, private.group(HubRef(PRIVATE)), config=cfg)
    assert path.stat().st_size > 0
    assert all(e.authorized for e in hub.requests(under=f"/{PRIVATE}/"))
