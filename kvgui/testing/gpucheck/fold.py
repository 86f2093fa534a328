"""Reading a CUDA check's JSON back: the README's accuracy rows and the CUDA overhead figure.

``render`` gives what a session pastes: one README row (date, GPU, driver, build, how many
runs were equal per part), a table per model, the cases that differ (with the bytes), the real
loads' overhead beyond llama.cpp's buffers, and the ``CUDA_OVERHEAD`` literal for
kvgui/core/devices/cuda_overhead.py. ``summary_lines`` is the short table the run prints last.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

MiB = 1 << 20
PARTS = ("model", "context", "compute")


def machine(data: Mapping[str, Any]) -> dict[str, str]:
    env = data.get("env") or {}
    smi = env.get("nvidia_smi") or {}
    gpus = ((data.get("gpus") or {}).get("report") or {}).get("gpus") or []
    g0 = gpus[0] if gpus else {}
    return {
        "date": str(data.get("started", ""))[:10],
        "gpu": smi.get("name") or g0.get("name") or ("none (dry rehearsal)" if data.get("dry")
                                                     else "?"),
        "driver": smi.get("driver") or g0.get("driver") or "?",
        "cuda": g0.get("cuda_driver") or "?",
        "nvcc": str(env.get("nvcc") or "?"),
        "llama_cpp": str((data.get("llama_cpp") or {}).get("commit", "?")),
        "kvgui": str((data.get("kvgui") or {}).get("commit") or "?"),
    }


def _counts(cases: Sequence[Mapping[str, Any]], kind: str,
            exact: bool) -> dict[str, tuple[int, int]]:
    """(equal, of) per part over the devices of ``kind`` ("GPU" or "Host")."""
    out = {p: [0, 0] for p in PARTS}
    for c in cases:
        for dev, parts in (c.get("devices") or {}).items():
            if (dev == "Host") != (kind == "Host"):
                continue
            for p in PARTS:
                cell = parts.get(p)
                if cell is None:
                    continue
                out[p][1] += 1
                out[p][0] += (cell["diff"] == 0) if exact else bool(cell["equal"])
    return {p: (a, b) for p, (a, b) in out.items()}


def _frac(pair: tuple[int, int]) -> str:
    a, b = pair
    return "–" if b == 0 else (f"**{a}/{b}**" if a == b else f"{a}/{b}")


def readme_row(data: Mapping[str, Any]) -> str:
    """One row of the README's CUDA accuracy table."""
    m = machine(data)
    dry = (data.get("dryrun") or {}).get("cases") or []
    ran = [c for c in dry if c.get("devices")]
    gpu = _counts(ran, "GPU", exact=True)
    real = (data.get("real_load") or {}).get("runs") or []
    real_ran = [r for r in real if r.get("devices")]
    real_gpu = _counts(real_ran, "GPU", exact=True)
    over = overhead_summary(data)
    over_txt = "–" if over is None else (f"{over['max_bytes'] / MiB:.0f} MiB max, "
                                         f"{over['median_bytes'] / MiB:.0f} median")
    return (f"| {m['date']} | {m['gpu']} | {m['driver']} (CUDA {m['cuda']}) | {m['llama_cpp']} "
            f"| {len(ran)} | {_frac(gpu['model'])} | {_frac(gpu['context'])} "
            f"| {_frac(gpu['compute'])} | {_frac(real_gpu['compute'])} | {over_txt} |")


README_HEADER = ("| date | GPU | driver | llama.cpp | no_alloc runs | GPU weights exact "
                 "| GPU KV + state exact | GPU compute exact | real loads: GPU compute exact "
                 "| CUDA runtime beyond llama.cpp's buffers |\n"
                 "|---|---|---|---|---|---|---|---|---|---|")


def per_model(data: Mapping[str, Any]) -> list[str]:
    cases = [c for c in (data.get("dryrun") or {}).get("cases") or [] if c.get("devices")]
    models: dict[str, list[Mapping[str, Any]]] = {}
    for c in cases:
        models.setdefault(c["model"], []).append(c)
    lines = ["| model | arch | runs | GPU weights | GPU KV | GPU compute | Host compute "
             "| largest GPU difference |", "|---|---|---|---|---|---|---|---|"]
    for model, group in models.items():
        g, h = _counts(group, "GPU", True), _counts(group, "Host", True)
        worst = max((abs(cell["diff"]) for c in group for dev, parts in c["devices"].items()
                     if dev != "Host" for cell in parts.values()), default=0)
        worst_txt = f"{worst:,} B" if worst else "0"
        lines.append(f"| {model} | {group[0].get('arch')} | {len(group)} | {_frac(g['model'])} "
                     f"| {_frac(g['context'])} | {_frac(g['compute'])} | {_frac(h['compute'])} "
                     f"| {worst_txt} |")
    return lines


def differences(data: Mapping[str, Any], limit: int = 25) -> list[str]:
    """The cases whose parts differ, with each difference in bytes (kvgui - llama.cpp)."""
    out = []
    for c in (data.get("dryrun") or {}).get("cases") or []:
        if c.get("error"):
            out.append(f"- {c['id']}: {c['error']}")
            continue
        diffs = [f"{dev}.{p} {cell['diff']:+,} B" + (
                 f" (estimate {cell['kvgui_estimate'] - cell['llama']:+,} B)"
                 if "kvgui_estimate" in cell else "")
                 for dev, parts in c.get("devices", {}).items() for p, cell in parts.items()
                 if cell["diff"]]
        splits = c.get("splits") or [None, None]
        if splits[0] is not None and splits[1] is not None and splits[0] != splits[1]:
            diffs.append(f"splits {splits[1]} vs llama.cpp's {splits[0]}")
        if diffs:
            out.append(f"- {c['id']}: " + ", ".join(diffs))
    return out[:limit] + ([f"- … {len(out) - limit} more"] if len(out) > limit else [])


def overhead_summary(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The CUDA overhead after the decode phase over the real loads that measured it."""
    values = sorted(int(r["overhead"]["decode"]) for r in
                    (data.get("real_load") or {}).get("runs") or []
                    if (r.get("overhead") or {}).get("decode") is not None)
    if not values:
        return None
    mid = values[len(values) // 2] if len(values) % 2 else \
        (values[len(values) // 2 - 1] + values[len(values) // 2]) // 2
    return {"runs": len(values), "max_bytes": values[-1], "min_bytes": values[0],
            "median_bytes": mid}


def overhead_literal(data: Mapping[str, Any]) -> str | None:
    """The line for kvgui/core/devices/cuda_overhead.py (the largest, rounded up to a MiB)."""
    s = overhead_summary(data)
    if s is None:
        return None
    m = machine(data)
    mib = math.ceil(s["max_bytes"] / MiB)
    return (f"CUDA_OVERHEAD: CudaOverhead | None = CudaOverhead(bytes={mib} << 20, "
            f"gpu={m['gpu']!r}, driver={m['driver']!r}, measured={m['date']!r}, "
            f"runs={s['runs']})")


def real_load_lines(data: Mapping[str, Any]) -> list[str]:
    lines = ["| run | llama.cpp CUDA buffers | after load | after context | after prompt "
             "| after decode | process (NVML) | compute vs estimate |",
             "|---|---|---|---|---|---|---|---|"]
    for r in (data.get("real_load") or {}).get("runs") or []:
        o = r.get("overhead") or {}
        if r.get("error") and not r.get("phases"):
            lines.append(f"| {r['id']} | {r['error']} | | | | | | |")
            continue

        def mib(v: Any) -> str:
            return "–" if v is None else f"{v / MiB:.1f} MiB"

        comp = "–"
        for dev, parts in (r.get("devices") or {}).items():
            if dev != "Host":
                comp = f"{parts['compute']['diff']:+,} B"
        lines.append(f"| {r['id']} | {mib(o.get('llama_cuda_bytes'))} | {mib(o.get('model'))} "
                     f"| {mib(o.get('context'))} | {mib(o.get('prompt'))} "
                     f"| {mib(o.get('decode'))} | {mib(o.get('decode_process_used'))} "
                     f"| {comp}{' — ' + r['error'] if r.get('error') else ''} |")
    return lines


def steps_line(data: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v['status']} ({v.get('seconds')} s)"
                     for k, v in (data.get("steps") or {}).items())


def summary_lines(data: Mapping[str, Any]) -> list[str]:
    """What the run prints last (the device tool's reply carries the end of the output)."""
    m = machine(data)
    lines = [f"CUDA check {m['date']}: {m['gpu']}, driver {m['driver']}, {m['nvcc']}",
             "steps: " + steps_line(data)]
    b = data.get("build") or {}
    if b:
        lines.append(f"build: {'ok' if b.get('ok') else b.get('error')} "
                     f"(configure {b.get('configure_s')} s, build {b.get('build_s')} s, "
                     f"{b.get('jobs')} jobs)")
    for section in ("dryrun", "fit_params", "fit_params_rpc"):
        s = (data.get(section) or {}).get("summary")
        if s:
            parts = ", ".join(f"{k} {v['equal']}/{v['of']}" for k, v in s["parts"].items())
            lines.append(f"{section}: {s['ran']}/{s['cases']} ran, {s['all_equal']} all equal;"
                         f" {parts}")
    over = overhead_summary(data)
    if over:
        lines.append(f"CUDA overhead after decode: max {over['max_bytes'] / MiB:.1f} MiB, median "
                     f"{over['median_bytes'] / MiB:.1f} MiB over {over['runs']} real loads")
    lines.append("README row: " + readme_row(data))
    return lines


def render(data: Mapping[str, Any]) -> str:
    m = machine(data)
    out = [f"# CUDA check of {m['date']}: {m['gpu']}, driver {m['driver']}, CUDA {m['cuda']}, "
           f"{m['nvcc']}, llama.cpp {m['llama_cpp']}, kvgui {m['kvgui']}", "",
           "Steps: " + steps_line(data), "",
           "## README accuracy row (CUDA)", "", README_HEADER, readme_row(data), "",
           "## Per model (no_alloc, exact bytes)", "", *per_model(data), "",
           "## Differences", "", *(differences(data) or ["none"]), "",
           "## Real loads: the process's GPU memory beyond llama.cpp's CUDA buffers", "",
           *real_load_lines(data), ""]
    lit = overhead_literal(data)
    out += ["## kvgui/core/devices/cuda_overhead.py", "",
            lit or "(no real load measured it: CUDA_OVERHEAD stays None)"]
    fit = (data.get("fit_params") or {}).get("summary")
    if fit:
        out += ["", "## llama-fit-params (MiB as printed)", "",
                ", ".join(f"{k} {v['equal']}/{v['of']} (max diff {v['max_abs_diff']} MiB)"
                          for k, v in fit["parts"].items())]
    return "\n".join(out) + "\n"
