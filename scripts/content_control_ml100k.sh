#!/usr/bin/env bash
# A content control on MovieLens-100K: the multimodal models trained again on a copy of data/ml-100k-mm whose item
# feature rows are shuffled (`trainer perturb --shuffle-rows`: every item gets another item's text and kg features,
# one permutation for both), 5 seeds, next to LightGCN (reads no features: its rows must equal the main runs').
# A model that gains as much over LightGCN from shuffled features as from the real ones does not gain from content.
# Prints the copy's compare table, each model's per-seed change from the real features (test R@20, test N@20) against
# the main comparison's runs (scripts/compare_ml100k.sh, STEPS=main), and Recall@20 by item popularity on the copy.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/compare_ml100k}
SEED=${SEED:-1}
COPY=data/shuffled-seed${SEED}/ml-100k-mm   # same directory name: the ml-100k-mm presets apply
C=trainer/configs/ml-100k-mm
[ -f "$OUT/main/compare.json" ] || { echo "no $OUT/main/compare.json: run STEPS=main scripts/compare_ml100k.sh first" >&2; exit 2; }
[ -d "$COPY" ] || .venv/bin/python -m trainer perturb --dataset data/ml-100k-mm --out "$COPY" --shuffle-rows --seed "$SEED"
mkdir -p "$OUT/shuffled"
OMP_NUM_THREADS=1 .venv/bin/python -W ignore -m trainer compare --dataset "$COPY" --out "$OUT/shuffled" \
  --seeds 1 2 3 4 5 --jobs "${JOBS:-2}" --max-epochs 200 --resume --variant LightGCN=lightgcn \
  --variant "SAND-LGS=sand:$C/sand_lightgcn_settings.yaml" --variant "SAND+ID=sand:$C/sand_idgraph.yaml" \
  --variant LUDP-item=ludp_item --variant LUDP=ludp \
  > "$OUT/shuffled.log" 2>&1
cat "$OUT/shuffled/compare.md"
echo
.venv/bin/python -W ignore -m trainer table --rows "$OUT/main/compare.json" --perturbed "$OUT/shuffled/compare.json"
echo
.venv/bin/python -W ignore -m trainer popularity --compare-dir "$OUT/shuffled" --baseline LightGCN \
  --json "$OUT/shuffled/popularity.json" | tee "$OUT/shuffled/popularity.md"
