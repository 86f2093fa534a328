"""The CUDA check's run, step by step, within one deadline (benchmarks/gpu_check.sh).

Order, most valuable first once the build is done: the environment (driver, GPU, toolkit),
the sparse models (written while the build runs), the build, ``kvgui gpus --json``, the
no_alloc matrix through kvgui's dry run (exact bytes; one child per model, so one CUDA context
each), the real loads, then llama-fit-params over the same matrix (several processes at once).
Each step gets what is left of the budget less what the later steps need at least, and the
report is rewritten after each one.

``dry``: no CUDA here (the rehearsal on a CPU machine): the build is skipped (unless
``build_dry``: the subset is then built without CUDA, to prove it builds), kvgui's dry run
and real load use the installed llama-cpp-python, llama-fit-params is the CPU tools build
(kvgui.testing.llama_tools), and the estimate has no GPU; the matrix and the real loads are
cut to a few runs.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model.info import load_model
from kvgui.testing.gpucheck import compare, matrix, realload, source
from kvgui.testing.gpucheck.build import (
    LATER_TARGETS,
    PREBUILT_DIR,
    BuildResult,
    LaterBuild,
    build,
    cmake_options,
    install_into_bindings,
    pack_artifacts,
    unpack_artifacts,
)
from kvgui.testing.gpucheck.report import Report

log = logging.getLogger(__name__)

#: seconds the steps after the build need at least (gpus, dry run, real loads, fit-params)
AFTER_BUILD_S = 150.0
BUILD_CAP_S = 420.0
REAL_MODEL = "gemma-3-270m-q4_k_m"  # the header carried in .gpucheck/models
REAL_LABEL = "Gemma-3-270M Q4_K_M (real header, zero weights)"
BIG_LABEL = "Llama-3.1-8B-Instruct Q4_K_M"


class Deadline:
    def __init__(self, budget_s: float) -> None:
        self.end = time.monotonic() + budget_s

    def left(self, keep: float = 0.0) -> float:
        return self.end - time.monotonic() - keep


def _cmd(args: Sequence[str], timeout: float = 20.0) -> str | None:
    if not shutil.which(args[0]):
        return None
    try:
        p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout,
                           check=False)
    except subprocess.TimeoutExpired:
        return None
    return (p.stdout or p.stderr).strip() or None


def env_facts() -> dict[str, Any]:
    """The machine as the README's accuracy rows name it."""
    facts: dict[str, Any] = {"nproc": len(os.sched_getaffinity(0)), "kernel": platform.release(),
                             "python": sys.version.split()[0], "machine": platform.machine()}
    smi = _cmd(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,memory.used,"
                "compute_cap", "--format=csv,noheader,nounits"])
    if smi:
        name, driver, total, used, cc = [x.strip() for x in smi.splitlines()[0].split(",")]
        facts["nvidia_smi"] = {"name": name, "driver": driver, "memory_total_mib": int(total),
                               "memory_used_mib": int(used), "compute_cap": cc}
    nvcc = _cmd(["nvcc", "--version"])
    facts["nvcc"] = nvcc.splitlines()[-1] if nvcc else None
    cmake = _cmd(["cmake", "--version"])
    facts["cmake"] = cmake.splitlines()[0] if cmake else None
    try:
        info = Path("/proc/cpuinfo").read_text()
        facts["cpu_model"] = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                                   if ln.startswith("model name")), None)
        flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                      if ln.startswith("flags")), [])
        facts["cpu_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma",
                                                                      "f16c", "bmi")))
    except OSError:
        facts["cpu_model"] = None
    return facts


def kvgui_facts(root: Path) -> dict[str, Any]:
    import kvgui

    commit = _cmd(["git", "-C", str(root), "rev-parse", "--short", "HEAD"])
    return {"version": kvgui.__version__, "commit": commit}


def child_env(site: Path | None, root: Path) -> dict[str, str]:
    """The environment of every child: kvgui from ``root``, the carried packages first."""
    env = dict(os.environ)
    paths = [str(p) for p in (site, root) if p is not None]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["GGML_NO_BACKTRACE"] = "1"
    return env


# --- the no_alloc matrix through kvgui's dry run ----------------------------------------------

def _gpu_names(result: Any) -> list[str]:
    from kvgui.runtime.verification import dry_run_gpus

    return dry_run_gpus(result)


def dryrun_matrix(cases: Sequence[matrix.Case], files: dict[str, Path], host: Any,
                  deadline: Deadline, keep: float) -> list[dict[str, Any]]:
    """kvgui's dry run (no_alloc, exact bytes) per case, against the estimate for the same
    devices; one child per model."""
    from kvgui.runtime.dryrun import DryRunError, dry_run_many

    rows: list[dict[str, Any]] = []
    for label, group in matrix.by_model(cases):
        left = deadline.left(keep)
        if left < 5:
            rows += [_case_row(c, None, error="not run: the deadline had passed")
                     for c in group]
            continue
        path = files[label]
        model = load_model(path)
        memo = ModelMemo(model)
        got = dry_run_many(path, [c.settings for c in group], timeout=left)
        for case, r in zip(group, got, strict=True):
            if isinstance(r, DryRunError):
                rows.append(_case_row(case, model, error=r.reason))
                continue
            rows.append(_exact_case(case, model, memo, r, host))
    return rows


def _case_row(case: matrix.Case, model: Any, *, error: str | None = None) -> dict[str, Any]:
    return {"id": case.id, "model": case.model, "arch": getattr(model, "arch", None),
            "offload": case.offload, "settings": compare.settings_json(case.settings),
            "error": error, "equal": False, "devices": {}}


def _exact_case(case: matrix.Case, model: Any, memo: ModelMemo, r: Any,
                host: Any) -> dict[str, Any]:
    row = _case_row(case, model)
    s = case.settings
    fa = bool(r.flash_attn) if r.flash_attn is not None else s.flash_attn is FlashAttn.ON
    gpus = _gpu_names(r)
    est = compare.estimate_for(model, s, gpus, host, memo)
    noalloc = compare.no_alloc_compute(model, s, fa, len(gpus), memo)
    ours = compare.kvgui_parts(est, noalloc[0] if noalloc else None)
    theirs = compare.llama_parts(r.exact or [])
    row["flash_attn"] = fa
    row["devices"] = compare.exact_rows(theirs, ours, compare.kvgui_parts(est))
    row["equal"] = bool(r.exact) and compare.all_equal(row["devices"])
    nodes, splits = compare.llama_graph(r.log)
    row["nodes"] = nodes
    row["splits"] = [splits, noalloc[1] if noalloc else None]
    row["estimate_flash_attn"] = est.flash_attn
    if not r.exact:
        row["error"] = "llama.cpp's exact breakdown could not be read (not libstdc++?)"
    return row


# --- llama-fit-params over the matrix ---------------------------------------------------------

def fit_matrix(binary: Path, cases: Sequence[matrix.Case], files: dict[str, Path], host: Any,
               deadline: Deadline, parallel: int, env: dict[str, str] | None,
               rpc: str | None = None) -> list[dict[str, Any]]:
    """llama-fit-params per case against the estimate for the devices it reports. ``rpc``:
    ggml-rpc-server endpoints (the rehearsal's GPUs): compute held against their layout."""
    from kvgui.testing.gpucheck.fitparams import args_for, run_many

    extra = ["--rpc", rpc] if rpc else []
    jobs = [(c.id, [*args_for(files[c.model], c.settings), *extra]) for c in cases]
    runs = run_many(binary, jobs, parallel=parallel, deadline=deadline.end - 5, env=env)
    rows: list[dict[str, Any]] = []
    models: dict[str, tuple[Any, ModelMemo]] = {}
    for case, run in zip(cases, runs, strict=True):
        if case.model not in models:
            m = load_model(files[case.model])
            models[case.model] = (m, ModelMemo(m))
        model, memo = models[case.model]
        row = _case_row(case, model, error=run.error or None)
        row["seconds"] = run.seconds
        if run.result is not None:
            r = run.result
            gpus = [d.name for d in r.devices]
            fa = _flash_attn(r.log, case.settings)
            est = compare.estimate_for(model, case.settings, gpus, host, memo)
            noalloc = compare.no_alloc_compute(model, case.settings, fa, len(gpus), memo,
                                               kind="rpc" if rpc else "cuda")
            ours = compare.kvgui_parts(est, noalloc[0] if noalloc else None)
            row["devices"] = compare.fit_rows(r, ours)
            row["equal"] = compare.fit_equal(row["devices"])
            nodes, splits = compare.llama_graph(r.log)
            row["nodes"] = nodes
            row["splits"] = [splits, noalloc[1] if noalloc else None]
            row["flash_attn"] = fa
        rows.append(row)
    return rows


_FA_LINE = re.compile(r"llama_context: flash_attn\s+= (\w+)")


def _flash_attn(log_text: str, s: Settings) -> bool:
    """Flash attention as llama.cpp resolved it (its context log), else as asked."""
    found = _FA_LINE.findall(log_text)
    if found:
        return found[-1] == "enabled"
    return s.flash_attn is FlashAttn.ON


def _rpc_rehearsal(cases: Sequence[matrix.Case], files: dict[str, Path], host: Any,
                   deadline: Deadline, env: dict[str, str]) -> dict[str, Any]:
    """The fit-params comparison with one 24 GiB ggml-rpc-server device (the CPU tools build):
    the per-GPU rows and their compute replay, exercised without a GPU. The host's weights of
    a partial offload differ by design: kvgui places them as for CUDA (no mmap: CUDA's pinned
    CUDA_Host buffer comes first), and an RPC device has no host buffer type, so llama.cpp
    repacks them into AMX / CPU_REPACK buffers instead."""
    from kvgui.testing.llama_tools import find_tools
    from kvgui.testing.rpc import GiB, RpcDevices

    tools = find_tools()
    if tools is None:
        return {"cases": [], "error": "no llama.cpp tools build"}
    on = [c for c in cases if c.settings.flash_attn is FlashAttn.ON]
    picked = [c for c in on if c.offload == "all"][:3] + \
        [c for c in on if c.offload == matrix.PARTIAL][:3]
    with RpcDevices(tools, [24 * GiB]) as devs:
        rows = fit_matrix(tools.fit_params, picked, files, host, deadline, 2, env,
                          rpc=devs.rpc_arg)
    return {"cases": rows, "summary": compare.summarize(rows, exact=False)}


# --- real loads -------------------------------------------------------------------------------

def real_runs(dry: bool, have_real: bool) -> list[tuple[str, Settings]]:
    """(model label, settings) of the real loads, most valuable first."""
    on, off = FlashAttn.ON, FlashAttn.OFF
    runs: list[tuple[str, Settings]] = []
    if have_real:
        if dry:
            return [(REAL_LABEL, Settings(n_ctx=2048, flash_attn=on)),
                    (REAL_LABEL, Settings(n_ctx=2048, type_k="q8_0", type_v="q8_0",
                                          flash_attn=on))]
        for n_ctx in (32768, 131072):
            for ctype in ("f16", "q8_0", "q4_0"):
                runs.append((REAL_LABEL, Settings(n_ctx=n_ctx, type_k=ctype, type_v=ctype,
                                                  flash_attn=on)))
        runs.insert(3, (REAL_LABEL, Settings(n_ctx=32768, flash_attn=off)))
    if not dry:
        runs += [(BIG_LABEL, Settings(n_ctx=32768, flash_attn=on)),
                 (BIG_LABEL, Settings(n_ctx=32768, type_k="q4_0", type_v="q4_0",
                                      flash_attn=on)),
                 (BIG_LABEL, Settings(n_ctx=32768, flash_attn=on, n_gpu_layers=16))]
    return runs


def _cuda_bytes(breakdown: list[dict[str, Any]] | None) -> int | None:
    if not breakdown:
        return None
    return sum(b["model"] + b["context"] + b["compute"] for b in breakdown if not b["is_host"])


def overhead(run: dict[str, Any]) -> dict[str, Any]:
    """What the process holds on the GPU beyond llama.cpp's CUDA buffers, at each phase:
    the device's used memory (cudaMemGetInfo) less what was used before the child started
    (NVML) less llama.cpp's CUDA buffers (its breakdown after the context was made)."""
    before = (run.get("nvml_before") or {}).get("used")
    phases = {p["phase"]: p for p in run["phases"] if "phase" in p}
    ctx_bytes = _cuda_bytes((phases.get("context") or {}).get("breakdown"))
    end_bytes = _cuda_bytes((phases.get("decode") or {}).get("breakdown")) or ctx_bytes
    model_bytes = None
    ctx_breakdown = (phases.get("context") or {}).get("breakdown") or []
    if ctx_breakdown:
        model_bytes = sum(b["model"] for b in ctx_breakdown if not b["is_host"])
    out: dict[str, Any] = {"used_before": before, "llama_cuda_bytes": end_bytes}
    for name, llama_bytes in (("init", 0), ("model", model_bytes), ("context", ctx_bytes),
                              ("prompt", end_bytes), ("decode", end_bytes)):
        cuda = (phases.get(name) or {}).get("cuda") or {}
        used = cuda.get("used")
        out[name] = (used - before - llama_bytes
                     if used is not None and before is not None and llama_bytes is not None
                     else None)
        nv = (phases.get(name) or {}).get("nvml") or {}
        out[f"{name}_process_used"] = nv.get("process_used")
    return out


def real_loads(runs: Sequence[tuple[str, Settings]], files: dict[str, Path], host: Any,
               deadline: Deadline, keep: float, env: dict[str, str],
               no_repack: bool = False) -> list[dict[str, Any]]:
    """Each run in its own child, against the estimate. ``no_repack``: the build crashes in
    its AMX/repack CPU kernels (kvgui.runtime.cpu_kernels): load as llama.cpp's -nr does,
    with no extra CPU buffer types, and estimate for a host without them."""
    out: list[dict[str, Any]] = []
    for label, s in runs:
        rid = f"{label} | c={s.n_ctx} ngl={s.n_gpu_layers} k={s.type_k} v={s.type_v} " \
              f"fa={s.flash_attn.value}"
        left = deadline.left(keep)
        if left < 10:
            out.append({"id": rid, "model": label, "settings": compare.settings_json(s),
                        "phases": [], "error": "not run: the deadline had passed"})
            continue
        path = files[label]
        if no_repack:
            s = s.replace(repack=False)
        request = realload.request_for(path, s)
        result = realload.run(request, timeout=min(left, 120.0), env=env)
        row: dict[str, Any] = {"id": rid, "model": label, "settings": compare.settings_json(s),
                               **result}
        phases = {p["phase"]: p for p in result["phases"] if "phase" in p}
        end = phases.get("decode") or phases.get("context")
        if end and end.get("breakdown"):
            from kvgui.runtime.llama_log import BufferBytes

            model = load_model(path)
            theirs = compare.llama_parts([BufferBytes(**b) for b in end["breakdown"]])
            gpus = [d for d in theirs if d != compare.HOST]
            est = compare.estimate_for(model, s, gpus, host)
            row["devices"] = compare.exact_rows(theirs, compare.kvgui_parts(est))
            row["equal"] = compare.all_equal(row["devices"])
        row["overhead"] = overhead(row)
        out.append(row)
    return out


# --- the whole run ----------------------------------------------------------------------------

def run_check(out: Path, *, root: Path, dry: bool, budget_s: float, build_dry: bool = False,
              work: Path | None = None, parallel: int = 8,
              artifacts: Path | None = None) -> dict[str, Any]:
    """The whole check; ``artifacts``: where to leave the build for a rerun (the device's
    $OUT), or None."""
    deadline = Deadline(budget_s)
    report = Report(out, dry=dry, budget_s=budget_s)
    report["kvgui"] = kvgui_facts(root)
    carry = root / source.CARRY_DIR
    manifest: dict[str, Any] = {}
    if (carry / source.MANIFEST).is_file():
        manifest = json.loads((carry / source.MANIFEST).read_text())
    report["carry"] = manifest
    work = work or Path(os.environ.get("GPU_CHECK_WORK", "/tmp/kvgui-gpucheck"))
    work.mkdir(parents=True, exist_ok=True)
    site = None if dry else carry / source.SITE_DIR
    env = child_env(site, root)

    with report.step("env") as st:
        report["env"] = env_facts()
        report["llama_cpp"] = {"llama_cpp_python": "0.3.36", "commit": "0c1e570"}
        st["status"] = "ok"

    # the sparse models and the real header, written while the build runs
    files: dict[str, Path] = {}
    model_errors: list[str] = []

    def write_models() -> None:
        try:
            files.update(matrix.write_models(work / "models"))
            files[BIG_LABEL] = matrix.model_file(work / "models", BIG_LABEL)
            for m in manifest.get("models", []):
                target = work / "models" / m["name"]
                source.expand_header(carry / source.MODELS_DIR / m["header"],
                                     int(m["file_bytes"]), target)
                files[REAL_LABEL] = target
        except Exception as exc:  # reported with the step
            log.exception("writing the models failed")
            model_errors.append(f"{type(exc).__name__}: {exc}")

    writer = threading.Thread(target=write_models, daemon=True)
    t_models = time.monotonic()
    writer.start()

    lib_dir: Path | None = None
    fit_binary: Path | None = None
    later: LaterBuild | None = None
    if dry and not build_dry:
        report.skip("build", "dry rehearsal: no CUDA build (GPU_CHECK_DRY_BUILD=1 builds the "
                             "subset without CUDA)")
    else:
        with report.step("build") as st:
            options = cmake_options(cuda=not dry)
            prebuilt = carry / PREBUILT_DIR
            if unpack_artifacts(prebuilt, work / "build" / "bin", options):
                result = BuildResult(True, str(work / "build"), options=options,
                                     error="", log_tail="reused the carried build")
                result.lib_dir = str(work / "build" / "bin")
                result.fit_params = str(work / "build" / "bin" / "llama-fit-params")
            else:
                src = source.unpack_source(carry / source.SOURCE_TAR, work / "src")
                result = build(src, work / "build", cuda=not dry, options=options,
                               timeout=max(30.0, min(BUILD_CAP_S,
                                                     deadline.left(AFTER_BUILD_S))),
                               logfile=work / "build.log")
                if result.ok:
                    later = LaterBuild(work / "build", max(1, result.jobs - 2),
                                       work / "build.log")
                if result.ok and artifacts is not None:
                    report["build_artifacts"] = pack_artifacts(Path(result.lib_dir), artifacts,
                                                               options)
            report["build"] = result.to_json()
            if not result.ok:
                st["status"] = "timeout" if "timed out" in result.error else "failed"
                st["error"] = result.error
            else:
                lib_dir = Path(result.lib_dir)
                if Path(result.fit_params).is_file():  # (a carried build that has it)
                    fit_binary = Path(result.fit_params)
                if site is not None:
                    install_into_bindings(lib_dir, site)
                env["LD_LIBRARY_PATH"] = os.pathsep.join(
                    p for p in (str(lib_dir), env.get("LD_LIBRARY_PATH", "")) if p)

    if dry:
        from kvgui.testing.llama_tools import find_tools

        tools = find_tools()
        if fit_binary is None and tools is not None:
            fit_binary = tools.fit_params

    writer.join(timeout=max(1.0, deadline.left(60)))
    with report.step("models") as st:
        st["status"] = "failed" if model_errors else "ok"
        st["error"] = "; ".join(model_errors) or None
        report["models"] = {k: str(v) for k, v in files.items()}
        st["wrote_s"] = round(time.monotonic() - t_models, 1)

    no_build = not dry and lib_dir is None
    with report.step("gpus") as st:
        p = subprocess.run([sys.executable, "-m", "kvgui", "gpus", "--json"], capture_output=True,
                           text=True, timeout=60, env=env, check=False)
        try:
            report["gpus"] = {"report": json.loads(p.stdout), "error": None}
        except ValueError:
            report["gpus"] = {"report": None, "error": (p.stderr or p.stdout)[-1500:]}
            st["status"] = "failed"

    if no_build:  # the CUDA build failed: nothing below can run
        for name in ("dryrun", "real_load", "fit_params"):
            report.skip(name, "no CUDA build")
        report.finish()
        return report.data

    from kvgui.runtime.llama_backend import probe_host_cpu

    host = probe_host_cpu()  # the CPU backend of the libraries the runs load
    report["host_cpu"] = host.to_dict()
    n_layers = {label: load_model(path).n_layer for label, path in files.items()
                if label in matrix.MODELS}
    if dry:  # two models at 4K: the comparison's code paths, in seconds
        cases = matrix.cases(matrix.MODELS[:2], (4096,), n_layers)
    else:
        cases = matrix.cases(matrix.MODELS, matrix.CONTEXTS, n_layers)
    cases = [replace(c, settings=replace(c.settings, mmap=False)) for c in cases]

    kernels = None
    with report.step("cpu_kernels"):
        from dataclasses import asdict

        from kvgui.runtime.cpu_kernels import check_kernels

        kernels = check_kernels(use_cache=False, timeout=min(60.0, deadline.left(200)))
        report["cpu_kernels"] = asdict(kernels)
    no_repack = bool(host.extra_buffers) and kernels is not None and not kernels.ok

    with report.step("dryrun") as st:
        rows = dryrun_matrix(cases, files, host, deadline, keep=120.0 if not dry else 20.0)
        report["dryrun"] = {"cases": rows, "summary": compare.summarize(rows, exact=True)}
        if any(r.get("error", "") and "deadline" in r["error"] for r in rows):
            st["status"] = "partial"

    with report.step("real_load") as st:
        runs = real_runs(dry, REAL_LABEL in files)
        report["real_load"] = {"runs": real_loads(runs, files, host, deadline,
                                                  keep=60.0 if not dry else 5.0, env=env,
                                                  no_repack=no_repack)}
        report["real_load"]["no_repack"] = no_repack
        if any((r.get("error") or "").startswith("not run") for r in
               report["real_load"]["runs"]):
            st["status"] = "partial"

    with report.step("fit_params") as st:
        if later is not None:
            fit_binary = later.wait(deadline.left(45))
            report["build"]["later"] = {"targets": list(LATER_TARGETS), "ok": bool(fit_binary),
                                        "seconds": later.seconds}
            report.write()
            if fit_binary is not None and artifacts is not None and deadline.left(40) > 0:
                report["build_artifacts"] = pack_artifacts(fit_binary.parent, artifacts,
                                                           cmake_options(cuda=not dry))
        if fit_binary is None:
            st["status"] = "skipped"
            st["error"] = "no llama-fit-params (dry: python -m kvgui.testing.llama_tools build)"
        else:
            rows = fit_matrix(fit_binary, cases, files, host, deadline, parallel, env)
            report["fit_params"] = {"cases": rows,
                                    "summary": compare.summarize(rows, exact=False)}
            if dry:  # GPU rows too: one ggml-rpc-server device stands in for a GPU
                report["fit_params_rpc"] = _rpc_rehearsal(cases, files, host, deadline, env)
            if any((r.get("error") or "").startswith("not run") for r in rows):
                st["status"] = "partial"
    report.finish()
    return report.data
