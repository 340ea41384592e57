#!/usr/bin/env bash
# Every model on MovieLens-100K (text + kg) in one comparison, then each multimodal model's variants and ablations
# against the full model, 5 seeds, the presets of trainer/configs/ml-100k-mm/, two runs at a time (2 CPU cores:
# about 45 min for the main comparison, 175 min for the families). Results: OUT/main/compare.md and
# OUT/{sand,sand_lgs,sand_lgs_parts,ludp,ludp_item,mkg,mkg_lgs}/compare.md (mean ± std, and differences with 95%
# intervals over seeds, paired by seed). The families reuse the full models' runs of the main comparison where it ran
# (linked, then `compare --resume`; without them a family trains its full model too). STEPS picks which comparisons
# run (default: all eight, "main sand sand_lgs sand_lgs_parts ludp ludp_item mkg mkg_lgs"). sand_lgs_parts takes
# SAND-LGS's content terms out one at a time, next to LightGCN and LightGCN with user_scale 0.5 (what SAND-LGS is
# without content): where its gain over LightGCN comes from (~50 min on its own). After main and mkg_lgs,
# `trainer popularity` adds test Recall@20 by item-popularity group (OUT/main/popularity.md, OUT/mkg_lgs/popularity.md;
# per-run figures in popularity.json beside them).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/compare_ml100k}
STEPS=${STEPS:-main sand sand_lgs sand_lgs_parts ludp ludp_item mkg mkg_lgs}
C=trainer/configs/ml-100k-mm
[ -d data/ml-100k-mm ] || .venv/bin/python -m trainer features --dataset ../shared/datasets/ml-100k --out data/ml-100k-mm
compare() {  # out-subdir, then variants
  case " $STEPS " in *" $1 "*) ;; *) return 0 ;; esac
  local out=$OUT/$1; shift
  OMP_NUM_THREADS=1 .venv/bin/python -W ignore -m trainer compare --dataset data/ml-100k-mm --out "$out" \
    --seeds 1 2 3 4 5 --jobs 2 --max-epochs 200 --resume "$@" > "$out.log" 2>&1
  cat "$out/compare.md"
}
popularity() {  # out-subdir: Recall@20 by item-popularity group of that comparison's runs (against LightGCN)
  case " $STEPS " in *" $1 "*) ;; *) return 0 ;; esac
  .venv/bin/python -W ignore -m trainer popularity --compare-dir "$OUT/$1" --baseline LightGCN \
    --json "$OUT/$1/popularity.json" > "$OUT/$1/popularity.md"
  cat "$OUT/$1/popularity.md"
}
reuse() {  # family-subdir, label: link the main comparison's runs of that label, where they exist
  mkdir -p "$OUT/$1"
  [ -d "$OUT/main/$2" ] || return 0
  if [ -d "$OUT/$1/$2" ] && [ ! -L "$OUT/$1/$2" ]; then return 0; fi  # the family trained its own
  ln -sfn "../main/$2" "$OUT/$1/$2"
}
mkdir -p "$OUT"
compare main --variant LightGCN=lightgcn --variant LUDP=ludp --variant LUDP-item=ludp_item --variant SAND=sand \
  --variant "SAND+ID=sand:$C/sand_idgraph.yaml" --variant "SAND-LGS=sand:$C/sand_lightgcn_settings.yaml" \
  --variant KGAT=kgat --variant Multi-KG4Rec=multikg4rec
popularity main
reuse sand SAND
compare sand --variant SAND=sand \
  --variant "InfoNCE+MI=sand:$C/sand_infonce_mi.yaml" --variant "SoloSim+l2=sand:$C/sand_solosim_l2.yaml" \
  --variant "InfoNCE+l2=sand:$C/sand_infonce_l2.yaml" --variant "wo-align=sand:$C/sand_wo_align.yaml" \
  --variant "wo-distance=sand:$C/sand_wo_distance.yaml" --variant "wo-both=sand:$C/sand_wo_both.yaml"
reuse sand_lgs SAND-LGS
compare sand_lgs --variant SAND-LGS=sand:$C/sand_lightgcn_settings.yaml \
  --variant "wo-align=sand:$C/sand_lightgcn_settings_wo_align.yaml" \
  --variant "wo-distance=sand:$C/sand_lightgcn_settings_wo_distance.yaml" \
  --variant "wo-both=sand:$C/sand_lightgcn_settings_wo_both.yaml" \
  --variant "softmax-attention=sand:$C/sand_lightgcn_settings_softmax_attention.yaml" \
  --variant "InfoNCE+MI=sand:$C/sand_lightgcn_settings_infonce_mi.yaml" \
  --variant "SoloSim+l2=sand:$C/sand_lightgcn_settings_solosim_l2.yaml" \
  --variant "InfoNCE+l2=sand:$C/sand_lightgcn_settings_infonce_l2.yaml"
reuse sand_lgs_parts LightGCN
reuse sand_lgs_parts SAND-LGS
compare sand_lgs_parts --variant LightGCN=lightgcn --variant SAND-LGS=sand:$C/sand_lightgcn_settings.yaml \
  --variant "no-modal=sand:$C/sand_lightgcn_settings_no_modal.yaml" \
  --variant "no-knn=sand:$C/sand_lightgcn_settings_no_knn.yaml" \
  --variant "no-content=sand:$C/sand_lightgcn_settings_no_content.yaml" \
  --variant "LightGCN-half-user=lightgcn:$C/lightgcn_user_half.yaml"
reuse ludp LUDP
compare ludp --variant LUDP=ludp \
  --variant "no-item-graph=ludp:$C/ludp_no_item_graph.yaml" --variant "no-user-graph=ludp:$C/ludp_no_user_graph.yaml" \
  --variant "fusion-sum=ludp:$C/ludp_fusion_sum.yaml" --variant "fusion-concat=ludp:$C/ludp_fusion_concat.yaml"
reuse ludp_item LUDP-item
compare ludp_item --variant LUDP-item=ludp_item \
  --variant "fusion-sum=ludp_item:$C/ludp_item_fusion_sum.yaml" \
  --variant "fusion-concat=ludp_item:$C/ludp_item_fusion_concat.yaml" \
  --variant "text-only=ludp_item:$C/ludp_item_text_only.yaml" --variant "kg-only=ludp_item:$C/ludp_item_kg_only.yaml"
reuse mkg Multi-KG4Rec
reuse mkg KGAT
compare mkg --variant Multi-KG4Rec=multikg4rec \
  --variant "text->kg=multikg4rec:$C/multikg4rec_text_to_kg.yaml" \
  --variant "kg->text=multikg4rec:$C/multikg4rec_kg_to_text.yaml" --variant KGAT=kgat
reuse mkg_lgs LightGCN
compare mkg_lgs --variant LightGCN=lightgcn \
  --variant "KGAT-LGS=kgat:$C/kgat_lightgcn_settings.yaml" \
  --variant "Multi-KG4Rec-LGS=multikg4rec:$C/multikg4rec_lightgcn_settings.yaml"
popularity mkg_lgs
