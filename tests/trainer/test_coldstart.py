"""Cold-start evaluation: the held-out item split, the content reference, and an end-to-end run on planted data."""

import json

import numpy as np
import pytest
import scipy.sparse as sp

from trainer.coldstart import (
    COLD_START_FILE,
    ColdStartError,
    content_profile_scores,
    run_cold_start,
    split_cold_items,
)
from trainer.data.dataset import InteractionDataset, KnowledgeGraph
from trainer.data.synthetic import planted_dataset
from trainer.modules.cold_start import DEFAULT_NEIGHBOURS


def _csr(pairs, shape):
    rows, cols = zip(*pairs, strict=True) if pairs else ((), ())
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)


def tiny_dataset() -> InteractionDataset:
    """3 users x 5 items; item 4 has no interaction at all, so it can never be held out. User a trains on i0 and
    i1, users b and c on i2 and i3."""
    features = {"text": np.arange(10, dtype=np.float32).reshape(5, 2) + 1}
    kg = KnowledgeGraph(
        triples=np.array([[0, 0, 1]], dtype=np.int64),
        entity_ids=["e0", "e1"],
        relation_ids=["r"],
        item_entity=np.array([0, -1, 1, -1, -1], dtype=np.int64),
    )
    return InteractionDataset(
        name="tiny",
        user_ids=["a", "b", "c"],
        item_ids=["i0", "i1", "i2", "i3", "i4"],
        train=_csr([(0, 0), (0, 1), (1, 2), (1, 3), (2, 2), (2, 3)], (3, 5)),
        valid=_csr([(1, 0)], (3, 5)),
        test=_csr([(2, 1)], (3, 5)),
        features=features,
        kg=kg,
    )


def test_split_removes_every_interaction_of_the_held_out_items_and_keeps_the_rest():
    data = tiny_dataset()
    seed = next(s for s in range(50) if split_cold_items(data, 0.5, s).cold_items.tolist() in ([0, 2], [1, 3]))
    split = split_cold_items(data, fraction=0.5, seed=seed)  # 4 items with interactions -> 2 held out
    cold = split.cold_items.tolist()  # every user keeps a training item
    assert len(cold) == 2 and 4 not in cold and cold == sorted(cold)
    warm_items = [i for i in range(5) if i not in cold]
    assert split.warm.item_ids == [data.item_ids[i] for i in warm_items]
    assert split.cold_item_ids == [data.item_ids[i] for i in cold]
    assert split.warm.user_ids == data.user_ids
    for name in ("train", "valid", "test"):
        np.testing.assert_array_equal(getattr(split.warm, name).toarray(), getattr(data, name).toarray()[:, warm_items])
    np.testing.assert_array_equal(split.warm.features["text"], data.features["text"][warm_items])
    np.testing.assert_array_equal(split.cold_features["text"], data.features["text"][cold])
    np.testing.assert_array_equal(split.warm.kg.item_entity, data.kg.item_entity[warm_items])
    everything = (data.train + data.valid + data.test).toarray()
    np.testing.assert_array_equal(split.cold_truth.toarray(), everything[:, cold])
    # nothing lost: warm + held-out interactions are all the interactions
    warm_total = split.warm.train.nnz + split.warm.valid.nnz + split.warm.test.nnz
    assert warm_total + split.cold_truth.nnz == int(everything.sum())
    assert split_cold_items(data, 0.5, seed=seed).cold_items.tolist() == cold  # seeded


def test_users_whose_training_items_are_all_held_out_are_not_evaluated():
    data = tiny_dataset()
    seed = next(s for s in range(50) if split_cold_items(data, 0.5, s).cold_items.tolist() == [2, 3])
    split = split_cold_items(data, fraction=0.5, seed=seed)  # b and c lose every training item
    assert split.warm.train.getrow(1).nnz == split.warm.train.getrow(2).nnz == 0
    # b's valid row (i0) and c's test row (i1) are dropped, and so are their held-out interactions; a keeps all
    assert split.warm.valid.nnz == split.warm.test.nnz == 0
    everything = (data.train + data.valid + data.test).toarray()
    np.testing.assert_array_equal(split.cold_truth.toarray(), np.array([[0, 0], [0, 0], [0, 0]]))
    np.testing.assert_array_equal(split.warm.train.toarray()[0], everything[0][[0, 1, 4]])


def test_split_rejects_what_it_cannot_evaluate():
    data = tiny_dataset()
    with pytest.raises(ColdStartError, match="in \\(0, 1\\)"):
        split_cold_items(data, 1.0, 0)
    with pytest.raises(ColdStartError, match="both need at least one"):
        split_cold_items(data, 0.01, 0)
    data.features = {}
    with pytest.raises(ColdStartError, match="no item features"):
        split_cold_items(data, 0.5, 0)


def test_content_profile_is_the_summed_cosine_to_the_mean_unit_feature_of_the_users_items():
    # user 0 trained on warm items 0 (1, 0) and 1 (0, 2): profile = unit((1, 0) + (0, 1)) = (1, 1) / sqrt 2
    train = _csr([(0, 0), (0, 1)], (2, 2))  # user 1 has no training items: zero profile
    warm = {"m": np.array([[1.0, 0.0], [0.0, 2.0]], dtype=np.float32)}
    cold = {"m": np.array([[3.0, 0.0], [1.0, 1.0], [0.0, 0.0]], dtype=np.float32)}
    users, items = content_profile_scores(train, warm, cold)
    scores = users @ items.T
    np.testing.assert_allclose(scores[0], [1 / np.sqrt(2), 1.0, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(scores[1], [0.0, 0.0, 0.0])


@pytest.mark.parametrize(("model", "source"), [("ludp", "model"), ("lightgcn", "feature_neighbour_mean")])
def test_cold_start_run_on_planted_data_beats_random_and_writes_its_report(tmp_path, model, source):
    data = planted_dataset(n_users=120, n_items=100, interactions_per_user=20, seed=4)
    out = tmp_path / "cold"
    result = run_cold_start(
        model, tmp_path / "planted", out, fraction=0.5, split_seed=1,
        train_overrides={"max_epochs": 15, "lr": 0.01, "device": "cpu"}, dataset=data, progress=False,
        neighbour_ks=(1, DEFAULT_NEIGHBOURS),
    )
    assert result["encoder_source"] == source  # LightGCN has no encoder of its own: the export's neighbour mean
    assert set(result["neighbour_mean_by_k"]) == {"1", str(DEFAULT_NEIGHBOURS)}
    if source == "feature_neighbour_mean":  # the default k in torch is the exported ONNX encoder, ranked alike
        for metric, value in result["encoder"].items():
            assert result["neighbour_mean_by_k"][str(DEFAULT_NEIGHBOURS)][metric] == pytest.approx(value, abs=1e-6), metric
    assert result["n_cold_items"] == 50 and result["n_users_evaluated"] > 100
    assert set(result["encoder"]) >= {"recall@10", "recall@20", "recall@50"}
    assert result["random_expected"]["recall@20"] == pytest.approx(0.4)
    # 5 planted clusters: a user's held-out items are mostly the 10 of its cluster; the encoder (kNN over the
    # warm items' features) and the content profile both find them far more often than chance
    assert result["encoder"]["recall@20"] > 0.4 + 0.3
    assert result["content_profile"]["recall@20"] > 0.4 + 0.3
    reserved = result["served"]["new_item_slots=2"]
    assert reserved["cold_catalogue_share"] == pytest.approx(0.5)
    assert reserved["cold_share@20"] >= 2 / 20  # the reserved places are always filled (50 new items exist)
    # the planted clusters make the reserved places far better used than random held-out items would
    assert reserved["new_item_precision"] > reserved["new_item_precision_random"] + 0.3
    assert result["served"]["new_item_slots=0"]["cold_share@20"] <= reserved["cold_share@20"]
    saved = json.loads((out / COLD_START_FILE).read_text())
    assert saved["cold_item_ids"] == result["cold_item_ids"] and len(saved["cold_item_ids"]) == 50
    from trainer.coldstart import reevaluate_cold_start

    again = reevaluate_cold_start(out, dataset=data)  # no training: the same items, the same bundle
    assert again["encoder"] == result["encoder"] and again["cold_item_ids"] == result["cold_item_ids"]
    assert "neighbour_mean_by_k" not in again  # not asked for this time: no stale figures kept
    other = "sand" if model != "sand" else "ludp"
    with pytest.raises(ColdStartError, match=f"not '{other}'"):
        reevaluate_cold_start(out, dataset=data, model=other)
    metrics = json.loads((out / "warm_run" / "metrics.json").read_text())
    assert metrics["derived_dataset"]["held_out_items"] == 50
    assert metrics["dataset_summary"]["n_items"] == 50
    from trainer.pipeline import export_checkpoint

    with pytest.raises(ValueError, match="names no dataset"):
        export_checkpoint(out / "warm_run")


def test_validation_split_never_contains_the_held_out_items_it_removes():
    from trainer.coldstart import held_out_split

    data = planted_dataset(n_users=120, n_items=100, interactions_per_user=20, seed=4)
    held_out = held_out_split(data, 0.2, seed=3)
    validation = held_out_split(data, 0.2, seed=3, validation=True)
    removed = set(held_out.cold_item_ids)
    assert len(removed) == 20 and len(validation.cold_item_ids) == 16  # 20% of the 80 items left
    assert removed.isdisjoint(validation.cold_item_ids) and validation.removed_item_ids == held_out.cold_item_ids
    assert removed.isdisjoint(validation.warm.item_ids)  # trained on neither set
    assert set(validation.warm.item_ids) | set(validation.cold_item_ids) == set(held_out.warm.item_ids)
    assert validation.cold_truth.shape == (data.n_users, 16)
    for name, matrix in validation.cold_features.items():  # the right rows of the original features
        rows = [data.item_ids.index(item) for item in validation.cold_item_ids]
        np.testing.assert_array_equal(matrix, data.features[name][rows])
    assert held_out_split(data, 0.2, seed=3).cold_item_ids == held_out.cold_item_ids  # seeded


def test_too_few_held_out_items_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "cold"
    with pytest.raises(ColdStartError, match="only 8 held-out items"):
        run_cold_start("ludp", tmp_path / "planted", out, dataset=planted_dataset(n_users=30, n_items=40))
    assert not out.exists()


def test_summary_is_mean_and_std_over_runs_of_one_held_out_split():
    from trainer.coldstart import summarize

    def result(seed, recall):
        metrics = {"recall@20": recall, "ndcg@20": recall / 2}
        return {"model": "ludp", "train_seed": seed, "n_cold_items": 30, "cold_item_ids": ["a", "b"],
                "random_expected": {"recall@20": 20 / 30}, "encoder": metrics, "content_profile": metrics,
                "warm_valid": {"recall@20": 0.3}}

    summary = summarize([result(1, 0.2), result(2, 0.4)])
    assert summary["train_seeds"] == [1, 2]
    assert summary["encoder_recall@20"] == pytest.approx((0.3, np.sqrt(0.02)))
    assert summary["encoder_ndcg@20"] == pytest.approx((0.15, np.sqrt(0.005)))
    other = result(3, 0.1)
    other["cold_item_ids"] = ["c"]
    with pytest.raises(ColdStartError, match="different items"):
        summarize([result(1, 0.2), other])


@pytest.mark.parametrize(
    ("model", "params", "source"),
    [
        ("multikg4rec", {"cold_start_encoder": "multimodal"}, "model"),
        ("multikg4rec", {}, "feature_neighbour_mean"),  # the default since session 9
        ("kgat", {}, "feature_neighbour_mean"),  # no multimodal part: only the export's neighbour mean
    ],
)
def test_multikg4rec_and_kgat_with_their_knowledge_graph_run(tmp_path, model, params, source):
    data = planted_dataset(n_users=60, n_items=120, interactions_per_user=15, seed=5)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"model_params": params}))
    result = run_cold_start(
        model, tmp_path / "planted", tmp_path / "out", fraction=0.5, split_seed=2, config_path=config,
        train_overrides={"max_epochs": 2, "device": "cpu"}, dataset=data, progress=False,
    )
    assert result["encoder_source"] == source
    assert result["n_cold_items"] == 60
    assert 0.0 <= result["encoder"]["recall@20"] <= 1.0 and result["n_users_evaluated"] > 0


def test_cli_runs_seeds_prints_the_summary_and_evaluates_again_without_training(tmp_path, capsys):
    from trainer.cli import main
    from trainer.data.features import write_mmrec_dir

    data = planted_dataset(n_users=80, n_items=100, interactions_per_user=15, with_kg=False, seed=6)
    data_dir = write_mmrec_dir(data, tmp_path / "planted")
    out = tmp_path / "cold"
    common = ["coldstart", "--model", "ludp", "--dataset", str(data_dir), "--out", str(out), "--quiet",
              "--cold-fraction", "0.3", "--served-slots", "0", "3"]
    assert main([*common, "--seeds", "1", "2", "--jobs", "2", "--max-epochs", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "30 held-out items" in printed and "training seeds [1, 2]" in printed
    assert "new_item_slots=3" in printed and "random (expected)" in printed
    report = json.loads((out / "seed2" / COLD_START_FILE).read_text())
    assert report["train_seed"] == 2 and set(report["served"]) == {"new_item_slots=0", "new_item_slots=3"}
    assert main([*common, "--seeds", "1", "2", "--evaluate-only"]) == 0
    assert json.loads((out / "seed2" / COLD_START_FILE).read_text())["encoder"] == report["encoder"]
    capsys.readouterr()
    single = [arg if arg != str(out) else str(out / "seed1") for arg in common]
    assert main([*single, "--evaluate-only"]) == 0  # one run, its own report format
    assert "held-out share of the top 20" in capsys.readouterr().out
    validation = ["coldstart", "--model", "lightgcn", "--dataset", str(data_dir), "--out", str(tmp_path / "valid"),
                  "--quiet", "--cold-fraction", "0.3", "--validation", "--neighbour-k", "3", "10",
                  "--max-epochs", "2", "--device", "cpu"]
    assert main(validation) == 0
    printed = capsys.readouterr().out
    assert "21 VALIDATION held-out items" in printed  # 30% of the 70 items the split leaves
    assert "neighbour mean, k=3" in printed and "neighbour mean, k=10" in printed
    report = json.loads((tmp_path / "valid" / COLD_START_FILE).read_text())
    assert report["validation"] and set(report["removed_item_ids"]).isdisjoint(report["cold_item_ids"])
    assert main(["coldstart", "--model", "lightgcn", "--dataset", str(data_dir), "--out", str(tmp_path / "valid"),
                 "--evaluate-only"]) == 0  # the validation flag is read from the report
    assert "21 VALIDATION held-out items" in capsys.readouterr().out
    assert main([*validation, "--neighbour-k", "0"]) == 2
    assert "--neighbour-k must be >= 1" in capsys.readouterr().err
    refused = ["coldstart", "--model", "mf", "--dataset", str(data_dir), "--out", str(tmp_path / "mf")]
    assert main([*refused, "--cold-fraction", "1.5"]) == 2
    assert "cold fraction must be in (0, 1)" in capsys.readouterr().err and not (tmp_path / "mf").exists()
