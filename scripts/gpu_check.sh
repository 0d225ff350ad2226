#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md in one timed run, for a machine with a CUDA device:
#
#   scripts/gpu_check.sh [OUT]        # logs and results under OUT (default outputs/gpu)
#
# 1. which GPU and which of chute's fast paths are active (`python -m chute.info`);
# 2. the default experiment, `python train.py` (precision auto -> 16-mixed on CUDA; the loader's
#    thread copies each batch to the device on a side stream), seed 0, then seeds 1 and 2 at the end;
# 3. the image benchmark with the model on the GPU: chute vs the torchvision baseline, side by side,
#    images/s after the copy and the batch hook (scripts/bench_images.py --device cuda);
# 4. the GPU tests (`pytest -m gpu`: a 16-mixed run with pinned memory, the hook on the device,
#    the threaded loader's side-stream copies through reused pinned buffers, the hook in loader threads);
# 5. where the default run's wait goes, per loader setting (scripts/wait_breakdown.py, Lightning's profiler).
#
# Every step has a time limit and the script goes on after a failed one, so one call of a borrowed
# machine gives every answer it can. Without CUDA it runs the same steps on the CPU (a dry run).
# Set PYTHON to the interpreter (default python3), BUDGET to the seconds the whole run may take and
# BENCH_WORKERS to the worker counts of step 3 (default "0 4 8").
set -u
export PYTHONUNBUFFERED=1
out=${1:-${OUT:-outputs/gpu}}
py=${PYTHON:-python3}
deadline=$(($(date +%s) + ${BUDGET:-540}))
mkdir -p "$out"
log="$out/gpu_check.log"
: >"$log"

# step NAME LIMIT CMD...: run CMD for at most LIMIT seconds (less if the budget is nearly spent).
step() {
    local name=$1 limit=$2 left start rc
    shift 2
    left=$((deadline - $(date +%s)))
    ((left < limit)) && limit=$left
    if ((limit < 10)); then
        echo "== $name: skipped, the time budget is spent" | tee -a "$log"
        return
    fi
    echo "== $name (limit ${limit} s): $*" | tee -a "$log"
    start=$(date +%s)
    timeout "$limit" "$@" >"$out/$name.out" 2>&1
    rc=$?
    # progress bars redraw with carriage returns: keep each bar's last state
    tr '\r' '\n' <"$out/$name.out" | grep -v -E '^\s*$|it/s\]|img/s\]|sample/s\]' >>"$log"
    rm -f "$out/$name.out"
    echo "== $name: rc=$rc in $(($(date +%s) - start)) s" | tee -a "$log"
}

device=cpu
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' && device=cuda
echo "device: $device" | tee -a "$log"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
nproc | sed 's/^/cpus: /' | tee -a "$log"

step info 60 "$py" -m chute.info
run_train() {  # the default experiment, data already written; metrics.json copied out
    local seed=$1 dir="outputs/runs/gpu-check/seed$1"
    step "train_seed$seed" 120 "$py" train.py seed="$seed" hydra.run.dir="$dir" &&
        [ -f "$dir/metrics.json" ] && cp "$dir/metrics.json" "$out/metrics_seed$seed.json"
    grep -h -E "chute \||precision=auto|waiting" "$log" | tail -n 3
}
run_train 0
step bench_images 300 "$py" scripts/bench_images.py --device "$device" --workers ${BENCH_WORKERS:-0 4 8} --epochs 2 --out "$out"
step pytest_gpu 120 "$py" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -W default -q
step wait_breakdown 120 "$py" scripts/wait_breakdown.py --variants default inline threads2
run_train 1
run_train 2
echo "== done; time left in the budget: $((deadline - $(date +%s))) s" | tee -a "$log"
