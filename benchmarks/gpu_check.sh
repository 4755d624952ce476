#!/usr/bin/env bash
# The GPU checks and tables of docs/performance.md, in one run (a lent GPU's time is short).
#
#   OUT=gpu_out benchmarks/gpu_check.sh
#
# Needs: the package importable (installed, or PYTHONPATH=src plus its dependencies: on the
# lent machines, `make devcarry` here, then carry .devcarry and run with
# PYTHONPATH=$PWD/src:$PWD/.devcarry/site), a CUDA GPU, and for the precision table and the CUDA
# tests a few MSRS test pairs under $UPFUSION_SHARED/data/msrs/test (`make devcarry` copies
# eight to .devcarry/shared: UPFUSION_SHARED=$PWD/.devcarry/shared); for training, the data its
# config names.
# Writes log.txt, the bench JSON files and the training log and weights to $OUT.
#
# SECTIONS picks parts (a lease is 15 minutes): any of "tests precision bench compile cudagraphs
# large profile profile-compiled compile-fast fused fused-compiled fused-ncu fused-tiles compile-model
# train"; by default all but the last eight. The training section runs `upfusion train --config
# $TRAIN_CONFIG` for at most $TRAIN_SECONDS (it saves its state when stopped) and copies the
# weights it ended with and its log to $OUT/train.
set -u
PY=${PYTHON:-python3}
OUT=${OUT:-gpu_out}
SECTIONS=${SECTIONS:-tests precision bench compile cudagraphs large profile}
mkdir -p "$OUT"
log() { echo "=== $* ($(date +%T))" | tee -a "$OUT/log.txt"; }
run() { "$@" 2>&1 | tee -a "$OUT/log.txt"; }
section() { [[ " $SECTIONS " == *" $1 "* ]]; }

log machine
run nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
run "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

if section tests; then
    log "CUDA tests"
    run timeout 180 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_speed_equivalence.py tests/test_fuse.py
fi

if section precision; then
    log "bf16 / fp16 against fp32, default weights, real 640x480 pairs"
    run timeout 180 "$PY" benchmarks/bench_inference.py precision --count 8

    log "fp32: plain (reference arithmetic) and fast"
    run timeout 400 "$PY" -m upfusion bench --device cuda --preset paper default --size 640x480 \
        --arithmetic plain fast --precision fp32 --runs 10 --warmup 2 --json "$OUT/bench_fp32.json"

    log "bf16 / fp16, batch 1 and 8"
    run timeout 400 "$PY" -m upfusion bench --device cuda --preset paper default --size 640x480 \
        --precision bf16 fp16 --batch 1 8 --runs 10 --warmup 2 --json "$OUT/bench_half.json"

    log "bf16, plain arithmetic (the profile of 2026-11-26 had the fast path's GPU kernels slower)"
    run timeout 200 "$PY" -m upfusion bench --device cuda --preset paper default --size 640x480 \
        --precision bf16 --arithmetic plain --runs 10 --warmup 2 --json "$OUT/bench_half_plain.json"
fi

if section train; then
    log "training on the GPU: ${TRAIN_CONFIG:?TRAIN_CONFIG names the config} ${TRAIN_ARGS:-}"
    # shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
    run timeout -s TERM "${TRAIN_SECONDS:-300}" "$PY" -m upfusion train --config "$TRAIN_CONFIG" \
        --out /tmp/gpu_train --no-progress ${TRAIN_ARGS:-}
    mkdir -p "$OUT/train"
    cp /tmp/gpu_train/log.csv "$OUT/train/"
    if [ -f /tmp/gpu_train/final.json ]; then
        cp /tmp/gpu_train/final.json /tmp/gpu_train/final.safetensors "$OUT/train/"
    else  # stopped by the time limit: the checkpoint it saved on the way out
        last=$(ls /tmp/gpu_train/checkpoints/step_*.json | tail -1)
        cp "$last" "${last%.json}.safetensors" "$OUT/train/"
    fi
fi

if section compile; then
    # Regional compilation: whole-model compiles outlasted 145 s twice. Eager first, same machine.
    log "paper preset, bf16, plain arithmetic, batch 8: eager, then each Restormer block compiled"
    run timeout 60 "$PY" -m upfusion bench --device cuda --preset paper --size 640x480 --precision bf16 \
        --arithmetic plain --batch 8 --runs 10 --warmup 2 --json "$OUT/bench_eager.json"
    for batch in 8 1; do  # one call each, so that a cut-off second call keeps the first's JSON
        run "$PY" -m upfusion bench --device cuda --preset paper --size 640x480 --precision bf16 \
            --arithmetic plain --batch "$batch" --compile blocks --runs 10 --warmup 3 \
            --timeout "${COMPILE_SECONDS:-200}" --json "$OUT/bench_compile_b$batch.json"
    done
fi

if section cudagraphs; then
    # the eager network (the fused kernels on Hopper GPUs) replayed from CUDA graphs
    # (upfusion.cuda_graphs): one launch a call instead of about 3,000 from Python; batch 1 is where
    # launching should weigh most (105 ms a pair on an H100 against 46 in batches of 8)
    log "CUDA graphs: their CUDA tests; fused kernels, paper preset, bf16, batch 1 and 8, without and with"
    run timeout 120 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_cuda_graphs.py
    run timeout 150 "$PY" -m upfusion bench --device cuda --preset paper --size 640x480 --precision bf16 --arithmetic fused \
        --batch 1 8 --runs 10 --warmup 2 --timeout 60 --json "$OUT/bench_eager.json"
    run timeout 150 "$PY" -m upfusion bench --device cuda --preset paper --size 640x480 --precision bf16 --arithmetic fused \
        --batch 1 8 --cuda-graphs --runs 10 --warmup 2 --timeout 60 --json "$OUT/bench_cudagraphs.json"
fi

if section large; then
    log "large images, bf16"
    run timeout 300 "$PY" -m upfusion bench --device cuda --preset paper default --size 1920x1080 3840x2160 \
        --precision bf16 --runs 5 --warmup 1 --timeout 120 --json "$OUT/bench_large.json"
fi

if section profile; then
    log "where the GPU time goes, paper preset, bf16"
    run timeout 120 "$PY" benchmarks/bench_inference.py profile --device cuda --precision bf16 --presets paper --top 10
fi

if section profile-compiled; then
    # where the 75 ms a pair of the compiled blocks (shifted depth-wise products) go: kernels and modules
    log "profile: paper preset, bf16, batch 8, plain arithmetic, blocks compiled, by module"
    run timeout "${COMPILE_SECONDS:-200}" "$PY" benchmarks/bench_inference.py profile --device cuda --precision bf16 \
        --presets paper --batch 8 --arithmetic plain --compile blocks --by-module --top 24
fi

if section compile-fast; then
    # the inference kernels compiled (Gram-matrix attention, folded project_out, shifted depth-wise
    # products in the bands) against the specification's arithmetic compiled, same call
    log "compiled blocks, fast vs plain arithmetic, paper preset, bf16, batch 8"
    run "$PY" -m upfusion bench --device cuda --preset paper --size 640x480 --precision bf16 --arithmetic fast plain \
        --batch 8 --compile blocks --runs 10 --warmup 3 --timeout "${COMPILE_SECONDS:-200}" \
        --json "$OUT/bench_compile_fast.json"
fi

if section fused; then
    # the Triton kernels of upfusion.model.fused_kernels (each block's MDTA pass and its GDFN as
    # one kernel each): their CUDA tests, the issue's case (paper preset, batch 8) fast vs fused
    # and where its GPU time goes, stage by stage with other tiles and grids, then other cases
    log "fused Triton kernels: CUDA tests"
    run timeout 150 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_fused_kernels.py
    log "fused vs fast arithmetic, eager, paper preset, bf16, batch 8"
    run timeout 150 "$PY" -m upfusion bench --device cuda --preset paper --size 640x480 --precision bf16 \
        --arithmetic fast fused --batch 8 --runs 10 --warmup 2 --timeout 100 --json "$OUT/bench_fused_paper8.json"
    log "profile: paper preset, bf16, batch 8, fused, eager, by module"
    run timeout 100 "$PY" benchmarks/bench_inference.py profile --device cuda --precision bf16 \
        --presets paper --batch 8 --arithmetic fused --by-module --top 16
    log "stage by stage: fused kernels (tiles, warps, grids) vs inference kernels, bf16, batch 8"
    run timeout 200 "$PY" benchmarks/bench_fused_stages.py --batch 8 --precision bf16
    log "fused vs fast arithmetic, eager, paper batch 1, default weights batch 1 and 8, bf16"
    run timeout 100 "$PY" -m upfusion bench --device cuda --preset paper --size 640x480 --precision bf16 \
        --arithmetic fast fused --batch 1 --runs 10 --warmup 2 --timeout 60 --json "$OUT/bench_fused_paper1.json"
    run timeout 100 "$PY" -m upfusion bench --device cuda --preset default --size 640x480 --precision bf16 \
        --arithmetic fast fused --batch 1 8 --runs 10 --warmup 2 --timeout 60 --json "$OUT/bench_fused_default.json"
fi

if section fused-compiled; then
    # the rest of each Restormer block compiled around the fused kernels (a graph break at each
    # kernel), and the 192- and 384-channel blocks, which run the inference kernels, compiled whole
    # (the H200, 2026-11-28: 3.0 ms a block of batch 8 eagerly, against 0.2 ms of arithmetic).
    # Timed on an H200 (2026-11-28): 535 ms a batch compiled against 371 eager
    log "fused kernels, eager and with the blocks compiled, paper, bf16, batch 8"
    run timeout 60 "$PY" -m upfusion bench --device cuda --preset paper --size 640x480 --precision bf16 --arithmetic fused \
        --batch 8 --runs 10 --warmup 2 --timeout 50 --json "$OUT/bench_fused_eager.json"
    run "$PY" -m upfusion bench --device cuda --preset paper --size 640x480 --precision bf16 --arithmetic fused \
        --batch 8 --compile blocks --runs 10 --warmup 3 --timeout "${COMPILE_SECONDS:-280}" \
        --json "$OUT/bench_fused_compiled.json"
fi

if section fused-ncu; then
    # what bounds the fused kernels (55-210 GB/s of their stages' own traffic on the fourth lease):
    # Nsight Compute on the kernels at 96 channels, full resolution, batch 8 (bench_fused_stages
    # launches A A G G A G A G per shape, attention then GDFN; the 320x240 shape's 8 come first),
    # then each kernel's SASS with its warp-stall samples, to find the hot instructions
    NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)
    log "Nsight Compute: the fused kernels at 96 channels, 640x480 ($NCU)"
    run timeout 240 "$NCU" --target-processes all -k regex:"gdfn_residual_kernel|attention_statistics_kernel" \
        --launch-skip 8 --launch-count 4 --section SpeedOfLight --section ComputeWorkloadAnalysis \
        --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy --section LaunchStats \
        --section SchedulerStats --section InstructionStats --section SourceCounters --export "$OUT/fused96" \
        "$PY" benchmarks/bench_fused_stages.py --channels 96 --runs 1 --warmup 1 --tiles --programs-per-sm
    run "$NCU" --import "$OUT/fused96.ncu-rep" --print-summary none
    "$NCU" --import "$OUT/fused96.ncu-rep" --page source --print-source sass --csv > "$OUT/fused96_sass.csv" 2>&1
    log "SASS table: $(wc -l < "$OUT/fused96_sass.csv") lines; its summary"
    run "$PY" benchmarks/ncu_sass_summary.py "$OUT/fused96_sass.csv"
fi

if section fused-tiles; then
    # after Nsight Compute (2026-11-28: the kernels wait on loads at 8 warps a multiprocessor, a
    # quarter of the GDFN's instructions bf16 -> float32 conversions of the scratch tile, 8% scalar
    # loads of the depth-wise taps): float32 scratch, tap-major taps, tiles whose output fills its
    # power-of-two pixels, register limits (more programs a multiprocessor), 64 hidden channels a
    # step (heads split into two parts were removed: an illegal memory access on the H200); then
    # the paper preset with the default tiles and with the fastest timed; then the wide blocks in
    # the plain arithmetic.
    # The configs that execute the fewest instructions (fused_instruction_budget.py, 2026-11-28)
    # come first, in case the time runs out. Timed on an H200 (2026-11-28): none made a block
    # faster than the default tiles (docs/performance.md)
    log "fused kernels: CUDA tests"
    run timeout 120 "$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_fused_kernels.py
    log "fused kernels: config options at 48 and 96 channels; the paper preset with the fastest"
    run timeout 300 "$PY" benchmarks/bench_fused_stages.py --channels 48 96 --runs 10 --warmup 2 --programs-per-sm \
        --tiles 4x16:8:f32:s64 4x16:8:f32 8x8:8:f32 8x8:4:f32 4x16:4:f32 6x14:8:f32 6x14:4:f32 \
        8x8:8:128:f32 8x8:8 --network
    log "wide blocks: inference kernels, plain arithmetic, fused"
    run timeout 60 "$PY" benchmarks/bench_fused_stages.py --channels 192 384 --stages block --plain --tiles \
        --programs-per-sm
fi

if section compile-model; then
    # the whole network as one graph: SCPM, GAM, TCPM and the samplers fused too (compiles for minutes)
    log "whole-model compile, paper preset, bf16, plain arithmetic, batch 8"
    run "$PY" -m upfusion bench --device cuda --preset paper --size 640x480 --precision bf16 --arithmetic plain \
        --batch 8 --compile model --runs 10 --warmup 3 --timeout "${COMPILE_SECONDS:-300}" \
        --json "$OUT/bench_compile_model.json"
fi

log done
