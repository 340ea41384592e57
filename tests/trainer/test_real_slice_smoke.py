"""One-epoch smoke run of every registered model on a real slice of MovieLens-100K.

The slice keeps the first 150 users (by id) of the RecBole files with their items; its two modalities are
real but cheap to build: `kg` (TF-IDF of Freebase neighbours, SVD 32-d — the feature builder's own function)
and `title` (TF-IDF of "title (year): genres", SVD 32-d). The KG comes along. Each model trains one epoch,
exports a bundle, and the bundle's test metrics are recomputed independently.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from trainer.data.features import item_texts, kg_tfidf_svd
from trainer.data.recbole import read_item_table
from trainer.models.registry import MODELS


@pytest.fixture(scope="module")
def ml100k_slice(shared_datasets):
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    from trainer.data import load_dataset

    full = load_dataset(shared_datasets / "ml-100k")
    users = np.arange(150)
    train = full.train[users]
    items = np.flatnonzero(np.asarray(train.sum(axis=0)).ravel() > 0)
    kg_features, _ = kg_tfidf_svd(full.kg, full.n_items, 32)
    texts = item_texts(read_item_table(shared_datasets / "ml-100k" / "ml-100k.item"), full.item_ids)
    tfidf = TfidfVectorizer().fit_transform(texts)
    title = normalize(TruncatedSVD(32, random_state=0).fit_transform(tfidf)).astype(np.float32)
    kg = dataclasses.replace(full.kg, item_entity=full.kg.item_entity[items])
    sliced = dataclasses.replace(
        full,
        name="ml-100k-slice",
        user_ids=[full.user_ids[u] for u in users],
        item_ids=[full.item_ids[i] for i in items],
        train=full.train[users][:, items].tocsr(),
        valid=full.valid[users][:, items].tocsr(),
        test=full.test[users][:, items].tocsr(),
        features={"kg": kg_features[items], "title": title[items]},
        kg=kg,
    )
    sliced.validate()
    return sliced


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_epoch_on_real_slice_exports_a_consistent_bundle(name, ml100k_slice, tmp_path):
    from trainer.bundle_eval import evaluate_bundle_on_split
    from trainer.loop import SPLIT_FILE
    from trainer.pipeline import run_fit

    metrics = run_fit(
        name, tmp_path / "ml-100k-slice", tmp_path / "run", dataset=ml100k_slice, progress=False,
        train_overrides={"max_epochs": 1, "device": "cpu", "seed": 3},
    )
    assert metrics["epochs_run"] == 1 and metrics["best_epoch"] == 1
    for split in ("valid", "test"):
        assert 0.0 <= metrics[split]["recall@20"] <= 1.0 and metrics[split]["n_users"] > 100
    recomputed = evaluate_bundle_on_split(tmp_path / "run" / "bundles", tmp_path / "run" / SPLIT_FILE)
    assert recomputed["recall@20"] == pytest.approx(metrics["test"]["recall@20"], abs=2e-3)
    assert recomputed["n_users"] == metrics["test"]["n_users"]
