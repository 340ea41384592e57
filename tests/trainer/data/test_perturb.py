"""`trainer perturb`: a dataset copy with N feature values moved by exactly one ulp, nothing else changed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.cli import main
from trainer.data import load_dataset
from trainer.data.dataset import DatasetError
from trainer.data.features import write_mmrec_dir
from trainer.data.perturb import choose_ulp_moves, perturb_features, shuffle_feature_rows
from trainer.data.synthetic import planted_dataset


@pytest.fixture()
def dataset_dir(tmp_path):
    data = planted_dataset(n_users=30, n_items=40, interactions_per_user=6, with_kg=False, seed=0)
    directory = write_mmrec_dir(data, tmp_path / "src" / "planted")
    (directory / "features.json").write_text(json.dumps({"build_key": "abc", "name": "planted"}), "utf-8")
    return directory


def test_choose_ulp_moves_hand_checked():
    features = {"b": np.array([[0.0, 2.0]], np.float32), "a": np.array([[1.0, 0.0], [0.0, 3.0]], np.float32)}
    # every nonzero entry: a[0,0], a[1,1], b[0,1] (modalities in sorted order)
    moves = choose_ulp_moves(features, 3, seed=5)
    assert sorted(moves) == ["a", "b"]
    assert moves["a"][0].tolist() == [0, 3] and moves["b"][0].tolist() == [1]
    assert all(np.isinf(d).all() for _, d in moves.values())
    assert choose_ulp_moves(features, 2, seed=5).keys() == choose_ulp_moves(features, 2, seed=5).keys()
    with pytest.raises(ValueError, match="between 1 and the 3 nonzero"):
        choose_ulp_moves(features, 4, seed=0)


def test_copy_moves_exactly_n_values_one_ulp_and_keeps_everything_else(dataset_dir, tmp_path):
    out = tmp_path / "copy" / "planted"
    report = perturb_features(dataset_dir, out, n_values=7, seed=3)
    source, copy = load_dataset(dataset_dir), load_dataset(out)
    assert sum(report["values_moved_one_ulp"].values()) == 7
    assert report["source_fingerprint"] == source.fingerprint() != copy.fingerprint() == report["fingerprint"]
    changed = 0
    for modality, before in source.features.items():
        after = copy.features[modality]
        differ = before != after
        changed += int(differ.sum())
        assert report["values_moved_one_ulp"].get(modality, 0) == int(differ.sum())
        # one ulp: the float32 bit patterns are neighbours
        steps = np.abs(before[differ].view(np.int32).astype(np.int64) - after[differ].view(np.int32).astype(np.int64))
        assert (steps == 1).all() and (before[differ] != 0).all()
    assert changed == 7
    for split in ("train", "valid", "test"):
        assert (getattr(source, split) != getattr(copy, split)).nnz == 0
    manifest = json.loads((out / "features.json").read_text("utf-8"))
    assert "build_key" not in manifest and manifest["perturbation"]["seed"] == 3
    assert manifest["perturbation"]["source_fingerprint"] == source.fingerprint()
    # the same seed gives the same copy
    again = perturb_features(dataset_dir, tmp_path / "again" / "planted", n_values=7, seed=3)
    assert again["fingerprint"] == report["fingerprint"]


def test_refusals_leave_nothing_behind(dataset_dir, tmp_path):
    with pytest.raises(DatasetError, match="exists"):
        perturb_features(dataset_dir, dataset_dir, n_values=1)
    with pytest.raises(DatasetError, match="between 1 and"):
        perturb_features(dataset_dir, tmp_path / "none", n_values=0)
    np.save(dataset_dir / "text_feat.npy", np.load(dataset_dir / "text_feat.npy").astype(np.float64))
    with pytest.raises(DatasetError, match="needs float32"):
        perturb_features(dataset_dir, tmp_path / "none", n_values=1)
    assert not (tmp_path / "none").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".none")]


def test_cli_prints_the_report_and_reports_errors(dataset_dir, tmp_path, capsys):
    out = tmp_path / "cli" / "planted"
    assert main(["perturb", "--dataset", str(dataset_dir), "--out", str(out), "--values", "2"]) == 0
    assert sum(json.loads(capsys.readouterr().out)["values_moved_one_ulp"].values()) == 2
    assert main(["perturb", "--dataset", str(dataset_dir), "--out", str(out), "--values", "2"]) == 2
    assert "exists" in capsys.readouterr().err


def test_shuffled_copy_gives_every_item_another_items_features_in_every_modality(dataset_dir, tmp_path):
    out = tmp_path / "shuffled" / "planted"
    report = shuffle_feature_rows(dataset_dir, out, seed=4)
    source, copy = load_dataset(dataset_dir), load_dataset(out)
    assert report["source_fingerprint"] == source.fingerprint() != copy.fingerprint() == report["fingerprint"]
    permutation = np.random.default_rng(4).permutation(source.n_items)
    assert len(source.features) >= 2
    for modality, before in source.features.items():
        after = copy.features[modality]
        np.testing.assert_array_equal(after, before[permutation])  # the same permutation for every modality
        # the same multiset of rows, but items hold other rows
        assert sorted(map(bytes, after)) == sorted(map(bytes, before))
    assert report["items_moved"] == int((permutation != np.arange(source.n_items)).sum()) > source.n_items // 2
    for split in ("train", "valid", "test"):
        assert (getattr(source, split) != getattr(copy, split)).nnz == 0
    manifest = json.loads((out / "features.json").read_text("utf-8"))
    assert "build_key" not in manifest
    assert manifest["perturbation"]["item_rows_shuffled"] is True and manifest["perturbation"]["permutation_seed"] == 4


def test_shuffle_cli_and_refusals(dataset_dir, tmp_path, capsys):
    out = tmp_path / "cli" / "planted"
    assert main(["perturb", "--dataset", str(dataset_dir), "--out", str(out), "--shuffle-rows", "--seed", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["permutation_seed"] == 2
    assert main(["perturb", "--dataset", str(dataset_dir), "--out", str(out), "--shuffle-rows"]) == 2
    assert "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --values and --shuffle-rows exclude each other
        main(["perturb", "--dataset", str(dataset_dir), "--out", str(tmp_path / "x"), "--values", "1", "--shuffle-rows"])
    assert not (tmp_path / "x").exists()
