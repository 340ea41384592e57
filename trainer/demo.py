"""The README's demo: obtain MovieLens-100K, build its text + KG modalities, train, evaluate, export."""

from __future__ import annotations

import logging
from pathlib import Path

from trainer.bundle_eval import evaluate_bundle_on_split
from trainer.loop import SPLIT_FILE
from trainer.pipeline import run_fit

logger = logging.getLogger(__name__)

DEMO_DATASET = "ml-100k-mm"


def run_demo(workdir: Path, model: str = "lightgcn", max_epochs: int | None = None) -> Path:
    """Return the run directory; ``<run>/bundles/current`` is ready for ``python -m service``."""
    from trainer.data.features import build_features
    from trainer.data.obtain import obtain_ml100k

    workdir = Path(workdir)
    raw = obtain_ml100k(workdir / "raw" / "ml-100k")
    dataset_dir = workdir / DEMO_DATASET
    if not (dataset_dir / "features.json").is_file():
        logger.info("building text (all-MiniLM-L6-v2) and kg (TF-IDF + SVD) modalities into %s", dataset_dir)
        build_features(raw, dataset_dir)
    run_dir = workdir / "run"
    overrides = {"max_epochs": max_epochs} if max_epochs else None
    metrics = run_fit(model, dataset_dir, run_dir, train_overrides=overrides, progress=True)
    recomputed = evaluate_bundle_on_split(run_dir / "bundles", run_dir / SPLIT_FILE, label=2)
    print(f"\n{model} on MovieLens-100K ({metrics['dataset_summary']['modalities']}), seed {metrics['seed']}, "
          f"best valid epoch {metrics['best_epoch']}, {metrics['seconds_per_epoch']:.2f} s/epoch on {metrics['device']}")
    print("| split | Recall@10 | Recall@20 | NDCG@20 | Precision@20 |")
    print("|---|---|---|---|---|")
    for split in ("valid", "test"):
        m = metrics[split]
        print(f"| {split} | {m['recall@10']:.4f} | {m['recall@20']:.4f} | {m['ndcg@20']:.4f} | {m['precision@20']:.4f} |")
    print(f"| test, recomputed from the bundle | {recomputed['recall@10']:.4f} | {recomputed['recall@20']:.4f} | "
          f"{recomputed['ndcg@20']:.4f} | – |")
    print(f"bundle: {metrics['bundle']}")
    return run_dir
