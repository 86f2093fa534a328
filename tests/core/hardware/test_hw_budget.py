"""Reserve, per-GPU budgets, tensor split, and the estimate/fit flags."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from kvgui.cli import UsageError
from kvgui.core.devices import budget
from kvgui.core.devices.budget import (
    BGE_M3,
    DEFAULT_MARGIN,
    BertShape,
    GpuPlan,
    Reserve,
    add_budget_args,
    apply_split,
    devices_from_args,
    plan_from_args,
)
from kvgui.core.devices.hardware import GpuInfo, HardwareReport, SystemMemory

GiB = 1024**3
MiB = 1024**2

RAM = SystemMemory(total=64 * GiB, available=40 * GiB)


def report(*gpus: GpuInfo, reasons: tuple[str, ...] = ()) -> HardwareReport:
    return HardwareReport(gpus=gpus, system=RAM, reasons=reasons)


RTX4090 = GpuInfo("nvidia", 0, "NVIDIA GeForce RTX 4090", 24 * GiB, 22 * GiB)
RTX3090 = GpuInfo("nvidia", 1, "NVIDIA GeForce RTX 3090", 24 * GiB, 23 * GiB)
APU = GpuInfo("amd", 2, "AMD Radeon 780M", 16 * GiB, 15 * GiB, unified=True)


def parse(*argv: str, split: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_budget_args(p)
    args = p.parse_args(list(argv))
    args.tensor_split = split  # the lead's -ts flag (kvgui.commands.common)
    return args


def devices(*argv: str, rep: HardwareReport | None = None, split: str | None = None):
    return [
        (d.name, d.budget, d.is_gpu, d.split)
        for d in devices_from_args(parse(*argv, split=split), rep)
    ]


# --- the embedding preset ------------------------------------------------------------------


def test_bert_shape_matches_a_real_gguf_written_the_converter_way(tmp_path):
    """A small encoder written with gguf-py (matrices F16, vectors F32, as llama.cpp's
    converter does): the formula gives the header's tensor bytes."""
    gguf = pytest.importorskip("gguf")
    shape = BertShape(
        "tiny", n_vocab=320, n_embd=64, n_layer=3, n_ff=256, n_pos=128, n_token_types=2
    )
    e, ff = shape.n_embd, shape.n_ff
    path = tmp_path / "tiny-bert.gguf"
    w = gguf.GGUFWriter(str(path), "bert")
    w.add_tensor("token_embd.weight", np.zeros((shape.n_vocab, e), np.float16))
    w.add_tensor("position_embd.weight", np.zeros((shape.n_pos, e), np.float16))
    w.add_tensor("token_types.weight", np.zeros((shape.n_token_types, e), np.float16))
    for name in ("token_embd_norm.weight", "token_embd_norm.bias"):
        w.add_tensor(name, np.zeros(e, np.float32))
    for i in range(shape.n_layer):
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{t}.weight", np.zeros((e, e), np.float16))
            w.add_tensor(f"blk.{i}.{t}.bias", np.zeros(e, np.float32))
        for t in ("attn_output_norm", "layer_output_norm"):
            w.add_tensor(f"blk.{i}.{t}.weight", np.zeros(e, np.float32))
            w.add_tensor(f"blk.{i}.{t}.bias", np.zeros(e, np.float32))
        w.add_tensor(f"blk.{i}.ffn_up.weight", np.zeros((ff, e), np.float16))
        w.add_tensor(f"blk.{i}.ffn_up.bias", np.zeros(ff, np.float32))
        w.add_tensor(f"blk.{i}.ffn_down.weight", np.zeros((e, ff), np.float16))
        w.add_tensor(f"blk.{i}.ffn_down.bias", np.zeros(e, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert budget.gguf_weight_bytes(str(path)) == shape.f16_bytes()


def test_bge_m3_is_about_1_1_gib():
    # 568 M parameters less the pooler and 2 padding positions, mostly F16
    assert 1.0 * GiB < BGE_M3.f16_bytes() < 1.1 * GiB


def test_weight_bytes_of_a_non_gguf_file_is_its_size(tmp_path):
    f = tmp_path / "mmproj.bin"
    f.write_bytes(b"\0" * 12345)
    assert budget.gguf_weight_bytes(str(f)) == 12345


# --- reserve and plans ---------------------------------------------------------------------


def test_reserve_items():
    r = Reserve(embedding=GiB, embedding_name="BGE-M3 F16", mmproj=600 * MiB)
    assert [(i.label, i.bytes) for i in r.items(in_use=2 * GiB, first=True)] == [
        ("in use now (desktop, other apps)", 2 * GiB),
        ("BGE-M3 F16", GiB),
        ("vision projector (mmproj)", 600 * MiB),
        ("safety margin", DEFAULT_MARGIN),
    ]
    # a second GPU: only its own apps and the margin
    assert [i.bytes for i in r.items(in_use=0, first=False)] == [DEFAULT_MARGIN]
    # an explicit figure replaces what is in use now
    assert Reserve(other_apps=512 * MiB).items(in_use=5 * GiB)[0].bytes == 512 * MiB


def test_plan_budget_never_negative():
    plan = GpuPlan("tiny", 1 * GiB, budget.Reserve(other_apps=3 * GiB).items())
    assert plan.reserved == 4 * GiB and plan.budget == 0


def test_apply_split_reads_like_llama_cpp():
    plans = [GpuPlan("a", GiB), GpuPlan("b", GiB)]
    assert [p.split for p in apply_split(plans, [3, 1])] == [0.75, 0.25]
    assert [p.split for p in apply_split(plans, [1, 1, 5])] == [0.5, 0.5]  # extra ignored
    assert [p.split for p in apply_split(plans, [2])] == [1.0, 0.0]  # missing = 0
    assert [p.split for p in apply_split(plans, [0, 0])] == [0.0, 0.0]  # by free memory
    with pytest.raises(ValueError):
        apply_split(plans, [1, -1])


# --- the flags -----------------------------------------------------------------------------


def test_no_flags_uses_detected_free_memory_minus_margin():
    rep = report(RTX4090, RTX3090, APU)  # the APU is left out next to discrete GPUs
    assert devices(rep=rep) == [
        ("NVIDIA GeForce RTX 4090", 21 * GiB, True, 0.0),
        ("NVIDIA GeForce RTX 3090", 22 * GiB, True, 0.0),
        ("CPU", 40 * GiB, False, 0.0),
    ]


def test_no_gpu_is_cpu_only_with_system_ram():
    """With no GPU the host keeps llama.cpp's --fit margin free too (common/fit.cpp, nd == 0),
    as the window does."""
    rep = report()
    assert devices("--reserve-embedding", "bge-m3", rep=rep) == [
        ("CPU", 40 * GiB - BGE_M3.f16_bytes() - GiB, False, 0.0)
    ]


def test_only_an_apu_uses_it_and_shares_ram():
    rep = report(APU)
    (gpu, cpu) = devices(rep=rep)
    assert gpu == ("AMD Radeon 780M", 14 * GiB, True, 0.0)
    assert cpu == ("CPU", 40 * GiB - 14 * GiB, False, 0.0)


def test_gpu_index_flags():
    rep = report(RTX4090, RTX3090)
    assert [d[0] for d in devices("--gpu", "1", rep=rep)] == ["NVIDIA GeForce RTX 3090", "CPU"]
    assert [d[0] for d in devices("--gpu", "1,0", rep=rep)][:2] == [
        "NVIDIA GeForce RTX 3090",
        "NVIDIA GeForce RTX 4090",
    ]
    assert len(devices("--gpu", "all", rep=rep)) == 3
    assert devices("--gpu", "none", rep=rep) == [("CPU", 39 * GiB, False, 0.0)]
    with pytest.raises(
        UsageError, match=r"--gpu 2: no such GPU \(found: 0 NVIDIA GeForce RTX 4090"
    ):
        devices("--gpu", "2", rep=rep)


def test_gpu_index_without_gpus_says_why():
    rep = report(reasons=("NVIDIA: the NVIDIA driver is not loaded", "Apple: not macOS"))
    with pytest.raises(UsageError) as exc:
        devices("--gpu", "0", rep=rep)
    msg = str(exc.value)
    assert "no GPU detected (NVIDIA: the NVIDIA driver is not loaded)" in msg
    assert "--gpu-model" in msg and "Apple" not in msg


@pytest.mark.parametrize("size", ["8GiB", "8G", "8192M", "8 gib"])
def test_vram_spellings(size):
    assert devices("--vram", size, "--ram", "32G")[0] == ("GPU 8.00 GiB", 7 * GiB, True, 0.0)


def test_several_planned_gpus_and_a_split():
    got = devices("--vram", "2x24GiB", "--ram", "64G", split="3,1")
    assert got == [
        ("GPU 24.00 GiB #0", 23 * GiB, True, 0.75),
        ("GPU 24.00 GiB #1", 23 * GiB, True, 0.25),
        ("CPU", 64 * GiB, False, 0.0),
    ]
    assert devices("--vram", "24G,16G", "--ram", "8G")[1][1] == 15 * GiB


def test_gpu_model_with_reserve():
    got = devices(
        "--gpu-model",
        "RTX 4060",
        "--reserve",
        "512M",
        "--reserve-apps",
        "1G",
        "--reserve-embedding",
        "bge-m3",
        "--ram",
        "32G",
    )
    assert got[0] == ("GeForce RTX 4060", 8 * GiB - 512 * MiB - GiB - BGE_M3.f16_bytes(), True, 0.0)
    two = devices("--gpu-model", "2x RTX 3090", "--reserve-embedding", "bge-m3", "--ram", "1G")
    # the embedding model only on the first GPU
    assert [d[1] for d in two[:2]] == [23 * GiB - BGE_M3.f16_bytes(), 23 * GiB]


def test_planning_a_mac_uses_its_unified_memory():
    plan = plan_from_args(parse("--gpu-model", "M2 Max 64GB"))
    (gpu,) = plan.gpus
    assert gpu.total == 48 * GiB and gpu.budget == 47 * GiB
    assert plan.cpu.budget == 64 * GiB - 47 * GiB


def test_detected_gpu_reserve_apps_overrides_what_is_in_use():
    rep = report(RTX4090)
    assert devices("--reserve-apps", "0", "--reserve", "0", rep=rep)[0][1] == 24 * GiB


def test_mmproj_file(tmp_path):
    f = tmp_path / "mmproj-f16.gguf"
    f.write_bytes(b"\0" * (5 * MiB))
    assert devices("--vram", "8G", "--reserve-mmproj", str(f), "--ram", "1G")[0][1] == (
        7 * GiB - 5 * MiB
    )


@pytest.mark.parametrize(
    ("argv", "split", "words"),
    [
        (["--vram", "8G", "--gpu-model", "RTX 4060"], None, "alternatives"),
        (["--vram", "eight"], None, "--vram: not a size"),
        (["--reserve", "1 potato"], None, "--reserve: not a size"),
        (["--gpu-model", "M2 Max"], None, "matches several GPUs, say which: Apple M2 Max 32GB"),
        (["--gpu-model", "rtx 4600"], None, 'unknown GPU "rtx 4600"; did you mean'),
        (["--gpu-model", "zzzz qqqq"], None, "unknown GPU"),
        (["--reserve-embedding", "nomic"], None, "neither a file nor one of: bge-m3"),
        (["--reserve-mmproj", "/no/such.gguf"], None, "no such file"),
        (["--vram", "8G"], "3,x", "--tensor-split"),
        (["--vram", "8G"], "1,-1", ">= 0"),
    ],
)
def test_bad_flags_are_usage_errors(argv, split, words):
    with pytest.raises(UsageError, match=None) as exc:
        devices(*argv, "--ram", "1G", rep=report(), split=split)
    assert words in str(exc.value)


def test_no_report_given_detects_this_machine():
    got = devices_from_args(parse())
    assert got[-1].name == "CPU" and not got[-1].is_gpu and got[-1].budget
