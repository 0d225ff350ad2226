#!/usr/bin/env bash
# The GPU checks of docs/benchmarks.md in one timed run, for a machine with a CUDA device:
#
#   scripts/gpu_check.sh [OUT] [STEP ...]     # logs and results under OUT (default outputs/gpu)
#
# Steps (all, in this order, unless named):
#   info       which GPU and which of chute's fast paths are active (`python -m chute.info`);
#   tests      the GPU tests (`pytest -m gpu`: 16-mixed training, the hook on the device in loader
#              threads and in the feeding thread of worker processes, the GPU decode route: nvJPEG,
#              the crop kernel against its reference, damaged files);
#   gpu_train  a ResNet-50 and a ResNet-18 trained through Lightning, fed by each loader in turn,
#              against the model alone (scripts/bench_gpu_train.py; GPU_TRAIN_ARGS adds arguments);
#   train      the default experiment, `python train.py seed=0` (its data-wait fraction);
#   scaling    the CPU route's loader alone at 1, 4, 8 and 15 workers (scripts/bench_scaling.py);
#   decode     nvJPEG's rate alone and beside training (scripts/bench_gpu_decode.py).
#
# Every step has a time limit and the script goes on after a failed one, so one call of a borrowed
# machine gives every answer it can. Without CUDA it runs the same steps on the CPU (a dry run).
# Set PYTHON to the interpreter (default python3) and BUDGET to the seconds the whole run may take.
# On the lent machine, `source .device/activate.sh` first (scripts/device_env.sh makes it).
set -u
export PYTHONUNBUFFERED=1
out=${1:-${OUT:-outputs/gpu}}
shift || true
steps=${*:-info tests gpu_train train scaling}
py=${PYTHON:-python3}
deadline=$(($(date +%s) + ${BUDGET:-540}))
mkdir -p "$out"
log="$out/gpu_check.log"
touch "$log"

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
    tr '\r' '\n' <"$out/$name.out" | grep -v -E '^\s*$|it/s\]|img/s\]|sample/s\]|Writing photos' >>"$log"
    rm -f "$out/$name.out"
    echo "== $name: rc=$rc in $(($(date +%s) - start)) s" | tee -a "$log"
}

device=cpu
"$py" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' && device=cuda
echo "device: $device; steps: $steps" | tee -a "$log"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$log"
nproc | sed 's/^/cpus: /' | tee -a "$log"

for name in $steps; do
    case $name in
    info) step info 60 "$py" -m chute.info ;;
    tests) step tests 200 "$py" -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider -W default -q -x ;;
    gpu_train)
        # shellcheck disable=SC2086
        step gpu_train 420 "$py" scripts/bench_gpu_train.py --out "$out" ${GPU_TRAIN_ARGS:-}
        grep -E "^ *resnet|model \|" "$log" | tail -n 24
        ;;
    train)
        dir="outputs/runs/gpu-check/seed0"
        step train 90 "$py" train.py seed=0 hydra.run.dir="$dir"
        [ -f "$dir/metrics.json" ] && cp "$dir/metrics.json" "$out/metrics_seed0.json"
        # the wait on the device's timeline (data_wait_fraction), the host's clock, the loader's part
        [ -f "$dir/metrics.json" ] && "$py" -c 'import json, sys; m = json.load(open(sys.argv[1]))
print("waits:", {k: m.get(k) for k in ("data_wait_fraction", "host_wait_fraction", "loader_wait_fraction")})' \
            "$dir/metrics.json" | tee -a "$log"
        grep -h -E "chute \||precision=auto|waiting|data_wait" "$log" | tail -n 3
        ;;
    scaling) step scaling 120 "$py" scripts/bench_scaling.py --root data/photos-4096 --images 4551 --workers 1 4 8 15 --epochs 2 --out "$out" ;;
    decode) step decode 100 "$py" scripts/bench_gpu_decode.py --root data/photos-4096 --images 4551 --out "$out" ;;
    *) echo "unknown step $name" | tee -a "$log" ;;
    esac
done
echo "== done; time left in the budget: $((deadline - $(date +%s))) s" | tee -a "$log"
