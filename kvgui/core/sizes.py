"""Byte sizes as people write them ("8GiB", "8G", "8192M", "7.5 GB") and as kvgui shows them."""

from __future__ import annotations

import re

MiB = 1024 * 1024
GiB = 1024 * MiB

_UNITS = {
    "": 1, "b": 1,
    "k": 1024, "kb": 1000, "kib": 1024,
    "m": MiB, "mb": 1000**2, "mib": MiB,
    "g": GiB, "gb": 1000**3, "gib": GiB,
    "t": 1024 * GiB, "tb": 1000**4, "tib": 1024 * GiB,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Bytes from a size; a bare K/M/G/T is binary, as llama.cpp and nvidia-smi mean it."""
    m = _SIZE.match(text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (try 8GiB, 8G, 8192M or 7.5GB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: int | float, digits: int = 2) -> str:
    """MiB below 1 GiB, GiB above: the units llama.cpp's own log uses."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    if n >= GiB:
        return f"{sign}{n / GiB:.{digits}f} GiB"
    return f"{sign}{n / MiB:.{digits}f} MiB"


def format_tokens(n: int) -> str:
    """A context size the way llama.cpp users name them, one format everywhere: 512, 4K,
    27.5K, 128K, 1M (K = 1024 tokens; one decimal when it is not whole)."""
    if n < 1024:
        return str(n)
    if n >= 1 << 20:
        value, unit = n / (1 << 20), "M"
    else:
        value, unit = n / 1024, "K"
    text = f"{value:.1f}".rstrip("0").rstrip(".")
    return f"{text}{unit}"
