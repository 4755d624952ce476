#!/usr/bin/env bash
# The GPU checks and tables of docs/performance.md, in one run (a lent GPU's time is short).
#
#   OUT=gpu_out benchmarks/gpu_check.sh
#
# Needs: the package importable (installed, or PYTHONPATH=src plus its dependencies), a CUDA
# GPU, and for the precision table and the CUDA tests a few MSRS test pairs under
# $UPFUSION_SHARED/data/msrs/test; for the training check, folder pairs in $TRAIN_DATA
# (one "VI_DIR IR_DIR" pair per line) and the prompt embedding in $TEXT_EMBEDDING (.npy).
# Writes log.txt, the bench JSON files and the training log to $OUT.
set -u
PY=${PYTHON:-python3}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
log() { echo "=== $* ($(date +%T))" | tee -a "$OUT/log.txt"; }
run() { "$@" 2>&1 | tee -a "$OUT/log.txt"; }

log machine
run nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
run "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

log "CUDA tests"
run timeout 180 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_speed_equivalence.py tests/test_fuse.py

log "bf16 / fp16 against fp32, default weights, real 640x480 pairs"
run timeout 120 "$PY" benchmarks/bench_inference.py precision --count 4

log "fp32: plain (reference arithmetic) and fast"
run timeout 400 "$PY" -m upfusion bench --device cuda --preset paper default --size 640x480 \
    --arithmetic plain fast --precision fp32 --runs 10 --warmup 2 --json "$OUT/bench_fp32.json"
log "bf16 / fp16, batch 1 and 8"
run timeout 400 "$PY" -m upfusion bench --device cuda --preset paper default --size 640x480 \
    --precision bf16 fp16 --batch 1 8 --runs 10 --warmup 2 --json "$OUT/bench_half.json"
log "bf16, plain arithmetic (the profile of 2026-11-26 had the fast path's GPU kernels slower)"
run timeout 200 "$PY" -m upfusion bench --device cuda --preset paper default --size 640x480 \
    --precision bf16 --arithmetic plain --runs 10 --warmup 2 --json "$OUT/bench_half_plain.json"
log "torch.compile of each Restormer block, bf16, plain arithmetic (whole-model compiles outlasted 145 s)"
run timeout 400 "$PY" -m upfusion bench --device cuda --preset paper default --size 640x480 --precision bf16 \
    --arithmetic plain --batch 1 8 --compile blocks --runs 10 --warmup 3 --timeout 180 --json "$OUT/bench_compile.json"
log "large images, bf16"
run timeout 300 "$PY" -m upfusion bench --device cuda --preset paper default --size 1920x1080 3840x2160 \
    --precision bf16 --runs 5 --warmup 1 --timeout 120 --json "$OUT/bench_large.json"

log "where the GPU time goes, paper preset, bf16"
run timeout 120 "$PY" benchmarks/bench_inference.py profile --device cuda --precision bf16 --presets paper --top 10

if [ -n "${TRAIN_DATA:-}" ]; then
    log "training on the GPU (bf16 autocast), default preset"
    data=()
    while read -r vi ir; do data+=(--data "$vi" "$ir"); done <<<"$TRAIN_DATA"
    run timeout "${TRAIN_SECONDS:-150}" "$PY" -m upfusion train "${data[@]}" --model default \
        --text-embedding "$TEXT_EMBEDDING" --crop 192 --batch-size 16 --steps "${TRAIN_STEPS:-300}" --lr 5e-4 \
        --warmup-steps 20 --grad-clip 1 --device cuda --amp auto --workers 4 --log-every 10 --val-holdout 3 \
        --val-every 100 --val-max-pairs 2 --checkpoint-every 100 --out /tmp/gpu_train --no-progress
    cp /tmp/gpu_train/log.csv "$OUT/train_log.csv" 2>/dev/null
fi

log done
