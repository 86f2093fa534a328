"""Display devices in Linux sysfs (/sys/class/drm/cardN/device): vendor, device, revision.

Shared by the AMD probe (which reads memory there) and detect(), which uses it to tell
"no NVIDIA GPU" apart from "an NVIDIA GPU whose driver NVML cannot reach".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DRM_ROOT = Path("/sys/class/drm")
_CARD = re.compile(r"^card(\d+)$")

PCI_VENDORS = {"0x1002": "AMD", "0x10de": "NVIDIA", "0x8086": "Intel"}


@dataclass(frozen=True)
class DrmCard:
    number: int
    device_dir: Path
    vendor_id: str
    device_id: str
    revision: str

    @property
    def vendor(self) -> str:
        return PCI_VENDORS.get(self.vendor_id, self.vendor_id)


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None


def read_int(path: Path) -> int | None:
    value = read_text(path)
    try:
        return int(value, 0) if value else None
    except ValueError:
        return None


def scan(root: Path = DRM_ROOT) -> list[DrmCard]:
    """The cardN entries (not their connectors, card0-DP-1), in card order."""
    cards = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for entry in entries:
        m = _CARD.match(entry.name)
        if not m:
            continue
        dev = entry / "device"
        cards.append(
            DrmCard(
                number=int(m.group(1)),
                device_dir=dev,
                vendor_id=(read_text(dev / "vendor") or "").lower(),
                device_id=(read_text(dev / "device") or "").lower(),
                revision=(read_text(dev / "revision") or "").lower(),
            )
        )
    return sorted(cards, key=lambda c: c.number)
