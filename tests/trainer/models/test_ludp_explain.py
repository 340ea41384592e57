"""``trainer.explain`` on a briefly trained LUDP: the report's parts add up to the scores it explains."""

from __future__ import annotations

import pytest
import torch

from trainer.config import RunConfig, TrainConfig
from trainer.data.synthetic import planted_dataset
from trainer.explain import ExplainError, explain, format_explanation
from trainer.loop import fit, save_checkpoint


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    dataset = planted_dataset(n_users=40, n_items=60, n_clusters=3, interactions_per_user=10, seed=1)
    run_dir = tmp_path_factory.mktemp("ludp_run")
    results = {}
    for fusion in ("attention", "concat"):
        run = RunConfig(
            model="ludp",
            model_params={"embedding_dim": 8, "knn_k": 3, "item_graph_layers": 2, "fusion": fusion},
            train=TrainConfig(lr=1e-2, batch_size=128, max_epochs=2, patience=2, seed=3, device="cpu"),
        )
        result = fit(dataset, run, progress=False)
        save_checkpoint(run_dir / fusion / "checkpoint.pt", run, result.model, result.best_epoch)
        results[fusion] = (run_dir / fusion, result.model)
    return dataset, results


@pytest.mark.parametrize("fusion", ["attention", "concat"])
def test_explain_report_decomposes_scores_exactly(trained_run, fusion):
    dataset, results = trained_run
    run_dir, model = results[fusion]
    user_id = dataset.user_ids[4]
    report = explain(run_dir, user_id, k=5, n_reasons=dataset.n_items, dataset=dataset)
    assert report["model"] == "ludp" and len(report["recommendations"]) == 5
    history = set(dataset.train[4].indices.tolist())
    with torch.no_grad():
        users, items = model.representations()
    for rec in report["recommendations"]:
        item = dataset.item_ids.index(rec["item_id"])
        assert item not in history
        assert rec["score"] == pytest.approx(float(users[4] @ items[item]), abs=1e-4)
        assert sum(rec["score_parts"].values()) == pytest.approx(rec["score"], abs=1e-4)
        # every neighbour listed (n_reasons = n_items): contributions add up to the item-graph part
        total = sum(n["contribution"] for n in rec["graph_neighbours"])
        assert total == pytest.approx(rec["score_parts"]["item_graph"], abs=1e-4)
    scores = [rec["score"] for rec in report["recommendations"]]
    assert scores == sorted(scores, reverse=True)
    if fusion == "attention":
        assert sum(report["user_modality_weights"].values()) == pytest.approx(1.0, abs=1e-5)
        assert all(
            sum(r["item_modality_weights"].values()) == pytest.approx(1.0, abs=1e-5)
            for r in report["recommendations"]
        )
    else:
        assert report["user_modality_weights"] is None
    text = format_explanation(report)
    assert user_id in text and report["recommendations"][0]["item_id"] in text


def test_explain_rejects_unknown_user_and_missing_run(trained_run, tmp_path):
    dataset, results = trained_run
    with pytest.raises(ExplainError, match="not in dataset"):
        explain(results["attention"][0], "nobody", dataset=dataset)
    with pytest.raises(ExplainError, match="no checkpoint"):
        explain(tmp_path, dataset.user_ids[0], dataset=dataset)
