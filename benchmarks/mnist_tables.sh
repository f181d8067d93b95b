#!/usr/bin/env bash
# Issue 6's acceptance tables on MNIST: the DDIM Table 1 layout (eta x S) and the PNDM layout
# (samplers x steps) for a trained MNIST checkpoint, FD-classifier on NUM samples per cell.
#
#   bash benchmarks/mnist_tables.sh [CHECKPOINT] [NUM] [DEVICE]
#
# CHECKPOINT defaults to the L_simple model of benchmarks/mnist_quality.py; NUM to 2000; DEVICE
# to auto. Cost: the DDIM table alone is NUM x 5 x 1180 network calls (11.8 million at NUM=2000,
# about 14 hours on one CPU thread at 4.4 ms per 28x28 image; a few minutes on one modern GPU).
# DDIM_STEPS / SAMPLER_STEPS override the step lists (a smoke run: DDIM_STEPS=10 SAMPLER_STEPS=10),
# DDIM_ETAS / SAMPLERS the rows;
# TABLES=ddim or TABLES=sampler runs one of the two tables (default both).
# DDIM_THRESHOLDING=none|clip|dynamic is ddim-table's --thresholding (default: only the sigma_hat row
# clipped, as the DDIM reference code; the committed sigma-hat row was sampled unclipped: none).
# MIXED_PRECISION=bf16 runs the network under bf16 autocast (about 2x faster on a CPU with AMX;
# FD-classifier within 0.5% of fp32 on 500 samples, DDIM 10 steps, eta 0 and 1).
# CACHE_DIR=DIR keeps every finished batch of samples (diffkit experiment --cache-dir): the same
# command run again continues a stopped table with the same samples, so the S = 1000 column can be
# spread over several CPU sessions. BATCH_SIZE (default 1000) must then stay the same between runs;
# COMPILE=default runs the network through torch.compile (about 5% on this CPU at batch 500).
# LEDGER=FILE keeps every finished cell's scores in FILE (diffkit experiment --ledger): a later run,
# on another day or machine, computes only the cells missing there. Runs may share one ledger: on
# 2 cores, two cells as two runs with OMP_NUM_THREADS=1 each give 1.2-1.4x the throughput
# (benchmarks/sampling_threads.py).
# REFERENCE=1 runs the tables of the reference model and evaluator (benchmarks/reference/manifest.json,
# BENCHMARKS.md) with bf16, batch 500 and the committed ledger benchmarks/results/mnist_tables.json,
# so the S = 1000 column can be finished one cell at a time over many sessions; the two files are
# made (about 18 minutes on 2 CPU cores) and checked bit for bit against the manifest by
# benchmarks/make_reference.py when benchmarks/out/reference/ lacks them. CHECKPOINT, EVALUATOR
# and the other variables then keep their meaning.
# Writes benchmarks/out/tables/{ddim_table,sampler_table}.{md,csv,json,png}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/out/tables
if [ -n "${REFERENCE:-}" ]; then
    REF=benchmarks/out/reference
    : "${EVALUATOR:=$REF/mnist_evaluator.safetensors}" "${LEDGER:=benchmarks/results/mnist_tables.json}"
    : "${MIXED_PRECISION:=bf16}" "${BATCH_SIZE:=500}"
    DEFAULT_CKPT=$REF/mnist_simple.safetensors
else
    DEFAULT_CKPT=benchmarks/out/mnist_simple/checkpoints/latest.safetensors
fi
CKPT=${1:-$DEFAULT_CKPT}
NUM=${2:-2000}
DEVICE=${3:-auto}
DATA=${MNIST_DIR:-../shared/data/mnist}
EVALUATOR=${EVALUATOR:-$OUT/evaluator.safetensors}
read -r -a DK <<< "${DIFFKIT:-.venv/bin/diffkit}"   # e.g. DIFFKIT="python3 -m diffkit"
mkdir -p "$OUT"
for file in "$CKPT" "$EVALUATOR"; do  # only the reference files are made here, never a file given by hand
    if [ -n "${REFERENCE:-}" ] && [ ! -f "$file" ] && [ "$(dirname "$file")" = "$REF" ]; then
        # exit status 3: made, but not bit-identical to the manifest (cells get their own ledger key)
        "${PYTHON:-.venv/bin/python}" benchmarks/make_reference.py --out-dir "$REF" --data-dir "$DATA" || [ $? -eq 3 ]
        break
    fi
done
[ -f "$EVALUATOR" ] || "${DK[@]}" train-evaluator --dataset mnist --data-dir "$DATA" \
    --img-size 28 --out "$EVALUATOR" --device "$DEVICE"
common=(--checkpoint "$CKPT" --evaluator "$EVALUATOR" --ref mnist --data-dir "$DATA"
        --num "$NUM" --out "$OUT" --device "$DEVICE" --batch-size "${BATCH_SIZE:-1000}" --no-progress
        --mixed-precision "${MIXED_PRECISION:-no}" --compile "${COMPILE:-no}")
[ -z "${CACHE_DIR:-}" ] || common+=(--cache-dir "$CACHE_DIR")
[ -z "${LEDGER:-}" ] || common+=(--ledger "$LEDGER")
TABLES=${TABLES:-ddim,sampler}
case ",$TABLES," in *,ddim,*)
    "${DK[@]}" experiment ddim-table "${common[@]}" --steps "${DDIM_STEPS:-10,20,50,100,1000}" \
        --etas "${DDIM_ETAS:-0,0.2,0.5,1,sigma_hat}" ${DDIM_THRESHOLDING:+--thresholding "$DDIM_THRESHOLDING"};; esac
case ",$TABLES," in *,sampler,*)
    "${DK[@]}" experiment sampler-table "${common[@]}" --steps "${SAMPLER_STEPS:-10,20,50,100,250,1000}" \
        --samplers "${SAMPLERS:-ddim,s-pndm,pndm,fon,dpm-solver,dpm-solver++-2m,unipc}";; esac
