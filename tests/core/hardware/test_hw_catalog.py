"""The GPU catalog (resources/gpus.json) and its word-based lookup."""

from __future__ import annotations

import pytest

from kvgui.core.devices.gpu_catalog import catalog, find_gpu, search_gpus, tokens

GiB = 1024**3


def test_catalog_entries_are_well_formed():
    gpus = catalog()
    assert len({g.name for g in gpus}) == len(gpus)
    assert {g.vendor for g in gpus} == {"nvidia", "amd", "apple", "intel"}
    for g in gpus:
        assert g.memory >= 4 * GiB and g.memory % GiB == 0, g
        assert g.unified == (g.vendor == "apple"), g
        assert find_gpu(g.name) == g, g.name  # every entry is reachable by its own name


@pytest.mark.parametrize(
    ("query", "name", "gib"),
    [
        ("RTX 3090", "GeForce RTX 3090", 24),
        ("RTX 4060", "GeForce RTX 4060", 8),  # not the 4060 Ti
        ("rtx4060ti", "GeForce RTX 4060 Ti", 8),
        ("4060 Ti 16 GB", "GeForce RTX 4060 Ti 16GB", 16),
        ("NVIDIA GeForce RTX 4060 Laptop GPU", "GeForce RTX 4060 Laptop", 8),
        ("RTX 5090", "GeForce RTX 5090", 32),
        ("RTX A6000", "RTX A6000", 48),
        ("RTX 6000", "RTX 6000 Ada", 48),  # not the A6000
        ("RTX PRO 6000", "RTX PRO 6000 Blackwell", 96),
        ("A100 80GB", "A100 80GB", 80),
        ("NVIDIA H200", "H200", 141),
        ("L4", "L4", 24),
        ("L40S", "L40S", 48),
        ("T4", "Tesla T4", 16),
        ("AMD Radeon RX 7900 XTX", "Radeon RX 7900 XTX", 24),
        ("RX 9070 XT", "Radeon RX 9070 XT", 16),
        ("MI300X", "Instinct MI300X", 192),
        ("h100nvl", "H100 NVL", 94),
        ("M1 8GB", "Apple M1 8GB", 8),
        ("Apple M4 Max 128 GB", "Apple M4 Max 128GB", 128),
        ("Arc B580", "Arc B580", 12),
    ],
)
def test_find_gpu(query, name, gib):
    gpu = find_gpu(query)
    assert gpu is not None, query
    assert (gpu.name, gpu.memory) == (name, gib * GiB)


@pytest.mark.parametrize(("query", "n"), [("M2 Max", 3), ("m2max", 3), ("A100", 2)])
def test_ambiguous_sizes_need_saying_which(query, n):
    assert find_gpu(query) is None
    cands = search_gpus(query)
    assert len(cands) == n
    assert len({c.memory for c in cands}) == n


def test_same_memory_variants_are_not_ambiguous():
    gpu = find_gpu("RTX 4090")  # vs 4090 D (24 GiB too) and 4090 Laptop (more words)
    assert gpu is not None and gpu.name == "GeForce RTX 4090"


def test_typos_get_suggestions_not_a_match():
    assert find_gpu("rtx 4600") is None
    assert any("4060" in g.name for g in search_gpus("rtx 4600"))
    assert find_gpu("") is None and find_gpu("NVIDIA GPU") is None


def test_tokens():
    assert tokens("NVIDIA GeForce RTX 4060 Ti 16 GB") == {"rtx", "4060", "ti", "16gb"}
    assert tokens("Instinct MI300X") == {"mi300x"}
    assert tokens("RTX A6000") != tokens("RTX 6000")


def test_every_entry_has_its_spec_sheet_bandwidth():
    """The decode speed prediction divides bytes per token by it: every card has one, in a
    plausible range, and the figures that anchor it are the published ones."""
    gb = 10**9
    for g in catalog():
        assert 60 * gb <= g.bandwidth <= 8000 * gb, g
    known = {"RTX 4090": 1008, "RTX 4060": 272, "RTX 3090": 936, "RTX 5090": 1792,
             "H100 SXM": 3350, "RX 7900 XTX": 960, "M2 Ultra 192GB": 800, "Arc B580": 456,
             "M4 Max 128GB": 546}
    for name, gbps in known.items():
        gpu = find_gpu(name)
        assert gpu is not None and gpu.bandwidth == gbps * gb, name
    # the same chip never reads faster with a cut-down bus
    assert find_gpu("RTX 3060 8GB").bandwidth < find_gpu("RTX 3060").bandwidth
