#!/usr/bin/env bash
# A content control on MovieLens-100K: the multimodal models trained again on a copy of data/ml-100k-mm whose item
# feature rows are shuffled (`trainer perturb --shuffle-rows`: every item gets another item's text and kg features,
# one permutation for both), 5 seeds, next to LightGCN (reads no features: its rows must equal the main runs').
# A model that gains as much over LightGCN from shuffled features as from the real ones does not gain from content.
# Prints the copy's compare table, each model's per-seed change from the real features (test R@20, test N@20) against
# the main comparison's runs (scripts/compare_ml100k.sh, STEPS=main), and Recall@20 by item popularity on the copy.
#
# Environment: SEED (the permutation, default 1; its runs go to OUT/shuffled, other seeds' to OUT/shuffled-seedN),
# SEEDS (training seeds, default "1 2 3 4 5"), ONLY (labels to train, default "LightGCN SAND-LGS SAND+ID LUDP-item
# LUDP"; on request also the papers' SAND, KGAT and Multi-KG4Rec), MAIN_ROWS (the real-feature rows to pair with, default
# OUT/main/compare.json; any compare rows of the same labels and seeds, e.g. a stored docs/results/data/*.json), JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/compare_ml100k}
SEED=${SEED:-1}
SEEDS=${SEEDS:-1 2 3 4 5}
ONLY=${ONLY:-LightGCN SAND-LGS SAND+ID LUDP-item LUDP}
MAIN_ROWS=${MAIN_ROWS:-$OUT/main/compare.json}
COPY=data/shuffled-seed${SEED}/ml-100k-mm   # same directory name: the ml-100k-mm presets apply
C=trainer/configs/ml-100k-mm
if [ "$SEED" = 1 ]; then RUNS=$OUT/shuffled; else RUNS=$OUT/shuffled-seed$SEED; fi
[ -f "$MAIN_ROWS" ] || { echo "no $MAIN_ROWS: run STEPS=main scripts/compare_ml100k.sh first (or set MAIN_ROWS)" >&2; exit 2; }
declare -A SPEC=(
  [LightGCN]=lightgcn [SAND-LGS]="sand:$C/sand_lightgcn_settings.yaml" [SAND+ID]="sand:$C/sand_idgraph.yaml"
  [LUDP-item]=ludp_item [LUDP]=ludp [SAND]=sand [KGAT]=kgat [Multi-KG4Rec]=multikg4rec
)
VARIANT_ARGS=()
for label in $ONLY; do
  [ -n "${SPEC[$label]:-}" ] || { echo "unknown label $label in ONLY (known: ${!SPEC[*]})" >&2; exit 2; }
  VARIANT_ARGS+=(--variant "$label=${SPEC[$label]}")
done
[ -d "$COPY" ] || .venv/bin/python -m trainer perturb --dataset data/ml-100k-mm --out "$COPY" --shuffle-rows --seed "$SEED"
mkdir -p "$RUNS"
# shellcheck disable=SC2086  # SEEDS is a list of numbers
OMP_NUM_THREADS=1 .venv/bin/python -W ignore -m trainer compare --dataset "$COPY" --out "$RUNS" \
  --seeds $SEEDS --jobs "${JOBS:-2}" --max-epochs 200 --resume "${VARIANT_ARGS[@]}" \
  > "$RUNS.log" 2>&1
cat "$RUNS/compare.md"
echo
.venv/bin/python -W ignore -m trainer table --rows "$MAIN_ROWS" --perturbed "$RUNS/compare.json"
echo
case " $ONLY " in
  *" LightGCN "*) .venv/bin/python -W ignore -m trainer popularity --compare-dir "$RUNS" --baseline LightGCN \
                    --json "$RUNS/popularity.json" | tee "$RUNS/popularity.md" ;;
esac
