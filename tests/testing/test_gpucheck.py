"""The CUDA check's CPU-side parts (kvgui.testing.gpucheck): what travels, the comparison, the
JSON and its folding. The CUDA run itself needs a lent GPU (benchmarks/gpu_check.sh); here the
same code runs against the CPU build of the bundled llama.cpp, where kvgui is exact."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from kvgui.core.config.settings import FlashAttn, Settings
from kvgui.core.memory import reserve
from kvgui.core.memory.estimate import context_shape
from kvgui.core.memory.memo import ModelMemo
from kvgui.core.model.catalog import catalog_model
from kvgui.runtime.llama_log import BufferBytes
from kvgui.testing.gpucheck import compare, fold, matrix, report, source
from kvgui.testing.rpc import parse_result

MiB = 1 << 20


# --- what travels -----------------------------------------------------------------------------

@pytest.mark.parametrize(("rel", "out"), [
    ("models/ggml-vocab-llama.gguf", True), ("docs/build.md", True), ("tools/ui/x.js", True),
    ("ggml/src/ggml-vulkan/ggml-vulkan.cpp", True), ("convert_hf_to_gguf.py", True),
    ("gguf-py/gguf/constants.py", True), ("src/__pycache__/x.pyc", True),
    ("ggml/src/ggml-cuda/fattn.cu", False), ("ggml/src/ggml-cpu/ggml-cpu.c", False),
    ("tools/fit-params/fit-params.cpp", False), ("tools/mtmd/CMakeLists.txt", False),
    ("tools/cli-helper.txt", False),  # a prefix of "tools/cli" that is not that folder
    ("CMakeLists.txt", False),
])
def test_subset_leaves_out_what_no_build_step_reads(rel: str, out: bool) -> None:
    assert source.excluded(rel) is out


def _fake_llama(tmp: Path) -> Path:
    src = tmp / "llama.cpp"
    for rel in (*source.REQUIRED, "docs/big.md", "ggml/src/ggml-metal/x.m"):
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"// {rel}\n" * 50)
    return src


def test_the_subset_archive_is_reproducible_and_unpacks(tmp_path: Path) -> None:
    src = _fake_llama(tmp_path)
    a = source.pack_source(src, tmp_path / "a.tar.xz", preset=1)
    b = source.pack_source(src, tmp_path / "b.tar.xz", preset=1)
    assert a.sha256 == b.sha256 and a.files == len(source.REQUIRED)
    with tarfile.open(a.path) as tar:
        names = tar.getnames()
    assert "llama.cpp/docs/big.md" not in names and "llama.cpp/CMakeLists.txt" in names
    out = source.unpack_source(a.path, tmp_path / "unpacked")
    assert (out / "ggml/src/ggml-cuda/fattn.cu").read_text() == \
        (src / "ggml/src/ggml-cuda/fattn.cu").read_text()


def test_a_subset_missing_a_needed_file_is_refused(tmp_path: Path) -> None:
    src = _fake_llama(tmp_path)
    (src / "common/fit.cpp").unlink()
    with pytest.raises(FileNotFoundError, match=r"common/fit\.cpp"):
        source.pack_source(src, tmp_path / "x.tar.xz", preset=1)


def test_a_header_travels_and_expands_to_the_models_size(
        tmp_path: Path, sparse_model: Callable[[str], Path]) -> None:
    from kvgui.core.model.info import load_model

    model = sparse_model("LFM2-1.2B Q8_0")
    meta = source.write_header(model, tmp_path / "m.header")
    assert meta["header_bytes"] == (tmp_path / "m.header").stat().st_size < 8 * MiB
    back = source.expand_header(tmp_path / "m.header", int(meta["file_bytes"]),  # type: ignore[call-overload]
                                tmp_path / "m.gguf")
    assert back.stat().st_size == model.stat().st_size
    assert load_model(back).tensors == load_model(model).tensors


# --- the matrix ---------------------------------------------------------------------------------

def test_the_matrix_runs_what_matters_first() -> None:
    n_layers = {m: 40 for m in matrix.MODELS}
    cases = matrix.cases(n_layers=n_layers)
    assert len(cases) == len(matrix.MODELS) * len(matrix.CONTEXTS) * len(matrix.CACHES) * 2
    first = cases[: len(matrix.MODELS) * len(matrix.CACHES)]
    assert {c.settings.n_ctx for c in first} == {32768} and {c.offload for c in first} == {"all"}
    assert {c.model for c in first} == set(matrix.MODELS)
    partial = [c for c in cases if c.offload == matrix.PARTIAL]
    assert {c.settings.n_gpu_layers for c in partial} == {20}
    assert len({c.id for c in cases}) == len(cases)
    # a quantized V cache only with flash attention (llama.cpp refuses it otherwise)
    assert all(c.settings.flash_attn is FlashAttn.ON for c in cases if c.settings.type_v != "f16")


# --- the comparison ---------------------------------------------------------------------------

def test_llama_parts_keep_gpus_apart_and_the_host_together() -> None:
    exact = [BufferBytes("CUDA0", False, "CUDA0", 100, 20, 7),
             BufferBytes("CUDA_Host", True, "CUDA0", 5, 0, 3),
             BufferBytes("AMX", False, "CPU", 40, 0, 0),  # not "host", but host memory
             BufferBytes("CPU", True, "CPU", 1, 2, 0)]
    parts = compare.llama_parts(exact)
    assert parts == {"CUDA0": compare.Parts(100, 20, 7), "Host": compare.Parts(46, 2, 3)}
    ours = {"CUDA0": compare.Parts(100, 20, 9), "Host": compare.Parts(46, 2, 3)}
    rows = compare.exact_rows(parts, ours)
    assert list(rows) == ["CUDA0", "Host"]
    assert rows["CUDA0"]["compute"] == {"llama": 7, "kvgui": 9, "diff": 2}
    assert not compare.all_equal(rows)
    summary = compare.summarize([{"devices": rows, "equal": False}], exact=True)
    assert summary["parts"]["GPU.compute"] == {"equal": 0, "of": 1, "max_abs_diff": 2}
    assert summary["parts"]["Host.model"]["equal"] == 1


# llama-fit-params' lines on a CUDA build, as common/fit.cpp and llama-context.cpp print them
_CUDA_LOG = """\
0.00.010 I llama_model_loader: loaded meta data with 30 key-value pairs
0.00.274 D load_tensors: offloaded 20/33 layers to GPU
0.00.275 D llama_context:  CUDA_Host  output buffer size =     0.49 MiB
0.00.276 D llama_kv_cache: size = 2560.00 MiB ( 32768 cells,  20 layers,  1/1 seqs), \
K (f16): 1280.00 MiB, V (f16): 1280.00 MiB
0.00.306 D sched_reserve:      CUDA0 compute buffer size =   300.25 MiB
0.00.306 D sched_reserve:  CUDA_Host compute buffer size =    72.01 MiB
0.00.306 D sched_reserve: graph: nodes = 1030, splits = 3 (with bs=512), 3 (with bs=1)
0.00.307 I common_memory_breakdown_print: | memory breakdown [MiB] | total   free    self   \
model   context   compute    unaccounted |
0.00.307 I common_memory_breakdown_print: |   - CUDA0 (H200)       | 143166 = 142400 + \
(5432 =  2851 +    2560 +     300) +        -4666 |
0.00.307 I common_memory_breakdown_print: |   - Host               |                 \
2129 =  1769 +       288 +      72                |
0.00.307 I common_memory_breakdown_print: |   - AMX                |                 \
100 =   100 +       0 +       0                |
"""


def test_fit_params_rows_of_a_cuda_build() -> None:
    r = parse_result(["-m", "x"], "CUDA0 2851 2560 300\nHost 1869 288 72\n", _CUDA_LOG,
                     fit=False)
    assert [d.name for d in r.devices] == ["CUDA0"]
    ours = {"CUDA0": compare.Parts(2851 * MiB + 5, 2560 * MiB, int(300.25 * MiB)),
            "Host": compare.Parts(1869 * MiB + MiB // 2, 288 * MiB, int(72.01 * MiB) + 1)}
    rows = compare.fit_rows(r, ours)
    assert rows["CUDA0"]["device_mib"] == {"total": 143166, "free": 142400, "unaccounted": -4666}
    assert rows["CUDA0"]["compute"]["llama_mib"] == 300.25
    assert rows["Host"]["model"]["llama_mib"] == 1769 + 100  # the AMX row is host memory too
    assert rows["Host"]["compute"]["llama_mib"] == 72.01  # CUDA_Host: pinned host memory
    assert compare.fit_equal(rows)
    assert compare.llama_graph(_CUDA_LOG) == ("1030", 3)
    ours["CUDA0"] = compare.Parts(2852 * MiB, 2560 * MiB, int(300.25 * MiB))
    assert not compare.fit_rows(r, ours)["CUDA0"]["model"]["equal"]


@pytest.mark.parametrize("ngl", [-1, 16])
def test_cuda_layout_with_hints_is_the_estimates_own(ngl: int) -> None:
    """The check's CUDA layout mirrors the estimate's (compute.Offload.layout): with llama.cpp's
    backend hints it gives the estimate's compute figures, so a no_alloc comparison (hints off)
    differs from the estimate only where the hints do."""
    model = catalog_model("Llama-3.2-3B-Instruct Q4_K_M")
    s = Settings(n_ctx=8192, n_gpu_layers=ngl, flash_attn=FlashAttn.ON, type_k="q8_0",
                 type_v="q8_0", mmap=False)
    memo = ModelMemo(model)
    est = compare.estimate_for(model, s, ["CUDA0"], None, memo)
    layout = compare.cuda_layout(model, s, 1, pins=True)
    kinds = reserve.cache_kinds(model, s.type_k, s.type_v)
    peaks = reserve.peaks(model, context_shape(model, s), True, kinds, layout, memo)
    assert peaks == [d.compute for d in est.devices]
    got = compare.no_alloc_compute(model, s, True, 1, memo)
    assert got is not None
    no_alloc, splits = got
    assert len(no_alloc) == 2 and no_alloc[0] > 0 and splits is not None and splits >= 1
    assert compare.no_alloc_compute(model, s, True, 0, memo) is None


# --- the JSON and its folding -----------------------------------------------------------------

def _result(tmp_path: Path) -> dict[str, object]:
    r = report.Report(tmp_path / "out" / "gpu_check.json", dry=False, budget_s=500)
    with r.step("env"):
        r["env"] = {"nvidia_smi": {"name": "NVIDIA H200", "driver": "580.159.04",
                                   "memory_total_mib": 143771, "compute_cap": "9.0"},
                    "nvcc": "Build cuda_13.0"}
    with r.step("dryrun"):
        cell = {"llama": 10, "kvgui": 10, "diff": 0}
        cases = [{"id": f"case {i}", "model": "M", "arch": "llama", "settings": {}, "equal": i,
                  "devices": {"CUDA0": {"model": cell, "context": cell,
                                        "compute": {"llama": 10, "kvgui": 10 + 128 * (1 - i),
                                                    "diff": 128 * (1 - i)}},
                              "Host": {"model": cell, "context": cell, "compute": cell}},
                  "splits": [2, 2]} for i in (0, 1)]
        r["dryrun"] = {"cases": cases, "summary": compare.summarize(cases, exact=True)}
    with r.step("real_load"):
        runs = []
        for i, extra in enumerate((300 * MiB, 500 * MiB + 7)):
            used0, llama = 600 * MiB, 2000 * MiB
            phases = [{"phase": "context", "breakdown": [
                {"name": "CUDA0", "is_host": False, "device": "CUDA0", "model": 1500 * MiB,
                 "context": 400 * MiB, "compute": 100 * MiB}],
                "cuda": {"used": used0 + llama + extra // 2}},
                {"phase": "decode", "cuda": {"used": used0 + llama + extra},
                 "nvml": {"process_used": llama + extra}}]
            run = {"id": f"run {i}", "phases": phases, "nvml_before": {"used": used0}}
            from kvgui.testing.gpucheck.steps import overhead

            run["overhead"] = overhead(run)
            runs.append(run)
        r["real_load"] = {"runs": runs}
    with r.step("fit_params"):
        raise RuntimeError("llama-fit-params vanished")
    r.finish()
    return json.loads(r.path.read_text())


def test_the_report_is_written_after_every_step_and_validates(tmp_path: Path) -> None:
    data = _result(tmp_path)
    assert report.validate(data) is data
    assert data["steps"]["fit_params"]["status"] == "failed"
    assert "vanished" in data["steps"]["fit_params"]["error"]
    assert data["finished"] is not None
    with pytest.raises(report.SchemaError, match="schema"):
        report.validate({**data, "schema": "other/1"})
    broken = json.loads(json.dumps(data))
    del broken["dryrun"]["cases"][0]["devices"]["CUDA0"]["compute"]
    with pytest.raises(report.SchemaError, match="compute"):
        report.validate(broken)


def test_fold_gives_the_readme_row_and_the_overhead(tmp_path: Path) -> None:
    data = _result(tmp_path)
    runs = data["real_load"]["runs"]  # type: ignore[index]
    assert runs[0]["overhead"]["decode"] == 300 * MiB
    assert runs[0]["overhead"]["context"] == 150 * MiB
    row = fold.readme_row(data)
    assert "NVIDIA H200" in row and "580.159.04" in row
    assert "| **2/2** | **2/2** | 1/2 |" in row  # weights, KV exact; compute in 1 of 2
    assert "500 MiB max, 400 median" in row
    literal = fold.overhead_literal(data)
    assert literal is not None and "bytes=501 << 20" in literal and "runs=2" in literal
    text = fold.render(data)
    assert "- case 0: CUDA0.compute +128 B" in text and "case 1" not in text.split(
        "## Differences")[1].split("##")[0]
    assert any("fit_params failed" in line for line in fold.summary_lines(data))


# --- against the CPU build here -----------------------------------------------------------------

@pytest.mark.llama
@pytest.mark.slow
def test_the_check_matches_a_cpu_build(sparse_model: Callable[[str], Path],
                                       llama_tools: object) -> None:
    """kvgui's dry run and llama-fit-params (CPU build) over two settings, compared: every part
    equal, as the suite shows elsewhere: the comparison itself is sound."""
    from kvgui.runtime.llama_backend import probe_host_cpu
    from kvgui.testing.gpucheck.steps import Deadline, dryrun_matrix, fit_matrix

    label = "Llama-3.2-3B-Instruct Q4_K_M"
    files = {label: sparse_model(label)}
    cases = [matrix.Case(label, Settings(n_ctx=4096, flash_attn=fa, type_k=t, type_v=t,
                                         mmap=False), "all")
             for t, fa in (("f16", FlashAttn.OFF), ("q8_0", FlashAttn.ON))]
    host = probe_host_cpu()
    rows = dryrun_matrix(cases, files, host, Deadline(120), keep=0)
    assert [r["error"] for r in rows] == [None, None]
    assert all(r["equal"] for r in rows), [fold.differences({"dryrun": {"cases": rows}})]
    fit = fit_matrix(llama_tools.fit_params, cases, files, host, Deadline(120),  # type: ignore[attr-defined]
                     parallel=2, env=None)
    assert all(r["equal"] for r in fit), fit


@pytest.mark.llama
def test_a_real_load_reports_each_phase_and_equals_the_estimate(tmp_path: Path) -> None:
    """The real-load child on the CPU build: every phase, llama.cpp's breakdown after a
    prompt filling the context, equal to the estimate (no NVML, no CUDA here: no figures)."""
    from kvgui.core.model.info import load_model
    from kvgui.runtime.llama_backend import probe_host_cpu
    from kvgui.testing.gpucheck import realload
    from kvgui.testing.tiny_model import write_tiny_model

    path = write_tiny_model(tmp_path / "tiny.gguf")
    s = Settings(n_ctx=512, n_batch=128, n_ubatch=64, flash_attn=FlashAttn.ON)
    s = s.replace(repack=False)  # -nr: see kvgui.runtime.cpu_kernels
    request = realload.request_for(path, s, decode_tokens=3)
    got = realload.run(request, timeout=60)
    assert got["error"] is None, got["log_tail"]
    phases = {p["phase"]: p for p in got["phases"]}
    assert list(phases) == ["init", "model", "context", "prompt", "decode", "done"]
    assert phases["prompt"]["tokens"] == 512 - 3 and phases["decode"]["tokens"] == 3
    assert phases["init"]["cuda"] is None  # no libcudart in a CPU build
    theirs = compare.llama_parts([BufferBytes(**b) for b in phases["decode"]["breakdown"]])
    est = compare.estimate_for(load_model(path), s, [], probe_host_cpu())
    assert compare.all_equal(compare.exact_rows(theirs, compare.kvgui_parts(est)))
