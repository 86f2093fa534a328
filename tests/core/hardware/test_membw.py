"""The host memory bandwidth probe: a plausible figure in well under a second, cached."""

from __future__ import annotations

import json

from kvgui.core.devices.hardware import membw

GB = 1e9


def test_probe_measures_and_caches(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("KVGUI_CACHE_DIR", str(tmp_path))
    first = membw.host_bandwidth()
    assert first is not None and not first.cached
    # any machine from a Raspberry Pi to a server: 1 GB/s to 2 TB/s
    assert 1 * GB < first.bytes_per_s < 2000 * GB
    assert first.buffer_bytes >= membw.MIN_BUFFER  # beyond the last-level cache
    assert first.seconds < 5
    again = membw.host_bandwidth()
    assert again is not None and again.cached and again.bytes_per_s == first.bytes_per_s
    # another machine's figure (a different key) is measured again, not trusted
    data = json.loads(membw.cache_path().read_text())
    data["key"]["cpu"] = "another CPU"
    membw.cache_path().write_text(json.dumps(data))
    assert not membw.host_bandwidth().cached
