#!/usr/bin/env bash
# Second Multi-KG4Rec search on VALID (seed 999) around trainer/configs/ml-100k-mm/multikg4rec_gpu.yaml:
# regularisation (reg_weight 1e-5 | 1e-4) x message dropout (0.1 | 0.0), the incumbent included; then
# multikg4rec with the chosen preset and kgat with the same settings (fusion off) over seeds 1 2 3,
# test metrics recomputed from the bundles by `compare`. Meant for a GPU (all runs share it).
#   usage: scripts/gpu_multikg4rec_refine.sh DATASET_DIR RESULTS_DIR [SEARCH_SECONDS] [FINAL_SECONDS]
set -euo pipefail
dataset=$1 results=$2 search_budget=${3:-210} final_budget=${4:-240}
python=${PYTHON:-python3}
device=${DEVICE:-cuda}
mkdir -p "$results"
"$python" -m trainer tune --model multikg4rec --dataset "$dataset" --out "$results/tune" --device "$device" \
  --jobs 4 --max-seconds "$search_budget" --config trainer/configs/ml-100k-mm/multikg4rec_gpu.yaml \
  --grid model_params.reg_weight=1e-5,1e-4 --grid model_params.message_dropout=0.1,0.0 \
  --write-preset "$results/multikg4rec_gpu_refined.yaml" >"$results/tune.log" 2>&1
sed 's/^  fusion: .*/  fusion: none/' "$results/multikg4rec_gpu_refined.yaml" >"$results/kgat_gpu_refined.yaml"
"$python" -m trainer compare --dataset "$dataset" --out "${RUNS:-runs}/gpu-refined" --seeds 1 2 3 --device "$device" \
  --jobs 6 --max-seconds "$final_budget" \
  --variant "multikg4rec=multikg4rec:$results/multikg4rec_gpu_refined.yaml" \
  --variant "kgat=kgat:$results/kgat_gpu_refined.yaml" >"$results/compare.log" 2>&1
cp "${RUNS:-runs}/gpu-refined/compare.json" "$results/compare.json"
