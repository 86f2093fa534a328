#!/usr/bin/env bash
# The CUDA check in one command (issue 17): build the bundled llama.cpp with CUDA from the
# carried source subset, then compare kvgui's CUDA figures with what it allocates.
#
# On the lent NVIDIA machine (after `python benchmarks/gpu_check.py prepare` here):
#   run: command "bash benchmarks/gpu_check.sh", carry [".gpucheck"], timeout_s 560
# Here, the rehearsal with the CUDA parts skipped:
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh
#
# Writes $OUT/gpu_check.json (rewritten after every step, so a run cut short still brings
# its finished steps back), $OUT/run.log and $OUT/build.log. GPU_CHECK_BUDGET_S (default 500)
# bounds the whole run; the outer timeout is a safety net 20 s later.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY="${GPU_CHECK_DRY:-0}"
BUDGET="${GPU_CHECK_BUDGET_S:-500}"
OUT="${OUT:-$ROOT/.gpucheck/out}"
mkdir -p "$OUT"
export GPU_CHECK_WORK="${GPU_CHECK_WORK:-/tmp/kvgui-gpucheck}"
export KVGUI_CACHE_DIR="${KVGUI_CACHE_DIR:-$GPU_CHECK_WORK/cache}"
export PYTHONUNBUFFERED=1
ARGS=(run --out "$OUT/gpu_check.json" --budget "$BUDGET")
if [ "$DRY" = 1 ]; then
    PY="${PYTHON:-$ROOT/.venv/bin/python}"
    ARGS+=(--dry)
    [ "${GPU_CHECK_DRY_BUILD:-0}" = 1 ] && ARGS+=(--build-dry)
    unset KVGUI_CACHE_DIR  # the tools build and the real model live in the user cache here
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
    PY="${PYTHON:-python3}"
    if [ ! -f .gpucheck/manifest.json ]; then
        echo "no .gpucheck/manifest.json: run 'python benchmarks/gpu_check.py prepare' and carry .gpucheck" >&2
        exit 2
    fi
    export PYTHONPATH="$ROOT/.gpucheck/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
fi
set -o pipefail
timeout -k 5 $((BUDGET + 20)) "$PY" benchmarks/gpu_check.py "${ARGS[@]}" 2>&1 | tee "$OUT/run.log"
rc=$?
[ -f "$GPU_CHECK_WORK/build.log" ] && tail -c 1000000 "$GPU_CHECK_WORK/build.log" > "$OUT/build.log"
echo "gpu_check: exit $rc; results in $OUT/gpu_check.json"
exit $rc
