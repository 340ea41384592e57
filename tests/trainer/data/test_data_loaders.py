"""Readers of the four on-disk formats, format detection and error messages, on tiny fixtures."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from data_fixtures import write_feature, write_json, write_lines, write_mmrec, write_recbole

from trainer.data import detect_format, load_dataset
from trainer.data.dataset import DatasetError
from trainer.data.kg import read_recbole_kg


def pairs(matrix, dataset) -> set[tuple[str, str]]:
    coo = matrix.tocoo()
    return {(dataset.user_ids[u], dataset.item_ids[i]) for u, i in zip(coo.row, coo.col, strict=True)}


# ---------------------------------------------------------------- MMRec
MMREC_ROWS = [
    ("0", "0", 0),
    ("0", "1", 0),
    ("0", "2", 1),
    ("1", "1", 0),
    ("1", "3", 2),
    ("2", "0", 0),
    ("2", "2", 2),
]


def test_mmrec_reads_split_ids_and_features(tmp_path):
    directory = tmp_path / "toy"
    write_mmrec(directory, MMREC_ROWS + [("0", "0", 0)])  # a repeated row collapses
    image = np.arange(4 * 3, dtype=np.float64).reshape(4, 3)
    write_feature(directory, "image", image)
    write_feature(directory, "text", np.ones((4, 2), dtype=np.float32))

    dataset = load_dataset(directory)

    assert detect_format(directory) == "mmrec"
    assert dataset.name == "toy"
    assert dataset.user_ids == ["0", "1", "2"] and dataset.item_ids == ["0", "1", "2", "3"]
    assert pairs(dataset.train, dataset) == {("0", "0"), ("0", "1"), ("1", "1"), ("2", "0")}
    assert pairs(dataset.valid, dataset) == {("0", "2")}
    assert pairs(dataset.test, dataset) == {("1", "3"), ("2", "2")}
    assert dataset.features["image"].dtype == np.float32
    np.testing.assert_array_equal(dataset.features["image"], image.astype(np.float32))
    assert dataset.modality_dims == {"image": 3, "text": 2}
    assert dataset.kg is None


def test_holdout_rows_of_users_without_training_rows_are_dropped_in_every_format(tmp_path, caplog):
    # user 9 has valid and test rows but nothing to train on: DESIGN.md drops those rows (it has no representation)
    mmrec = tmp_path / "mmrec"
    write_mmrec(mmrec, MMREC_ROWS + [("9", "1", 1), ("9", "3", 2)])
    lattice = tmp_path / "lattice"
    write_json(lattice / "train.json", {"0": [0, 1], "1": [2, 3]})
    write_json(lattice / "val.json", {"0": [2], "2": [1]})
    write_json(lattice / "test.json", {"1": [0], "2": [3]})
    kgat = tmp_path / "kgat"
    write_lines(kgat / "train.txt", ["0 0 1 2", "1 1 2"])
    write_lines(kgat / "test.txt", ["0 3", "2 0 1"])
    write_lines(kgat / "kg_final.txt", ["0 0 5"])
    for directory, user in ((mmrec, "9"), (lattice, "2"), (kgat, "2")):
        with caplog.at_level(logging.WARNING, logger="trainer.data.loaders"):
            dataset = load_dataset(directory)
        row = dataset.user_ids.index(user)
        assert dataset.train.getrow(row).nnz == 0
        assert dataset.valid.getrow(row).nnz == 0 and dataset.test.getrow(row).nnz == 0, directory.name
        assert "without training interactions" in caplog.text
        caplog.clear()
    kept = load_dataset(mmrec)
    assert pairs(kept.test, kept) == {("1", "3"), ("2", "2")}  # the other users' rows stay


def test_mmrec_item_order_is_numeric_and_external_ids_kept(tmp_path):
    directory = tmp_path / "ext"
    write_mmrec(directory, [("10", "2", 0), ("10", "10", 0), ("9", "1", 0), ("9", "10", 1)])
    write_feature(directory, "text", np.arange(3, dtype=np.float32)[:, None] * np.ones((3, 2), np.float32))
    dataset = load_dataset(directory)
    assert dataset.user_ids == ["9", "10"]
    assert dataset.item_ids == ["1", "2", "10"]  # numeric, not lexicographic ("10" < "2")
    assert pairs(dataset.valid, dataset) == {("9", "10")}


def test_mmrec_dense_ids_when_features_cover_max_id_plus_one(tmp_path):
    directory = tmp_path / "dense"
    write_mmrec(directory, [("0", "0", 0), ("0", "3", 0), ("1", "1", 0), ("1", "3", 2)])
    write_feature(directory, "image", np.random.default_rng(0).random((4, 2)))
    dataset = load_dataset(directory)
    assert dataset.item_ids == ["0", "1", "2", "3"]  # item 2 has no interaction but a feature row
    assert dataset.train.shape == (2, 4)


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("1\t2\t5\tx", "expected an integer x_label"),
        ("1\t2\t5\t7", "expected x_label 0, 1 or 2"),
        ("1\t2\t5", "expected 4 '\\t'-separated fields"),
        ("\t2\t5\t0", "expected non-empty userID and itemID"),
    ],
)
def test_mmrec_malformed_line_names_file_and_line(tmp_path, bad_line, expected):
    directory = tmp_path / "bad"
    path = write_mmrec(directory, [("0", "0", 0), ("0", "1", 0)])
    path.write_text(path.read_text() + bad_line + "\n")
    with pytest.raises(DatasetError) as info:
        load_dataset(directory)
    assert "bad.inter:4:" in str(info.value)
    assert expected in str(info.value)


def test_mmrec_missing_column_and_overlapping_splits(tmp_path):
    directory = tmp_path / "nolabel"
    write_lines(directory / "nolabel.inter", ["userID\titemID\tx_label_typo", "0\t0\t0"])
    with pytest.raises(DatasetError, match="unknown .inter header"):
        load_dataset(directory)
    directory = tmp_path / "overlap"
    write_mmrec(directory, [("0", "0", 0), ("0", "0", 2), ("1", "1", 0)])
    with pytest.raises(DatasetError, match="both 'train' and 'test'"):
        load_dataset(directory)


def test_feature_row_count_mismatch(tmp_path):
    directory = tmp_path / "rows"
    write_mmrec(directory, MMREC_ROWS)
    write_feature(directory, "image", np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(DatasetError, match=r"feature 'image' has 3 rows, expected 4"):
        load_dataset(directory)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, 1e300])  # 1e300 overflows the float32 cast
def test_feature_nan_or_inf_names_modality_and_first_row(tmp_path, bad_value):
    directory = tmp_path / "nan"
    write_mmrec(directory, MMREC_ROWS)
    matrix = np.zeros((4, 2), dtype=np.float64)
    matrix[2, 1] = bad_value
    matrix[3, 0] = bad_value
    write_feature(directory, "text", matrix)
    with pytest.raises(DatasetError, match=r"feature 'text' contains NaN or inf.*first at row 2"):
        load_dataset(directory)


def test_feature_must_be_floating_and_2d(tmp_path):
    directory = tmp_path / "dtype"
    write_mmrec(directory, MMREC_ROWS)
    write_feature(directory, "text", np.zeros((4, 2), dtype=np.int64))
    with pytest.raises(DatasetError, match="must be floating point, got dtype int64"):
        load_dataset(directory)
    write_feature(directory, "text", np.zeros(4, dtype=np.float32))
    with pytest.raises(DatasetError, match=r"must be 2-d"):
        load_dataset(directory)


def test_mmrec_with_kg_files(tmp_path):
    directory = tmp_path / "kgtoy"
    write_mmrec(directory, MMREC_ROWS)
    write_lines(
        directory / "kgtoy.kg",
        [
            "head_id:token\trelation_id:token\ttail_id:token",
            "e0\tgenre\tg1",
            "e1\tgenre\tg1",
            "e1\tactor\ta9",
            "e1\tactor\ta9",
        ],
    )
    write_lines(directory / "kgtoy.link", ["item_id:token\tentity_id:token", "1\te1", "0\te0", "3\te_alone"])
    dataset = load_dataset(directory)
    kg = dataset.kg
    assert kg is not None
    # linked entities in item order, then the others sorted
    assert kg.entity_ids == ["e0", "e1", "e_alone", "a9", "g1"]
    assert kg.relation_ids == ["actor", "genre"]
    assert kg.item_entity.tolist() == [0, 1, -1, 2]
    assert sorted(map(tuple, kg.triples.tolist())) == [(0, 1, 4), (1, 0, 3), (1, 1, 4)]


def test_mmrec_kg_without_link_is_an_error(tmp_path):
    directory = tmp_path / "halfkg"
    write_mmrec(directory, MMREC_ROWS)
    write_lines(directory / "halfkg.kg", ["head_id:token\trelation_id:token\ttail_id:token", "a\tr\tb"])
    with pytest.raises(DatasetError, match=r"missing required file .*halfkg.link"):
        load_dataset(directory)


# ---------------------------------------------------------------- KG stats and link policy
def _kg_files(tmp_path, link_rows):
    kg = write_lines(
        tmp_path / "x.kg",
        ["head_id:token\trelation_id:token\ttail_id:token", "m1\tr\tm2", "m2\tr\tm1", "m1\tr\tm2"],
    )
    link = write_lines(tmp_path / "x.link", ["item_id:token\tentity_id:token"] + link_rows)
    return kg, link


def test_kg_stats_count_dangling_links_and_duplicates(tmp_path):
    kg_path, link_path = _kg_files(tmp_path, ["a\tm1", "b\tm_none", "dropped\tm2"])
    kg, stats = read_recbole_kg(
        kg_path, link_path, {"a": 0, "b": 1, "c": 2}, items_without_interactions={"dropped"}
    )
    assert stats.n_triples == 2 and stats.n_duplicate_triples == 1
    assert stats.n_entities == 3 and stats.n_relations == 1
    assert stats.n_linked_items == 2 and stats.n_unlinked_items == 1
    assert stats.n_links_to_entities_without_triples == 1  # b -> m_none
    assert stats.n_links_for_items_without_interactions == 1  # dropped -> m2
    assert stats.as_dict()["n_dangling_links"] == 2
    assert kg.item_entity.tolist() == [0, 1, -1]


def test_link_for_unknown_item_is_an_error_unless_skipped(tmp_path):
    kg_path, link_path = _kg_files(tmp_path, ["a\tm1", "zz\tm2"])
    with pytest.raises(DatasetError, match=r"x.link:3: item id 'zz' appears in no interaction file"):
        read_recbole_kg(kg_path, link_path, {"a": 0})
    _, stats = read_recbole_kg(kg_path, link_path, {"a": 0}, unknown_link_items="skip")
    assert stats.n_links_for_items_without_interactions == 1


def test_item_linked_twice_and_malformed_kg_line(tmp_path):
    kg_path, link_path = _kg_files(tmp_path, ["a\tm1", "a\tm2"])
    with pytest.raises(DatasetError, match=r"x.link:3: .*line 2 already links it"):
        read_recbole_kg(kg_path, link_path, {"a": 0})
    kg_path.write_text(kg_path.read_text() + "m1\tr\n")
    with pytest.raises(DatasetError, match=r"x.kg:5: expected 3"):
        read_recbole_kg(kg_path, link_path, {"a": 0})


# ---------------------------------------------------------------- LATTICE json
def test_lattice_reads_dense_ids_and_features(tmp_path):
    directory = tmp_path / "baby"
    write_json(directory / "train.json", {"0": [0, 1], "1": [2, 3], "2": [1]})
    write_json(directory / "val.json", {"0": [2], "1": [4]})
    write_json(directory / "test.json", {"0": [3], "2": [4]})
    write_feature(directory, "image", np.ones((5, 4)))
    dataset = load_dataset(directory)
    assert detect_format(directory) == "lattice"
    assert dataset.user_ids == ["0", "1", "2"] and dataset.item_ids == [str(i) for i in range(5)]
    assert (dataset.train.nnz, dataset.valid.nnz, dataset.test.nnz) == (5, 2, 2)
    assert pairs(dataset.test, dataset) == {("0", "3"), ("2", "4")}
    assert dataset.features["image"].shape == (5, 4)


def test_lattice_item2id_sets_item_count(tmp_path):
    directory = tmp_path / "lat"
    write_json(directory / "train.json", {"0": [0], "1": [1]})
    write_json(directory / "val.json", {})
    write_json(directory / "test.json", {"0": [1]})
    write_json(directory / "item2id.json", {"C": 2, "A": 0, "B": 1})
    dataset = load_dataset(directory)
    assert dataset.n_items == 3
    assert dataset.item_ids == ["A", "B", "C"] and dataset.user_ids == ["0", "1"]  # external ids, row = json id
    assert pairs(dataset.test, dataset) == {("0", "B")}
    write_json(directory / "user2id.json", {"bob": 1, "ann": 0})
    assert load_dataset(directory).user_ids == ["ann", "bob"]
    write_json(directory / "user2id.json", {"ann": 0, " ": 1})
    with pytest.raises(DatasetError, match="empty user id"):
        load_dataset(directory)
    (directory / "user2id.json").unlink()
    write_json(directory / "item2id.json", {"A": 0})
    with pytest.raises(DatasetError, match="item id 1 is used in a split but item2id.json has only 1 ids"):
        load_dataset(directory)


def test_lattice_errors(tmp_path):
    directory = tmp_path / "latbad"
    write_json(directory / "train.json", {"0": [0, "x"]})
    write_json(directory / "val.json", {})
    write_json(directory / "test.json", {})
    with pytest.raises(
        DatasetError, match=r"train.json: user '0': expected non-negative integer item ids, got 'x'"
    ):
        load_dataset(directory)
    (directory / "val.json").unlink()
    write_json(directory / "train.json", {"0": [0]})
    with pytest.raises(DatasetError, match=r"missing required file .*val.json"):
        load_dataset(directory)
    write_lines(directory / "val.json", ["{", '  "0": [1,]', "}"])
    with pytest.raises(DatasetError, match=r"val.json:2: invalid JSON"):
        load_dataset(directory)


# ---------------------------------------------------------------- RecBole atomic
def test_recbole_applies_split_drops_unrated_items_and_loads_kg(tmp_path, caplog):
    directory = tmp_path / "rb"
    interactions = [(str(u), str(i)) for u in range(1, 4) for i in range(1, 13)]  # 3 users x 12 items
    interactions += [("4", "1"), ("4", "2")]  # < 3 interactions: all train
    interactions += [("1", "1")]  # repeated rating collapses
    items = {str(i): ("T", "2000", "Drama") for i in range(1, 14)}  # item 13 has no interaction
    write_recbole(
        directory,
        interactions,
        items,
        triples=[("e1", "r", "e2"), ("e13", "r", "e2")],
        links=[("1", "e1"), ("13", "e13")],
    )
    with caplog.at_level(logging.WARNING):
        dataset = load_dataset(directory, split_seed=7)
    assert detect_format(directory) == "recbole"
    assert "dropped 1 items listed without any interaction" in caplog.text
    assert dataset.n_users == 4 and dataset.n_items == 12 and "13" not in dataset.item_ids
    counts = [(m.getrow(u).nnz) for u in range(3) for m in (dataset.train, dataset.valid, dataset.test)]
    assert counts == [10, 1, 1] * 3
    assert (dataset.train.getrow(3).nnz, dataset.valid.getrow(3).nnz, dataset.test.getrow(3).nnz) == (2, 0, 0)
    assert dataset.kg.item_entity[0] == dataset.kg.entity_ids.index("e1")
    assert (dataset.kg.item_entity[1:] == -1).all()


def test_recbole_split_seed_changes_split_and_is_reproducible(tmp_path):
    directory = tmp_path / "rb2"
    write_recbole(directory, [(str(u), str(i)) for u in range(5) for i in range(20)])
    first, again, other = load_dataset(directory, 1), load_dataset(directory, 1), load_dataset(directory, 2)
    assert (first.test != again.test).nnz == 0
    assert (first.test != other.test).nnz > 0


@pytest.mark.parametrize(
    ("inter_lines", "expected"),
    [
        (["user_id:token\titem_id:token", "1\t2", "1"], r"rb3.inter:3: expected 2"),
        (["user_id:token\titem_id", "1\t2"], r"rb3.inter:1: expected a typed RecBole header"),
        (["user_id:token\trating:float", "1\t2"], r"header has no column 'item_id'"),
    ],
)
def test_recbole_malformed(tmp_path, inter_lines, expected):
    directory = tmp_path / "rb3"
    write_lines(directory / "rb3.inter", inter_lines)
    with pytest.raises(DatasetError, match=expected):
        load_dataset(directory)


# ---------------------------------------------------------------- KGAT text
def test_kgat_carves_valid_and_reads_kg(tmp_path):
    directory = tmp_path / "kgat"
    write_lines(directory / "train.txt", ["0 " + " ".join(map(str, range(18))), "1 0 1", "2"])
    write_lines(directory / "test.txt", ["0 18 19", "1 2"])
    write_lines(directory / "kg_final.txt", ["0 0 25", "25 1 1", "0 0 25", "3 1 30"])
    dataset = load_dataset(directory, split_seed=3)
    assert detect_format(directory) == "kgat"
    assert dataset.n_users == 3 and dataset.n_items == 20
    assert (dataset.train.getrow(0).nnz, dataset.valid.getrow(0).nnz, dataset.test.getrow(0).nnz) == (
        16,
        2,
        2,
    )
    assert (dataset.train.getrow(1).nnz, dataset.valid.getrow(1).nnz) == (2, 0)  # round(2/9) = 0
    assert (dataset.train + dataset.valid).getrow(0).indices.tolist() == list(range(18))
    kg = dataset.kg
    assert kg.n_entities == 31 and kg.n_relations == 2 and len(kg.triples) == 3
    assert kg.item_entity.tolist() == list(range(20))


def test_kgat_malformed(tmp_path):
    directory = tmp_path / "kgatbad"
    write_lines(directory / "train.txt", ["0 1 2", "1 3 x"])
    write_lines(directory / "test.txt", ["0 4"])
    with pytest.raises(DatasetError, match=r"train.txt:2: expected an integer item id"):
        load_dataset(directory)
    write_lines(directory / "train.txt", ["0 1 2"])
    write_lines(directory / "kg_final.txt", ["0 1 2", "0 1"])
    with pytest.raises(DatasetError, match=r"kg_final.txt:2: expected 3 integers"):
        load_dataset(directory)
    (directory / "test.txt").unlink()
    with pytest.raises(DatasetError, match=r"missing required file .*test.txt"):
        load_dataset(directory)


# ---------------------------------------------------------------- detection
def test_detect_format_errors(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        detect_format(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no known dataset format"):
        load_dataset(tmp_path / "empty")
    two = tmp_path / "two"
    write_mmrec(two, MMREC_ROWS, name="a")
    write_mmrec(two, MMREC_ROWS, name="b")
    with pytest.raises(DatasetError, match="several .inter files"):
        detect_format(two)
