#!/usr/bin/env bash
# The checks that need a GPU (issues 6 and 8), as one prepared run for a lent machine.
#
#   bash benchmarks/gpu_checks.sh OUTDIR [tables|speed|all]
#
# tables (issue 6): benchmarks/mnist_tables.sh with REFERENCE=1 on 2000 samples per cell under bf16:
#   the reference MNIST model and evaluator made on the CPU by benchmarks/make_reference.py (carry
#   benchmarks/out/reference to the GPU machine; checked there against
#   benchmarks/reference/manifest.json), the DDIM table with the
#   S = 1000 column the CPU affords one cell per session, and the sampler table; the cells go to a
#   copy of the committed ledger, OUTDIR's mnist_tables.json (cuda cells have their own key; copy it
#   over benchmarks/results/mnist_tables.json to keep them). REMAKE=1 first re-makes the model on the
#   GPU with the CPU recipe (benchmarks/mnist_quality.py --steps 1665) and tables that one instead,
#   with an evaluator trained on the GPU.
# speed (issue 8), each step under its own time limit PART_TIMEOUT (default 600 s), most important first:
#   benchmarks/train_throughput.py --device cuda (fp32 and bf16, diffkit against diffusers'
#   UNet2DModel tuned in both layouts, SPEED_CONFIGS), tests/test_cuda.py, benchmarks/sampling_speed.py
#   (fp32, bf16), train_throughput.py with bf16 + compile on and off (COMPILE_CONFIGS, default seed),
#   sampling_speed.py with the compiled variants (reduce-overhead), then benchmarks/auto_batch.py
#   (--batch-size auto's prediction against the allocator's peak). They need the diffusers package
#   (carry its wheel, see docs/performance.md). Seen on the H200 (2026-12-04, batch 128 / 64):
#   training throughput 149 s (three configs, six variants), the CUDA tests 35 s, sampling speed
#   about 80 s, compiled training 130 s, compiled sampling over 230 s; the machine's start takes
#   1-2 minutes more. 15 device minutes do not hold them all: set PART_TIMEOUT and the run's limit.
# Environment: MNIST_DIR (default ../shared/data/mnist), PYTHON (default python3, else .venv's),
#   STEPS (training steps, default 1665), NUM (samples per cell, default 2000), DDIM_STEPS and
#   SAMPLER_STEPS (see mnist_tables.sh; the sampler table defaults here to 10,20,50,100),
#   SPEED_CONFIGS (default seed,cifar10,mnist), SPEED_STEPS (steps per round, default 10 on cuda, 1 on
#   the CPU), SPEED_ROUNDS, SPEED_BATCH, SAMPLE_BATCH (default 64), SAMPLE_CONFIG (default seed), LAYOUTS=1 (train_throughput.py --layouts: diffkit also
#   in the layout its Trainer does not pick, channels_last on CUDA), DEVICE (default cuda; "cpu" with tiny STEPS/NUM is
#   the smoke test that this script runs end to end).
# Everything lands in OUTDIR as results.tar.gz (tables, JSON, PNGs) plus this run's log.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:?usage: bash benchmarks/gpu_checks.sh OUTDIR [tables|speed|all]}
PART=${2:-all}
case "$PART" in tables|speed|all) ;; *) echo "error: part '$PART' is not one of tables, speed, all" >&2; exit 2;; esac
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
DATA=${MNIST_DIR:-../shared/data/mnist}
DEVICE=${DEVICE:-cuda}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUTDIR"
WORK=$(mktemp -d)
LOG="$OUTDIR/gpu_checks.log"
pack() { tar -czf "$OUTDIR/results.tar.gz" -C "$WORK" .; }
exec > >(tee -a "$LOG") 2>&1
echo "gpu_checks $PART on $DEVICE, $(date -u +%FT%TZ), python $("$PYTHON" -c 'import torch, sys; print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available())')"
[ "$DEVICE" != cuda ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if [ "$PART" != speed ]; then
    [ -f "$DATA/train-images-idx3-ubyte.gz" ] || [ -f "$DATA/train-images-idx3-ubyte" ] || {
        echo "error: no MNIST IDX files in '$DATA' (set MNIST_DIR)" >&2; exit 2; }
    CKPT=benchmarks/out/reference/mnist_simple.safetensors
    REFERENCE=1
    if [ -z "${REMAKE:-}" ]; then
        "$PYTHON" benchmarks/make_reference.py --check || {
            echo "error: carry benchmarks/out/reference (made on the CPU by benchmarks/make_reference.py), or set REMAKE=1" >&2
            exit 2; }
    else  # the model re-made here, the evaluator trained here by mnist_tables.sh; bf16, batch 500 as REFERENCE=1
        REFERENCE= ; export MIXED_PRECISION=bf16 BATCH_SIZE=500
        start=$SECONDS
        "$PYTHON" benchmarks/mnist_quality.py --losses simple --steps "${STEPS:-1665}" --data-dir "$DATA" \
            --device "$DEVICE" --num "${QUALITY_NUM:-1000}" --out "$WORK/mnist_quality.json"
        echo "model: $((SECONDS - start)) s"
        CKPT=benchmarks/out/mnist_simple/checkpoints/latest.safetensors
        pack
    fi
    [ ! -f benchmarks/results/mnist_tables.json ] || cp benchmarks/results/mnist_tables.json "$WORK"/
    for table in ddim sampler; do  # packed after each, so a run stopped at its time limit keeps the first
        start=$SECONDS
        REFERENCE=$REFERENCE LEDGER="$WORK/mnist_tables.json" TABLES=$table DIFFKIT="$PYTHON -m diffkit" \
            MNIST_DIR="$DATA" SAMPLER_STEPS="${SAMPLER_STEPS:-10,20,50,100}" \
            bash benchmarks/mnist_tables.sh "$CKPT" "${NUM:-2000}" "$DEVICE"
        echo "$table table: $((SECONDS - start)) s"
        cp benchmarks/out/tables/${table}_table.* "$WORK"/
        pack
    done
fi

if [ "$PART" != tables ]; then
    "$PYTHON" -c "import diffusers" 2>/dev/null || { echo "error: the speed part needs diffusers" >&2; exit 2; }
    # Each step is bounded by its own time limit (PART_TIMEOUT s), so that one that hangs or fails
    # leaves the others' results; most important first. On CUDA a round is SPEED_STEPS steps.
    LIMIT=${PART_TIMEOUT:-600}
    if [ "$DEVICE" = cuda ]; then STEPS_PER_ROUND=${SPEED_STEPS:-10}; else STEPS_PER_ROUND=${SPEED_STEPS:-1}; fi
    if [ "$DEVICE" = cuda ]; then
        EAGER=diffkit,diffusers-tuned,diffusers-cl,diffkit-bf16,diffusers-tuned-bf16,diffusers-cl-bf16
        COMPILED=diffkit-bf16,diffusers-tuned-bf16,diffkit-bf16-compile,diffusers-tuned-bf16-compile,diffusers-cl-bf16-compile
    else EAGER=diffkit,diffusers,diffusers-cl; COMPILED=diffkit,diffusers-cl,diffkit-compile,diffusers-cl-compile; fi
    if [ -n "${LAYOUTS:-}" ]; then  # diffkit also in the layout its Trainer does not pick on this device
        if [ "$DEVICE" = cuda ]; then EAGER="$EAGER,diffkit-channels_last,diffkit-bf16-channels_last"
        else EAGER="$EAGER,diffkit-contiguous"; fi
    fi
    step() {  # step NAME COMMAND...: run under the time limit; a failure is reported, not fatal
        local name=$1 start=$SECONDS; shift
        timeout "$LIMIT" "$@" || echo "$name: failed or ran past ${LIMIT} s (status $?)"
        echo "$name: $((SECONDS - start)) s"
        pack
    }
    step "training throughput" "$PYTHON" benchmarks/train_throughput.py --device "$DEVICE" \
        --configs "${SPEED_CONFIGS:-seed,cifar10,mnist}" ${LAYOUTS:+--layouts} --variants "$EAGER" --batch "${SPEED_BATCH:-64}" \
        --rounds "${SPEED_ROUNDS:-3}" --steps "$STEPS_PER_ROUND" --concurrent-warmup --out "$WORK/train_throughput.json"
    [ "$DEVICE" != cuda ] || step "cuda tests" "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py
    step "sampling speed" "$PYTHON" benchmarks/sampling_speed.py --device "$DEVICE" --config "${SAMPLE_CONFIG:-seed}" \
        --batch "${SAMPLE_BATCH:-64}" --rounds "${SPEED_ROUNDS:-3}" --bf16 --out "$WORK/sampling_speed.json"
    step "compiled training throughput" "$PYTHON" benchmarks/train_throughput.py --device "$DEVICE" \
        --configs "${COMPILE_CONFIGS:-seed}" --compile --variants "$COMPILED" --batch "${SPEED_BATCH:-64}" \
        --rounds "${SPEED_ROUNDS:-3}" --steps "$STEPS_PER_ROUND" --concurrent-warmup \
        --out "$WORK/train_throughput_compile.json"
    # compiling diffusers' U-Net with reduce-overhead took 104 s on the H200, diffkit's 34 s
    step "compiled sampling speed" "$PYTHON" benchmarks/sampling_speed.py --device "$DEVICE" \
        --config "${SAMPLE_CONFIG:-seed}" --batch "${SAMPLE_BATCH:-64}" --rounds "${SPEED_ROUNDS:-3}" --bf16 \
        --compile reduce-overhead --out "$WORK/sampling_speed_compile.json"
    step "auto batch" "$PYTHON" benchmarks/auto_batch.py --device "$DEVICE" --check "${AUTO_BATCH_CHECK:-512}" --bf16 \
        --out "$WORK/auto_batch.json"  # --batch-size auto: predicted against the allocator's peak
fi
pack
echo "wrote $OUTDIR/results.tar.gz ($(tar -tzf "$OUTDIR/results.tar.gz" | grep -c .) entries)"
