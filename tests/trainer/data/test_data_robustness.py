"""Realistic-but-awkward input files: byte-order marks, ids of equal numeric value, empty modalities, items
sharing a KG entity."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import write_feature, write_mmrec, write_recbole

from trainer.data import load_dataset
from trainer.data.dataset import DatasetError
from trainer.data.parsing import sorted_ids
from trainer.kg import KGBuildError, build_collaborative_kg

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


def test_items_sharing_an_entity_are_named_when_the_collaborative_kg_is_built(tmp_path):
    directory = tmp_path / "shared"
    interactions = [(str(u), str(i)) for u in range(1, 9) for i in range(1, 9) if (u + i) % 3]
    triples = [("e1", "r", "x"), ("e3", "r", "y")]
    write_recbole(directory, interactions, triples=triples, links=[("1", "e1"), ("2", "e1"), ("3", "e3")])
    dataset = load_dataset(directory)  # the reader accepts it (the kg features support it)
    kg = dataset.kg
    assert kg is not None
    with pytest.raises(KGBuildError, match=r"items \[0, 1\] .* linked to the same entity 0"):
        build_collaborative_kg(dataset.train, kg.triples, kg.n_entities, kg.n_relations, kg.item_entity)
