"""``kvgui gpus``: the GPUs and memory kvgui detects, and why anything was not found."""

from __future__ import annotations

import argparse
import json

from kvgui.core.devices.hardware import GpuInfo, HardwareReport, detect
from kvgui.core.sizes import format_bytes


def add_parser(sub: argparse._SubParsersAction, help_text: str) -> None:
    p = sub.add_parser("gpus", help=help_text, description=help_text)
    p.add_argument("--json", action="store_true", help="print one JSON object (sizes in bytes)")


def _gpu_lines(i: int, g: GpuInfo) -> list[str]:
    free = "free unknown" if g.free is None else f"{format_bytes(g.free)} free"
    head = f"  [{i}] {g.name}: {format_bytes(g.total)} total, {free}"
    if g.free is not None:
        head += f", {format_bytes(g.in_use)} in use"
    lines = [head]
    facts = []
    if g.driver:
        facts.append(f"driver {g.driver}")
    if g.cuda_driver:
        facts.append(f"CUDA {g.cuda_driver}")
    if g.compute_capability:
        facts.append("compute capability {}.{}".format(*g.compute_capability))
    if g.reserved:
        facts.append(f"{format_bytes(g.reserved)} reserved by the driver")
    if facts:
        lines.append("      " + ", ".join(facts))
    if g.processes:
        procs = ", ".join(
            f"{p.name or 'pid'} ({p.pid})" + ("" if p.used is None else f" {format_bytes(p.used)}")
            for p in g.processes
        )
        lines.append(f"      processes: {procs}")
    lines += [f"      {note}" for note in g.notes]
    return lines


def render(report: HardwareReport) -> str:
    lines = ["GPUs:"]
    if report.gpus:
        for i, g in enumerate(report.gpus):
            lines += _gpu_lines(i, g)
    else:
        lines.append("  none found")
    if report.reasons:
        lines.append("Not found or failed:")
        lines += [f"  {r}" for r in report.reasons]
    if report.system:
        lines.append(
            f"System RAM: {format_bytes(report.system.total)} total, "
            f"{format_bytes(report.system.available)} available"
        )
    lb = report.llama
    if lb is not None:
        if not lb.installed:
            lines.append(f"llama.cpp: {lb.reason}")
        else:
            offload = "GPU offload unknown"
            if lb.gpu_offload is not None:
                offload = "can offload to a GPU" if lb.gpu_offload else "CPU-only build"
            lines.append(f"llama.cpp: llama-cpp-python {lb.version or '?'}, {offload}")
            for d in lb.devices:
                mem = "" if d.total is None else f", {format_bytes(d.total)}"
                lines.append(f"  device {d.name}: {d.description} ({d.kind}{mem})")
            if lb.reason:
                lines.append(f"  {lb.reason}")
    lines += [f"Advice: {a}" for a in report.advice]
    if report.cpu_only:
        lines.append(
            "Plan: CPU only (system RAM). To plan for a GPU, pass --gpu-model NAME "
            '(e.g. "RTX 4060") or --vram SIZE to estimate/fit.'
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from kvgui.runtime.llama_backend import probe

    report = detect(llama_probe=probe)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(render(report))
    return 0
