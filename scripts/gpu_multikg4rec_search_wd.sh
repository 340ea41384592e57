#!/usr/bin/env bash
# Third Multi-KG4Rec / KGAT search on VALID recall@20 (seed 999; the test split is never read), around the
# GPU presets (trainer/configs/ml-100k-mm/{multikg4rec,kgat}_gpu.yaml): Adam weight decay {0, 1e-6} (the knob
# that lifted LightGCN on this split, docs/results/ludp.md) x KG loss weight {1.0, 0.1}, the same grid for both
# models so the ablation is tuned as much as the full model. All 8 configs share one GPU (one process each).
# Writes RESULTS/{multikg4rec,kgat}_gpu_wd.yaml (best preset each), the one-direction ablation presets derived
# from the multikg4rec winner (only `fusion` changed), tune.json rows and logs.
#   usage: scripts/gpu_multikg4rec_search_wd.sh DATASET_DIR RESULTS_DIR [SECONDS_PER_CONFIG]
set -euo pipefail
dataset=$1 results=$2 budget=${3:-450}
python=${PYTHON:-python3}
configs=trainer/configs/ml-100k-mm
mkdir -p "$results"
common=(--dataset "$dataset" --seed 999 --max-epochs 400 --patience 10 --max-seconds "$budget"
        --device "${DEVICE:-cuda}" --jobs 4 --grid train.weight_decay=0,1e-6 --grid model_params.kg_weight=1.0,0.1)
for model in multikg4rec kgat; do
  "$python" -m trainer tune --model "$model" --out "$results/tune-$model" --config "$configs/${model}_gpu.yaml" \
    "${common[@]}" --write-preset "$results/${model}_gpu_wd.yaml" >"$results/tune-$model.log" 2>&1 &
done
wait
for direction in text_to_kg:text-\>kg kg_to_text:kg-\>text; do
  sed "s/^  fusion: .*/  fusion: ${direction#*:}/" "$results/multikg4rec_gpu_wd.yaml" \
    >"$results/multikg4rec_gpu_wd_${direction%%:*}.yaml"
done
