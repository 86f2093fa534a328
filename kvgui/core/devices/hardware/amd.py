"""AMD GPUs on Linux, read from amdgpu's sysfs files (no ROCm needed).

``mem_info_vram_total|used`` is dedicated VRAM. An APU has a small carve-out instead and its
GPU maps system RAM through GTT, so for one of those the usable memory is VRAM + GTT.
amdgpu hides ``mem_info_vram_vendor`` when there is no VRAM chip (an APU); that, plus GTT
larger than VRAM, is how an APU is told apart from a small discrete card.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kvgui.core.devices.hardware import drm
from kvgui.core.devices.hardware.types import GpuInfo
from kvgui.core.sizes import format_bytes

VENDOR = "amd"
VENDOR_ID = "0x1002"

# libdrm's marketing-name table (device id, revision -> name), then the PCI id database.
AMDGPU_IDS = (
    Path("/usr/share/libdrm/amdgpu.ids"),
    Path("/opt/amdgpu/share/libdrm/amdgpu.ids"),
)
PCI_IDS = (
    Path("/usr/share/hwdata/pci.ids"),
    Path("/usr/share/misc/pci.ids"),
    Path("/usr/share/pci.ids"),
)


def _hex(value: str) -> str:
    return value.lower().removeprefix("0x").lstrip("0") or "0"


def name_from_amdgpu_ids(device_id: str, revision: str, files: Sequence[Path]) -> str | None:
    """libdrm's ``amdgpu.ids``: "744C,\\tC8,\\tAMD Radeon RX 7900 XTX"; the revision picks the
    model when one chip is sold as several cards."""
    dev, rev = _hex(device_id), _hex(revision)
    any_rev: str | None = None
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        for line in lines:
            parts = [p.strip() for p in line.split(",", 2)]
            if len(parts) != 3 or line.startswith("#"):
                continue
            if _hex(parts[0]) != dev:
                continue
            if _hex(parts[1]) == rev:
                return parts[2]
            any_rev = any_rev or parts[2]
        if any_rev:
            return any_rev
    return None


def name_from_pci_ids(device_id: str, files: Sequence[Path]) -> str | None:
    """The PCI id database's name for 1002:<device>; its [bracketed] part is the marketing
    name ("Navi 31 [Radeon RX 7900 XT/7900 XTX]")."""
    dev = _hex(device_id)
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            continue
        in_amd = False
        for line in lines:
            if not line or line.startswith("#"):
                continue
            if not line.startswith("\t"):
                in_amd = line.split(None, 1)[0].lower() == "1002"
                continue
            if in_amd and not line.startswith("\t\t"):
                ident, _, name = line.strip().partition(" ")
                if _hex(ident) == dev:
                    name = name.strip()
                    if "[" in name and "]" in name:
                        name = name[name.index("[") + 1 : name.rindex("]")]
                    return name if name.startswith(("AMD", "Radeon")) else f"AMD {name}"
    return None


def marketing_name(
    card: drm.DrmCard,
    amdgpu_ids: Sequence[Path] = AMDGPU_IDS,
    pci_ids: Sequence[Path] = PCI_IDS,
) -> str:
    return (
        drm.read_text(card.device_dir / "product_name")
        or name_from_amdgpu_ids(card.device_id, card.revision, amdgpu_ids)
        or name_from_pci_ids(card.device_id, pci_ids)
        or f"AMD GPU (PCI 1002:{_hex(card.device_id)})"
    )


def _read_card(card: drm.DrmCard, name: str) -> GpuInfo | str:
    dev = card.device_dir
    vram_total = drm.read_int(dev / "mem_info_vram_total")
    if vram_total is None:
        return f"card{card.number} ({name}): mem_info_vram_total is missing or unreadable"
    vram_used = drm.read_int(dev / "mem_info_vram_used")
    gtt_total = drm.read_int(dev / "mem_info_gtt_total")
    gtt_used = drm.read_int(dev / "mem_info_gtt_used")
    has_vram_chip = (dev / "mem_info_vram_vendor").exists()
    apu = not has_vram_chip and gtt_total is not None and gtt_total > vram_total
    if apu and gtt_total is not None:
        total = vram_total + gtt_total
        used = None if vram_used is None or gtt_used is None else vram_used + gtt_used
        notes: tuple[str, ...] = (
            f"integrated GPU: {format_bytes(vram_total)} dedicated + {format_bytes(gtt_total)} "
            "GTT (system RAM the GPU can map), shared with the CPU",
        )
    else:
        total, used, notes = vram_total, vram_used, ()
    return GpuInfo(
        vendor=VENDOR,
        index=card.number,
        name=name,
        total=total,
        free=None if used is None else max(0, total - used),
        used=used,
        unified=apu,
        key=str(dev),
        notes=notes,
    )


def probe(
    root: Path = drm.DRM_ROOT,
    amdgpu_ids: Sequence[Path] = AMDGPU_IDS,
    pci_ids: Sequence[Path] = PCI_IDS,
) -> tuple[list[GpuInfo], list[str]]:
    """Every amdgpu card under ``root``, and a reason for each one that could not be read."""
    if not root.is_dir():
        return [], [f"AMD: no {root} (not Linux, or sysfs is not mounted)"]
    cards = [c for c in drm.scan(root) if c.vendor_id == VENDOR_ID]
    if not cards:
        return [], ["AMD: no AMD GPU in " + str(root)]
    gpus: list[GpuInfo] = []
    reasons: list[str] = []
    for card in cards:
        got = _read_card(card, marketing_name(card, amdgpu_ids, pci_ids))
        if isinstance(got, str):
            reasons.append(f"AMD: {got} (amdgpu driver not loaded, or kernel too old)")
        else:
            gpus.append(got)
    return gpus, reasons


def free_memory(gpu: GpuInfo) -> int | None:
    """Re-read the used counters of the card's sysfs directory (``gpu.key``)."""
    if not gpu.key:
        return None
    dev = Path(gpu.key)
    used = drm.read_int(dev / "mem_info_vram_used")
    if used is None:
        return None
    if gpu.unified:
        gtt = drm.read_int(dev / "mem_info_gtt_used")
        if gtt is None:
            return None
        used += gtt
    return max(0, gpu.total - used)
