#!/usr/bin/env bash
# Three seeds of the presets written by scripts/gpu_multikg4rec_search_wd.sh (multikg4rec, kgat and the two
# one-direction ablations), all 12 runs sharing one GPU; test metrics are recomputed from each exported bundle by
# `compare` (the test split is read once per run, after training). Writes RESULTS/compare.json and the log.
# With 12 runs on one H100 a Multi-KG4Rec epoch took ~8.7 s, so 480 s cut those runs at epoch 54 (session 6,
# docs/results/multikg4rec.md); the default budget leaves room for early stopping (~60 epochs + patience 10).
#   usage: scripts/gpu_multikg4rec_confirm.sh DATASET_DIR PRESETS_DIR RESULTS_DIR [SECONDS_PER_RUN]
set -euo pipefail
dataset=$1 presets=$2 results=$3 budget=${4:-900}
python=${PYTHON:-python3}
mkdir -p "$results"
"$python" -m trainer compare --dataset "$dataset" --out "$results/runs" --seeds 1 2 3 --device "${DEVICE:-cuda}" \
  --jobs 12 --max-seconds "$budget" --max-epochs 400 --patience 10 \
  --variant "multikg4rec=multikg4rec:$presets/multikg4rec_gpu_wd.yaml" \
  --variant "kgat=kgat:$presets/kgat_gpu_wd.yaml" \
  --variant "text->kg=multikg4rec:$presets/multikg4rec_gpu_wd_text_to_kg.yaml" \
  --variant "kg->text=multikg4rec:$presets/multikg4rec_gpu_wd_kg_to_text.yaml" >"$results/compare.log" 2>&1
cp "$results/runs/compare.json" "$results/compare.json"
