#!/usr/bin/env bash
# Cold-start evaluation on MovieLens-100K (text + kg), 2 CPU cores: every model with an item encoder of its own
# (LUDP with both of its encoders), and LightGCN and KGAT, which get the export's feature-neighbour mean:
# 20% of the items held out (split seed 0), training seeds 1 2 3, two runs at a time, presets of
# trainer/configs/ml-100k-mm/. Results: runs/coldstart/<label>/seed<N>/coldstart.json and one summary per model
# in runs/coldstart/<label>.log. Multi-KG4Rec last, with a 200-epoch cap and patience 15 (it converges at epochs
# 79-109; ~4 min per run on an idle 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/coldstart}
mkdir -p "$OUT"
[ -d data/ml-100k-mm ] || .venv/bin/python -m trainer features --dataset ../shared/datasets/ml-100k --out data/ml-100k-mm
run() {  # label model [config] [more trainer coldstart arguments]
  OMP_NUM_THREADS=1 .venv/bin/python -W ignore -m trainer coldstart --model "$2" --dataset data/ml-100k-mm \
    --out "$OUT/$1" --seeds 1 2 3 --quiet ${3:+--config "$3"} "${@:4}" > "$OUT/$1.log" 2>&1
}
run ludp ludp &
run sand sand
wait
run sand_idgraph sand trainer/configs/ml-100k-mm/sand_idgraph.yaml &
run lightgcn_sand lightgcn_sand
wait
run ludp_item_graph ludp trainer/configs/ml-100k-mm/ludp_cold_item_graph.yaml &  # LUDP's encoder of sessions 7-9
run lightgcn lightgcn  # no encoder of its own: the feature-neighbour mean
wait
run kgat kgat "" --jobs 2 --max-epochs 200 --patience 15
run multikg4rec multikg4rec "" --jobs 2 --max-epochs 200 --patience 15  # the feature-neighbour mean (default)
run multikg4rec_multimodal multikg4rec trainer/configs/ml-100k-mm/multikg4rec_cold_multimodal.yaml \
  --jobs 2 --max-epochs 200 --patience 15  # its former encoder
for label in ludp ludp_item_graph sand sand_idgraph lightgcn_sand lightgcn kgat multikg4rec multikg4rec_multimodal; do
  echo "== $label"; grep -v " INFO \|^ModuleNotFound" "$OUT/$label.log" | tail -6
done
