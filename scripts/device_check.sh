#!/usr/bin/env bash
# The GPU checks in one run of about ten minutes: install wheels from .whl/, record the hardware, run
# `make bench`'s script at CUDA sizes, then time the full sweep for what is left of the time. Everything it
# reports lands in $OUT: env.txt, bench.log, <gpu>.csv, sweep.log, results_full.tgz (results/full and
# every run's summary.json, whatever the sweep finished).
#
# Needs: a CUDA GPU with torch installed; wheels of the other dependencies (gymnasium, stable-baselines3,
# hydra-core, omegaconf, wandb and theirs) in .whl/ (ignored by git) where the machine cannot reach a
# package index; OUT set to a folder for the reports.
#     bash scripts/device_check.sh
# A sweep cut short by SWEEP_S is not lost while its run folders stay: running again at once with
# BENCH_S=0 SKIP_INSTALL= SWEEP_S=560 resumes it (finished runs are skipped). A dry run on a CPU:
#     PYTHON=.venv/bin/python PRESET=debug SKIP_INSTALL=1 OUT=/tmp/dc bash scripts/device_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a folder for the reports}
PYTHON=${PYTHON:-python3}
PRESET=${PRESET:-full}
LANES=${LANES:-4}           # units at once (the Makefile's CUDA default)
BENCH_S=${BENCH_S:-210}     # seconds allowed for the bench (0: no bench)
SWEEP_S=${SWEEP_S:-330}     # seconds allowed for the sweep (the rest of about ten minutes, minus set-up)
mkdir -p "$OUT"
t0=$(date +%s)

if [ -z "${SKIP_INSTALL:-}" ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || { echo "wheel install failed" | tee "$OUT/env.txt"; exit 1; }
    export PYTHONPATH=/tmp/site:$PWD/src
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true

{
    date -u +%FT%TZ
    git rev-parse --short HEAD 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    nproc
    "$PYTHON" -c "import torch, hydra, gymnasium, stable_baselines3, wandb, instrumentality; \
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'); \
print('hydra', hydra.__version__, 'gymnasium', gymnasium.__version__, 'sb3', stable_baselines3.__version__, \
'wandb', wandb.__version__)"
} 2>&1 | tee "$OUT/env.txt"
echo "set-up: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/env.txt"

if [ "$BENCH_S" != 0 ]; then
    t1=$(date +%s)
    timeout "$BENCH_S" "$PYTHON" scripts/bench.py --out "$OUT" 2>&1 | grep -v Warning | tee "$OUT/bench.log"
    echo "bench: $(( $(date +%s) - t1 )) s (rc ${PIPESTATUS[0]})" | tee -a "$OUT/bench.log"
fi

t2=$(date +%s)
timeout "$SWEEP_S" "$PYTHON" scripts/sweep.py --preset "$PRESET" --launcher basic --lanes "$LANES" 2>&1 \
    | tee "$OUT/sweep.log"
echo "sweep: $(( $(date +%s) - t2 )) s (rc ${PIPESTATUS[0]}; 124 = cut at SWEEP_S=$SWEEP_S s)" | tee -a "$OUT/sweep.log"
tar czf "$OUT/results_full.tgz" "results/$PRESET" $(ls runs/"$PRESET"/*/*/summary.json 2>/dev/null) 2>/dev/null
echo "total: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/sweep.log"
