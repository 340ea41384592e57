#!/usr/bin/env bash
# How far float noise in the features alone moves each model on MovieLens-100K: the main comparison's models and
# seeds (scripts/compare_ml100k.sh, STEPS=main) trained again on a copy of data/ml-100k-mm with VALUES feature values
# moved by one ulp (`trainer perturb`; 15 is how many kg values a 2-thread and a 1-thread SVD rounded apart before
# the build was pinned to one thread). LightGCN and KGAT read no features: their rows are controls and must not move.
# Prints the copy's compare table, then each model's per-seed change against the main runs (`trainer table --perturbed`).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/compare_ml100k}
VALUES=${VALUES:-15}
SEED=${SEED:-1}
COPY=data/ulp${VALUES}-seed${SEED}/ml-100k-mm   # same directory name: the ml-100k-mm presets apply
[ -f "$OUT/main/compare.json" ] || { echo "no $OUT/main/compare.json: run STEPS=main scripts/compare_ml100k.sh first" >&2; exit 2; }
[ -d "$COPY" ] || .venv/bin/python -m trainer perturb --dataset data/ml-100k-mm --out "$COPY" --values "$VALUES" --seed "$SEED"
mkdir -p "$OUT/noise"
C=trainer/configs/ml-100k-mm
OMP_NUM_THREADS=1 .venv/bin/python -W ignore -m trainer compare --dataset "$COPY" --out "$OUT/noise" \
  --seeds 1 2 3 4 5 --jobs 2 --max-epochs 200 --resume \
  --variant LightGCN=lightgcn --variant LUDP=ludp --variant SAND=sand \
  --variant "SAND+ID=sand:$C/sand_idgraph.yaml" --variant KGAT=kgat --variant Multi-KG4Rec=multikg4rec \
  > "$OUT/noise.log" 2>&1
cat "$OUT/noise/compare.md"
echo
.venv/bin/python -W ignore -m trainer table --rows "$OUT/main/compare.json" --perturbed "$OUT/noise/compare.json" \
  --metric test_recall@20
