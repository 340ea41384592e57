#!/usr/bin/env bash
# How the cold-start encoder settings were chosen (session 10), on VALIDATION items only: for held-out split seeds
# 0 and 1, `trainer coldstart --validation` removes the split's held-out items entirely and evaluates on a second
# hold-out of the remaining items; `--neighbour-k` ranks those items with the feature-neighbour mean at each k over
# the same trained embeddings. Training seeds 1 2 3, two runs at a time, 2 CPU cores (~30 min on an idle machine).
# Results: runs/coldstart_valid/<label>_split<S>.log (summary at the end) and .../seed<N>/coldstart.json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/coldstart_valid}
mkdir -p "$OUT"
[ -d data/ml-100k-mm ] || .venv/bin/python -m trainer features --dataset ../shared/datasets/ml-100k --out data/ml-100k-mm
run() {  # label model split [more trainer coldstart arguments]
  OMP_NUM_THREADS=1 .venv/bin/python -W ignore -m trainer coldstart --model "$2" --dataset data/ml-100k-mm \
    --out "$OUT/$1_split$3" --split-seed "$3" --validation --seeds 1 2 3 --quiet --served-slots 0 "${@:4}" \
    > "$OUT/$1_split$3.log" 2>&1
}
for split in 0 1; do
  run lightgcn lightgcn "$split" --neighbour-k 1 2 3 5 10 20 30 50 100 &
done
wait
for split in 0 1; do
  run kgat kgat "$split" --max-epochs 200 --patience 15 --neighbour-k 5 10 20 30 50 &
done
wait
for split in 0 1; do  # LUDP's item-graph encoder against the neighbour mean over its embeddings
  run ludp_item_graph ludp "$split" --config trainer/configs/ml-100k-mm/ludp_cold_item_graph.yaml --neighbour-k 10 30 &
done
wait
for split in 0 1; do  # SAND + ID's own encoder against the neighbour mean over its embeddings
  run sand_idgraph sand "$split" --config trainer/configs/ml-100k-mm/sand_idgraph.yaml --neighbour-k 10 30 &
done
wait
for log in "$OUT"/*.log; do
  echo "== $log"; grep -v " INFO \|^ModuleNotFound\|^served" "$log" | tail -n 12
done
