"""Realistic-but-awkward input files: byte-order marks, ids of equal numeric value, empty modalities, items
sharing a KG entity."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from data_fixtures import write_feature, write_mmrec, write_recbole

from trainer.data import load_dataset
from trainer.data.dataset import DatasetError
from trainer.data.parsing import sorted_ids
from trainer.kg import build_collaborative_kg

BOM = "\ufeff"


def _prepend_bom(path) -> None:
    path.write_bytes((BOM + path.read_text(encoding="utf-8")).encode("utf-8"))


def test_utf8_byte_order_mark_is_not_part_of_the_header(tmp_path):
    directory = tmp_path / "bom"
    interactions = [(str(u), str(i)) for u in range(1, 5) for i in range(1, 6)]
    write_recbole(directory, interactions, triples=[("e1", "r", "e2")], links=[("1", "e1")])
    for suffix in (".inter", ".kg", ".link"):
        _prepend_bom(directory / f"bom{suffix}")
    dataset = load_dataset(directory)
    assert dataset.user_ids == ["1", "2", "3", "4"]
    assert dataset.kg is not None and dataset.kg.item_entity[0] == 0

    mmrec = tmp_path / "bommm"
    _prepend_bom(write_mmrec(mmrec, [("0", "0", 0), ("0", "1", 1), ("1", "1", 0)]))
    assert load_dataset(mmrec).train.nnz == 2


def test_ids_of_equal_numeric_value_have_one_order():
    ids = {str(n).zfill(width) for n in range(20) for width in (1, 2, 3)}
    expected = sorted(ids, key=lambda i: (int(i), i))
    assert sorted_ids(ids) == expected
    assert sorted_ids(sorted(ids, reverse=True)) == expected
    assert sorted_ids(["10", "9", "09"]) == ["09", "9", "10"]


def test_feature_file_without_columns_is_rejected(tmp_path):
    directory = tmp_path / "emptymod"
    write_mmrec(directory, [("0", "0", 0), ("0", "1", 1), ("1", "1", 0), ("1", "0", 2)])
    write_feature(directory, "image", np.zeros((2, 0), dtype=np.float32))
    with pytest.raises(DatasetError, match=r"image_feat.npy: feature 'image' has no columns"):
        load_dataset(directory)


def test_items_sharing_an_entity_build_a_collaborative_kg_with_a_same_entity_relation(tmp_path, caplog):
    directory = tmp_path / "shared"
    interactions = [(str(u), str(i)) for u in range(1, 9) for i in range(1, 9) if (u + i) % 3]
    triples = [("e1", "r", "x"), ("e3", "r", "y")]
    write_recbole(directory, interactions, triples=triples, links=[("1", "e1"), ("2", "e1"), ("3", "e3")])
    dataset = load_dataset(directory)  # the reader accepts it (the kg features support it)
    kg = dataset.kg
    assert kg is not None and kg.item_entity[:3].tolist() == [0, 0, 1]
    with caplog.at_level(logging.WARNING, logger="trainer.kg"):
        ckg = build_collaborative_kg(dataset.train, kg.triples, kg.n_entities, kg.n_relations, kg.item_entity)
    assert "1 items are linked to a KG entity that a lower-indexed item already holds" in caplog.text
    # item 0 holds entity 0; item 1 (same entity) gets the first extra node, ahead of the unlinked items 3..7
    assert ckg.item_node[:4].tolist() == [0, kg.n_entities, 1, kg.n_entities + 1]
    same_entity = ckg.same_entity_relation
    assert same_entity == 2 + kg.n_relations and ckg.n_relations == 2 + 2 * (kg.n_relations + 1)
    edges = set(zip(ckg.heads.tolist(), ckg.relations.tolist(), ckg.tails.tolist(), strict=True))
    assert (kg.n_entities, same_entity, 0) in edges
    assert (0, same_entity + ckg.n_kg_relations, kg.n_entities) in edges


@pytest.mark.parametrize("bad_id", ["a\tb", "line\nbreak", "carriage\r", ""])
def test_ids_that_would_break_tab_separated_split_files_are_refused(tmp_path, bad_id):
    """LATTICE's user2id.json / item2id.json keys are free JSON strings; write_split writes ids between tabs."""
    import json

    for name, items in (("train", [0, 1]), ("val", [2]), ("test", [3])):
        (tmp_path / f"{name}.json").write_text(json.dumps({"0": items}))
    (tmp_path / "item2id.json").write_text(json.dumps({f"i{i}": i for i in range(4)}))
    (tmp_path / "user2id.json").write_text(json.dumps({"fine": 0}))
    assert load_dataset(tmp_path).user_ids == ["fine"]
    (tmp_path / "user2id.json").write_text(json.dumps({bad_id: 0}))
    with pytest.raises(DatasetError, match="empty or contains a tab or line break|empty user id"):
        load_dataset(tmp_path)


def test_superscript_digits_are_ids_not_integers(tmp_path):
    """'²'.isdigit() is True but int('²') fails: such an id next to integer ids crashed the MMRec reader."""
    write_mmrec(tmp_path / "sup", [("u1", "1", 0), ("u1", "²", 0), ("u1", "3", 1), ("u1", "4", 2)])
    dataset = load_dataset(tmp_path / "sup")
    assert sorted(dataset.item_ids) == sorted(["1", "²", "3", "4"])


def test_the_fingerprint_follows_the_content_and_nothing_else():
    import dataclasses

    from trainer.data.synthetic import planted_dataset

    data = planted_dataset(n_users=20, n_items=30, interactions_per_user=6, seed=0)
    fingerprint = data.fingerprint()
    assert len(fingerprint) == 64
    assert planted_dataset(n_users=20, n_items=30, interactions_per_user=6, seed=0).fingerprint() == fingerprint
    assert dataclasses.replace(data, name="renamed").fingerprint() == fingerprint
    coo = data.train.tocoo()  # the same matrix in another sparse format and index order
    assert dataclasses.replace(data, train=coo.tocsc().tocsr()).fingerprint() == fingerprint
    first = sorted(data.features)[0]
    nudged = {**data.features, first: data.features[first].copy()}
    nudged[first][3, 1] = np.nextafter(nudged[first][3, 1], np.float32(np.inf))  # one float, one ulp
    changes = {
        "a feature value": dataclasses.replace(data, features=nudged),
        "a modality dropped": dataclasses.replace(data, features={first: data.features[first]}),
        "train and valid swapped": dataclasses.replace(data, train=data.valid, valid=data.train),
        "an item id": dataclasses.replace(data, item_ids=["other", *data.item_ids[1:]]),
        "a KG triple": dataclasses.replace(data, kg=dataclasses.replace(data.kg, triples=data.kg.triples[1:])),
        "no KG": dataclasses.replace(data, kg=None),
    }
    assert len(data.features) >= 2 and data.kg is not None
    for what, changed in changes.items():
        assert changed.fingerprint() != fingerprint, what
