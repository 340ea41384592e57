#!/usr/bin/env bash
# Multi-KG4Rec and KGAT hyperparameter search on VALID recall@20 (the test split is never read), with
# the paper's per-step settings (Bi-Transformer recomputed every step, BFS sequences of 8) instead of the
# 2-core CPU compromises. Meant for a GPU: every config is its own process (--jobs), all share the device.
# Writes RESULTS/tune-<model>/tune.json, RESULTS/<model>_gpu.yaml (best preset) and logs.
#   usage: scripts/gpu_multikg4rec_search.sh DATASET_DIR RESULTS_DIR [SECONDS_PER_CONFIG]
set -euo pipefail
dataset=$1 results=$2 budget=${3:-330}
python=${PYTHON:-python3}
mkdir -p "$results"
common=(--dataset "$dataset" --max-epochs 400 --patience 10 --max-seconds "$budget" --device "${DEVICE:-cuda}"
        --jobs 4 --grid train.batch_size=1024,4096 --grid train.lr=0.001,0.005)
"$python" -m trainer tune --model multikg4rec --out "$results/tune-multikg4rec" "${common[@]}" \
  --grid model_params.multimodal_refresh_every=1 --grid model_params.sequence_length=8 \
  --write-preset "$results/multikg4rec_gpu.yaml" >"$results/tune-multikg4rec.log" 2>&1 &
"$python" -m trainer tune --model kgat --out "$results/tune-kgat" "${common[@]}" \
  --write-preset "$results/kgat_gpu.yaml" >"$results/tune-kgat.log" 2>&1 &
wait
