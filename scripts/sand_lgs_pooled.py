"""SAND-LGS − LightGCN pooled over seeds 1-20 from the stored rows of sessions 17 (seeds 1-10, AVX2 feature build) and
19 (seeds 11-20, AVX512 build): mean difference, 95% interval paired by seed, and how many seeds are above.

    .venv/bin/python scripts/sand_lgs_pooled.py

A post-hoc pool of two stored comparisons (no training). Session 17 labelled SAND-LGS "SAND, LightGCN settings (ours)".
"""

import json
from pathlib import Path

from trainer.pipeline import difference_interval

DATA = Path(__file__).resolve().parents[1] / "docs" / "results" / "data"
rows = json.loads((DATA / "sand_lgs_ml100k_s17_cpu.json").read_text(encoding="utf-8"))["seeds1_10"]
rows += json.loads((DATA / "sand_lgs_fresh_seeds_s19_cpu.json").read_text(encoding="utf-8"))
for row in rows:
    if row["label"] == "SAND, LightGCN settings (ours)":
        row["label"] = "SAND-LGS"
for key in ("valid_recall@20", "test_recall@20", "test_ndcg@20"):
    difference, low, high, method = difference_interval(rows, "SAND-LGS", "LightGCN", key)
    ours = {row["seed"]: row[key] for row in rows if row["label"] == "SAND-LGS"}
    base = {row["seed"]: row[key] for row in rows if row["label"] == "LightGCN"}
    seeds = sorted(set(ours) & set(base))
    above = sum(ours[s] > base[s] for s in seeds)
    print(f"{key}: SAND-LGS − LightGCN {difference:+.4f} [{low:+.4f}, {high:+.4f}] over seeds "
          f"{seeds[0]}-{seeds[-1]} ({len(seeds)}, {method}), above in {above}")
