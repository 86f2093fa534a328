"""The one JSON file a CUDA check writes: its schema, an incremental writer, a validator.

The device machine gives back what is under $OUT when its command ends, also when it is
killed at its limit. So the run rewrites the whole file (atomically: a temporary file, then a
rename) after every step, and a run cut short still brings back every finished step and says
which one it was in.

Schema ``kvgui-gpu-check/1`` (sizes in bytes unless a key says ``_mib``)::

    schema, started, finished (null until the end), dry (bool: no CUDA), budget_s
    kvgui: {version, commit}            llama_cpp: {llama_cpp_python, commit}
    steps: {name: {status: ok|failed|skipped|timeout|running, seconds, error}}
    env:   {nvidia_smi: {name, driver, memory_total_mib, compute_cap}, nvcc, cmake, nproc,
            kernel, python, cpu_model, cpu_flags}
    build: kvgui.testing.gpucheck.build.BuildResult.to_json()
    gpus:  {report: `kvgui gpus --json`, error}
    dryrun:     {cases: [CASE], summary}    exact bytes (llama.cpp's memory breakdown)
    fit_params: {cases: [FIT_CASE], summary}
    real_load:  {runs: [RUN]}
    CASE:     {id, model, arch, offload, settings, flash_attn, error, equal,
               devices: {DEV: {model|context|compute: {llama, kvgui, diff[, kvgui_estimate]}}},
               splits: [llama, kvgui], nodes}
    FIT_CASE: {id, ..., devices: {DEV: {model|context|compute: {llama_mib, kvgui_mib, equal},
               device_mib: {total, free, unaccounted}}}, splits, seconds}
    RUN:      {id, model, settings, error, seconds, nvml_before, phases: [PHASE],
               llama: {DEV: {model, context, compute}} (after the prompt), kvgui: {DEV: ...},
               overhead: {after_load, after_prompt, after_decode} (device used - used before
               - llama.cpp's CUDA buffers), process_used}
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SCHEMA = "kvgui-gpu-check/1"
STEPS = ("env", "build", "models", "gpus", "cpu_kernels", "dryrun", "real_load", "fit_params")
STATUSES = ("ok", "failed", "skipped", "timeout", "running", "partial")


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Report:
    """The results so far, written to ``path`` whenever a step ends."""

    def __init__(self, path: Path, *, dry: bool, budget_s: float) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "schema": SCHEMA, "started": now(), "finished": None, "dry": dry,
            "budget_s": budget_s, "kvgui": {}, "llama_cpp": {}, "steps": {},
        }
        self.write()

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(tmp, self.path)

    @contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        """Record a step: running while inside, then ok (or what the body set), its seconds
        and any exception's one line; written on entry and exit. The exception is kept in
        the report, not raised: the next step still runs."""
        entry: dict[str, Any] = {"status": "running", "seconds": None, "error": None}
        self.data["steps"][name] = entry
        self.write()
        t0 = time.monotonic()
        try:
            yield entry
            if entry["status"] == "running":
                entry["status"] = "ok"
        except Exception as exc:  # a step's failure is a result; the run goes on
            import logging
            import traceback

            logging.getLogger(__name__).exception("step %s failed", name)
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc()[-2000:]
        finally:
            entry["seconds"] = round(time.monotonic() - t0, 1)
            self.write()

    def skip(self, name: str, why: str) -> None:
        self.data["steps"][name] = {"status": "skipped", "seconds": 0.0, "error": why}
        self.write()

    def finish(self) -> None:
        self.data["finished"] = now()
        self.write()


class SchemaError(ValueError):
    """The file is not a CUDA check's results (or not this schema's)."""


def _need(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise SchemaError(f"{where}: missing {key!r}")
    if not isinstance(obj[key], kind):
        raise SchemaError(f"{where}.{key}: expected {kind}, got {type(obj[key]).__name__}")
    return obj[key]


def validate(data: Any) -> dict[str, Any]:
    """Check the parts fold reads; returns ``data``. Sections of steps that did not run may be
    missing; what is there must have its shape."""
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise SchemaError(f"not a {SCHEMA} file (schema = "
                          f"{data.get('schema') if isinstance(data, dict) else None!r})")
    _need(data, "started", str, "top")
    _need(data, "dry", bool, "top")
    steps = _need(data, "steps", dict, "top")
    for name, entry in steps.items():
        status = _need(entry, "status", str, f"steps.{name}")
        if status not in STATUSES:
            raise SchemaError(f"steps.{name}.status: {status!r}")
    for section in ("dryrun", "fit_params"):
        if section in data:
            for i, case in enumerate(_need(data[section], "cases", list, section)):
                where = f"{section}.cases[{i}]"
                _need(case, "id", str, where)
                _need(case, "settings", dict, where)
                if case.get("devices"):
                    for dev, parts in _need(case, "devices", dict, where).items():
                        for part in ("model", "context", "compute"):
                            _need(parts, part, dict, f"{where}.devices.{dev}")
    if "real_load" in data:
        for i, run in enumerate(_need(data["real_load"], "runs", list, "real_load")):
            _need(run, "id", str, f"real_load.runs[{i}]")
            _need(run, "phases", list, f"real_load.runs[{i}]")
    return data


def load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except ValueError as exc:
        raise SchemaError(f"{path}: not JSON ({exc})") from exc
    return validate(data)
