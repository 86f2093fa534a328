"""AMD probe over sysfs trees built in tmp dirs."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvgui.core.devices.hardware import amd, drm

GiB = 1024**3
MiB = 1024**2

AMDGPU_IDS = """\
# List of AMDGPU IDs
#
# Syntax:
# device_id,\trevision_id,\tproduct_name        <-- single tab after comma

1.0.0
744C,\tC8,\tAMD Radeon RX 7900 XTX
744C,\tCC,\tAMD Radeon RX 7900 XT
15BF,\tC1,\tAMD Radeon 780M
"""

PCI_IDS = """\
# comment
1002  Advanced Micro Devices, Inc. [AMD/ATI]
\t7480  Navi 33 [Radeon RX 7600/7600 XT/7600M XT/7600S/7700S / PRO W7600]
\t\t1002 0e0d  Radeon RX 7600
\t73bf  Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]
10de  NVIDIA Corporation
\t2882  AD107 [GeForce RTX 4060]
"""


@pytest.fixture
def ids(tmp_path: Path) -> tuple[list[Path], list[Path]]:
    a = tmp_path / "amdgpu.ids"
    a.write_text(AMDGPU_IDS)
    p = tmp_path / "pci.ids"
    p.write_text(PCI_IDS)
    return [tmp_path / "missing.ids", a], [p]


def _probe(sysfs, ids):
    return amd.probe(sysfs.root, *ids)


def test_discrete_card(sysfs, ids):
    dev = sysfs.card(
        1,
        mem_info_vram_total=24 * GiB,
        mem_info_vram_used=1 * GiB,
        mem_info_vram_vendor="samsung",
        mem_info_gtt_total=16 * GiB,
        mem_info_gtt_used=10 * MiB,
    )
    (sysfs.root / "card1-DP-1").mkdir()  # a connector, not a card
    (gpu,), reasons = _probe(sysfs, ids)
    assert reasons == []
    assert (gpu.vendor, gpu.index, gpu.name) == ("amd", 1, "AMD Radeon RX 7900 XTX")
    assert (gpu.total, gpu.used, gpu.free, gpu.unified) == (24 * GiB, 1 * GiB, 23 * GiB, False)
    assert gpu.key == str(dev)


def test_name_sources_in_order(sysfs, ids):
    sysfs.card(0, revision="0xcc", mem_info_vram_total=20 * GiB, mem_info_vram_vendor="x")
    sysfs.card(1, revision="0xff", mem_info_vram_total=24 * GiB, mem_info_vram_vendor="x")
    sysfs.card(2, device="0x7480", mem_info_vram_total=8 * GiB, mem_info_vram_vendor="x")
    sysfs.card(3, device="0x1234", mem_info_vram_total=8 * GiB, mem_info_vram_vendor="x")
    sysfs.card(4, mem_info_vram_total=192 * GiB, product_name="AMD Instinct MI300X")
    gpus, _ = _probe(sysfs, ids)
    assert [g.name for g in gpus] == [
        "AMD Radeon RX 7900 XT",  # revision picks the model
        "AMD Radeon RX 7900 XTX",  # unknown revision: the chip's first name
        "Radeon RX 7600/7600 XT/7600M XT/7600S/7700S / PRO W7600",  # pci.ids bracket
        "AMD GPU (PCI 1002:1234)",
        "AMD Instinct MI300X",  # the driver's own product_name wins
    ]


def test_apu_counts_gtt(sysfs, ids):
    sysfs.card(
        0,
        device="0x15bf",
        revision="0xc1",
        mem_info_vram_total=512 * MiB,
        mem_info_vram_used=100 * MiB,
        mem_info_gtt_total=15 * GiB,
        mem_info_gtt_used=1 * GiB,
    )
    (gpu,), _ = _probe(sysfs, ids)
    assert gpu.name == "AMD Radeon 780M"
    assert gpu.unified
    assert gpu.total == 512 * MiB + 15 * GiB
    assert gpu.free == gpu.total - 100 * MiB - 1 * GiB
    assert "integrated GPU" in gpu.notes[0]


def test_small_discrete_card_is_not_an_apu(sysfs, ids):
    sysfs.card(
        0,
        device="0x743f",
        mem_info_vram_total=4 * GiB,
        mem_info_vram_used=0,
        mem_info_vram_vendor="hynix",
        mem_info_gtt_total=16 * GiB,
        mem_info_gtt_used=0,
    )
    (gpu,), _ = _probe(sysfs, ids)
    assert not gpu.unified and gpu.total == 4 * GiB


def test_unreadable_card_is_a_reason(sysfs, ids):
    sysfs.card(0)  # amdgpu not bound: no mem_info files
    sysfs.card(1, vendor="0x10de", device="0x2882")  # not AMD: ignored here
    gpus, reasons = _probe(sysfs, ids)
    assert gpus == []
    assert len(reasons) == 1
    assert reasons[0].startswith("AMD: card0 (AMD Radeon RX 7900 XTX): mem_info_vram_total")


def test_no_amd_card(sysfs, ids):
    sysfs.card(0, vendor="0x8086", device="0x46a6")
    assert _probe(sysfs, ids) == ([], [f"AMD: no AMD GPU in {sysfs.root}"])


def test_no_sysfs(tmp_path, ids):
    gpus, reasons = amd.probe(tmp_path / "nope", *ids)
    assert gpus == [] and "not Linux" in reasons[0]


def test_free_memory_rereads_sysfs(sysfs, ids):
    dev = sysfs.card(
        0, mem_info_vram_total=16 * GiB, mem_info_vram_used=2 * GiB, mem_info_vram_vendor="x"
    )
    (gpu,), _ = _probe(sysfs, ids)
    (dev / "mem_info_vram_used").write_text(str(5 * GiB))
    assert amd.free_memory(gpu) == 11 * GiB
    (dev / "mem_info_vram_used").unlink()
    assert amd.free_memory(gpu) is None


def test_scan_orders_cards_and_reads_ids(sysfs):
    sysfs.card(10, vendor="0x10DE", device="0x2882", revision="0xa1")
    sysfs.card(2)
    cards = drm.scan(sysfs.root)
    assert [(c.number, c.vendor, c.device_id) for c in cards] == [
        (2, "AMD", "0x744c"),
        (10, "NVIDIA", "0x2882"),
    ]
