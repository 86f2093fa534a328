"""Apple silicon (sysctl answers as a dict) and system RAM (psutil)."""

from __future__ import annotations

import psutil
import pytest

from kvgui.core.devices.hardware import apple, system

GiB = 1024**3
MiB = 1024**2


def _sysctl(values: dict[str, str]):
    return values.get


def test_not_a_mac():
    assert apple.probe(_sysctl({}), os_name="linux", machine="x86_64") == ([], ["Apple: not macOS"])


def test_intel_mac():
    gpus, reasons = apple.probe(_sysctl({}), os_name="darwin", machine="x86_64")
    assert gpus == [] and "Intel Mac" in reasons[0]


@pytest.mark.parametrize(
    ("ram_gib", "share"),
    [(8, 2 / 3), (16, 2 / 3), (36, 2 / 3), (64, 3 / 4), (128, 3 / 4), (192, 3 / 4)],
)
def test_default_metal_share(ram_gib, share):
    assert apple.default_working_set(ram_gib * GiB) == int(ram_gib * GiB * share)


def test_m2_max_default_limit():
    values = {"hw.memsize": str(64 * GiB), "machdep.cpu.brand_string": "Apple M2 Max"}
    (gpu,), reasons = apple.probe(
        _sysctl(values), os_name="darwin", machine="arm64", available=lambda: 60 * GiB
    )
    assert reasons == []
    assert gpu.name == "Apple M2 Max GPU"
    assert gpu.unified
    assert gpu.total == 48 * GiB
    assert gpu.free == 48 * GiB
    assert "macOS default share" in gpu.notes[0]


def test_wired_limit_sysctl_and_low_ram():
    values = {
        "hw.memsize": str(64 * GiB),
        "machdep.cpu.brand_string": "Apple M1 Max",
        "iogpu.wired_limit_mb": "57344",
    }
    (gpu,), _ = apple.probe(
        _sysctl(values), os_name="darwin", machine="arm64", available=lambda: 20 * GiB
    )
    assert gpu.total == 56 * GiB
    assert gpu.free == 20 * GiB  # capped by the RAM free now
    assert "iogpu.wired_limit_mb=57344" in gpu.notes[0]


def test_zero_wired_limit_means_default():
    limit, source = apple.working_set_limit(
        16 * GiB, _sysctl({"iogpu.wired_limit_mb": "0", "debug.iogpu.wired_limit": "0"})
    )
    assert (limit, source) == (apple.default_working_set(16 * GiB), "macOS default share")


def test_memsize_missing():
    gpus, reasons = apple.probe(_sysctl({}), os_name="darwin", machine="arm64")
    assert gpus == [] and "hw.memsize" in reasons[0]


def test_real_sysctl_unknown_key_is_none():
    assert apple.sysctl("kvgui.no.such.key") is None


def test_system_ram():
    ram = system.read()
    assert ram.total == psutil.virtual_memory().total
    assert 0 < ram.available <= ram.total


def test_system_ram_failure_is_a_reason(monkeypatch):
    def broken():
        raise PermissionError("no /proc/meminfo")

    monkeypatch.setattr(psutil, "virtual_memory", broken)
    ram, reasons = system.probe()
    assert ram is None
    assert reasons == ["System RAM: cannot read it (PermissionError: no /proc/meminfo)"]
