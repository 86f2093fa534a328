"""Remote headers through the real huggingface_hub client against a Hub on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import pytest

from kvgui.core.config.settings import Settings
from kvgui.core.devices.device_budget import DeviceBudget, cpu
from kvgui.core.memory.estimate import estimate
from kvgui.core.memory.fit import COMMON_CACHE_PAIRS, max_context
from kvgui.core.model.catalog import find
from kvgui.core.model.info import load_model
from kvgui.sources.hub import HubConfig, list_repo
from kvgui.sources.hub_errors import HubError
from kvgui.sources.modelref import HubRef
from kvgui.sources.resolve import open_hub, open_reference
from kvgui.testing.fake_hub import FakeHub
from kvgui.testing.hub_repos import GATED, GEMMA, LLAMA, PRIVATE, QWEN_SPLIT, TINY, TOKEN

GPU = [DeviceBudget("RTX 4070", 12 * 1024**3), cpu(64 * 1024**3)]


def _cfg(**kw: object) -> HubConfig:
    return dataclasses.replace(HubConfig.from_env(), **kw)  # type: ignore[arg-type]


def test_listing_groups_quants_split_parts_and_projectors(hub: FakeHub) -> None:
    qwen = list_repo(QWEN_SPLIT, config=_cfg())
    groups = {g.tag: g for g in qwen.quants}
    assert set(groups) == {"Q4_K_M", "Q6_K"}
    q6 = groups["Q6_K"]
    assert [f.path for f in q6.files] == [
        f"Q6_K/Qwen3-8B-Q6_K-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert q6.size == sum(f.size or 0 for f in q6.files) and q6.complete
    gemma = list_repo(GEMMA, config=_cfg())
    assert [(g.tag, g.projector) for g in gemma.quants] == [("Q4_K_M", False), ("F16", True)]
    assert len(qwen.commit) == 40
    assert len(hub.requests("GET", "/api/models/")) == 2  # one request per listing


@pytest.mark.parametrize(("repo", "quant", "local"), [
    (LLAMA, "Q4_K_M", ["llama_q4"]),
    (GEMMA, "Q4_K_M", ["gemma_q4"]),
    (QWEN_SPLIT, "Q6_K", ["qwen_q6_1", "qwen_q6_2", "qwen_q6_3"]),
])
def test_remote_estimate_equals_local(hub: FakeHub, hub_files: dict[str, Path], repo: str,
                                      quant: str, local: list[str]) -> None:
    opened = open_reference(f"{repo}:{quant}")
    on_disk = load_model(hub_files[local[0]])
    assert opened.local_path is None  # only the header was read
    assert opened.info == dataclasses.replace(on_disk, path=None)
    for tk, tv in COMMON_CACHE_PAIRS[:4]:
        s = Settings(n_ctx=32768, type_k=tk, type_v=tv)
        assert estimate(opened.info, s, GPU).to_json()["memory"] == \
            estimate(on_disk, s, GPU).to_json()["memory"]
    s = Settings(type_k="q8_0", type_v="q8_0")
    assert max_context(opened.info, s, GPU) == max_context(on_disk, s, GPU)
    served = sum(e.sent for e in hub.requests("GET", "/cdn/"))
    weights = on_disk.file_bytes
    assert served == opened.stats.bytes < weights / 100  # never the weights


def test_262k_vocab_header_in_at_most_three_range_requests(hub: FakeHub) -> None:
    opened = open_reference(f"{GEMMA}:Q4_K_M")
    assert opened.info.n_vocab == 262144
    ranges = hub.range_requests()
    assert len(ranges) <= 3 and opened.stats.requests == len(ranges)
    assert ranges[0].range == "bytes=0-65535"  # small first: a small header fits in it
    header_len = find("Gemma-3-12B-it Q4_K_M").build().data_offset
    assert header_len <= opened.stats.bytes < header_len * 1.2


def test_small_header_in_one_small_request(hub: FakeHub) -> None:
    opened = open_reference(TINY)
    ranges = hub.range_requests()
    assert len(ranges) == 1 and ranges[0].sent == 65536
    assert opened.info.n_layer == 4


def test_reopening_reads_the_header_cache_and_works_offline(
        hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> None:
    first = open_reference(f"{QWEN_SPLIT}:Q6_K")
    assert first.stats.requests >= 3  # one per part at least
    hub.clear_log()
    again = open_reference(f"{QWEN_SPLIT}:Q6_K")
    assert again.info == first.info
    assert again.stats.requests == 0 and again.stats.cached_parts == 3
    assert hub.range_requests() == []  # only the listing was asked for
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.clear_log()
    offline = open_reference(f"{QWEN_SPLIT}:Q6_K")
    assert offline.info == first.info
    assert hub.requests() == []  # offline: not one request
    assert any("from the cache" in n for n in offline.notes)


def test_offline_without_a_cached_header_says_so(hub: FakeHub,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    open_reference(f"{LLAMA}:Q4_K_M")  # lists the repo, caches the Q4_K_M header only
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.clear_log()
    with pytest.raises(HubError, match=r"Q8_0\.gguf: offline \(HF_HUB_OFFLINE\) and its "
                       "header is not cached") as err:
        open_reference(f"{LLAMA}:Q8_0")
    assert err.value.kind == "offline"
    with pytest.raises(HubError, match=r"offline .* never listed here"):
        open_reference(f"{GEMMA}:Q4_K_M")
    assert hub.requests() == []


def test_unreachable_hub_falls_back_to_the_cached_listing(
        hub: FakeHub, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    first = open_reference(f"{LLAMA}:Q4_K_M")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9
    with caplog.at_level(logging.WARNING):
        again = open_reference(f"{LLAMA}:Q4_K_M")
    assert again.info == first.info
    assert "cannot reach 127.0.0.1" in caplog.text


def test_read_only_header_cache_still_opens(hub: FakeHub, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "ro-cache"
    cache.mkdir()
    cache.chmod(0o500)
    if os.access(cache, os.W_OK):  # root ignores permissions: a path under a file cannot be made
        blocker = tmp_path / "a-file"
        blocker.write_text("")
        cache = blocker / "cache"
    monkeypatch.setenv("KVGUI_CACHE_DIR", str(cache))
    with caplog.at_level(logging.WARNING):
        opened = open_reference(f"{TINY}")
    assert opened.info.n_layer == 4
    assert "cannot write the header cache" in caplog.text
    hub.clear_log()
    open_reference(f"{TINY}")  # nothing was cached: read again
    assert len(hub.range_requests()) == 1


def test_private_repo_needs_a_token(hub: FakeHub) -> None:
    with pytest.raises(HubError, match=r"not found, or private \(401\)") as err:
        open_reference(PRIVATE)
    assert err.value.kind == "auth" and err.value.needs_token
    with pytest.raises(HubError, match=r"refused the token \(401\)"):
        open_hub(HubRef(PRIVATE), config=_cfg(token="hf_" + "x" * 34))
    hub.clear_log()
    opened = open_hub(HubRef(PRIVATE), config=_cfg(token=TOKEN))
    assert opened.info.n_layer == 4
    assert all(e.authorized for e in hub.requests() if e.path.startswith("/api/"))


def test_gated_repo_says_gated(hub: FakeHub) -> None:
    with pytest.raises(HubError, match="is gated: accept its terms") as err:
        open_reference(GATED)
    assert err.value.kind == "gated"
    with pytest.raises(HubError, match="is gated"):  # a token without access: 403 GatedRepo
        open_hub(HubRef(GATED), config=_cfg(token="hf_" + "y" * 34))
    assert open_hub(HubRef(GATED), config=_cfg(token=TOKEN)).info.n_layer == 4


def test_missing_repo_file_and_quant(hub: FakeHub) -> None:
    with pytest.raises(HubError, match=r"no such repository on the Hub \(404\)") as err:
        open_hub(HubRef("kvgui-test/nope"), config=_cfg(token=TOKEN))
    assert err.value.kind == "not_found"
    with pytest.raises(HubError, match=r"no quant IQ2_XXS \(it has: Q4_K_M, Q8_0\)"):
        open_reference(f"{LLAMA}:IQ2_XXS")
    with pytest.raises(HubError, match="no such revision"):
        open_hub(HubRef(LLAMA, "Q4_K_M", revision="v9"))


def test_forbidden_and_rate_limited(hub: FakeHub) -> None:
    hub.fail["/api/"] = (403, {"X-Error-Message": "no"})
    with pytest.raises(HubError, match=r"access forbidden \(403\)") as err:
        open_reference(LLAMA)
    assert err.value.kind == "forbidden"
    hub.fail["/api/"] = (429, {"Retry-After": "17"})
    with pytest.raises(HubError, match=r"rate-limiting requests \(429\): retry in 17 s") as err:
        open_reference(LLAMA)
    assert err.value.kind == "rate_limit"


def test_slow_server_times_out(hub: FakeHub) -> None:
    hub.delay = 0.6
    with pytest.raises(HubError, match=r"no answer from 127\.0\.0\.1 in time \(timeout\)") as e:
        open_hub(HubRef(TINY), config=_cfg(timeout=0.2))
    assert e.value.kind == "timeout"


def test_a_short_response_is_retried_then_reported(hub: FakeHub) -> None:
    list_repo(TINY, config=_cfg())
    hub.drop_after, hub.drop_times = 1000, 1  # the first body dies after 1000 bytes
    assert open_reference(TINY).info.n_layer == 4
    dropped, retry = hub.range_requests()  # the tiny header is one request, and its retry
    assert dropped.sent == 1000 and retry.range == dropped.range and retry.sent == 65536
    hub.clear_log()
    hub.short_body = True  # every body is half its Content-Length
    with pytest.raises(HubError, match=r"closed the connection early|the response ended"):
        open_hub(HubRef(LLAMA, "Q8_0"), config=_cfg())
