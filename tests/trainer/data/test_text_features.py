"""``trainer features --item-text``: a text modality from a table of item texts, for a dataset of any format."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_fixtures import TITLES, small_movielens, write_feature, write_lines, write_mmrec

from trainer.cli import main
from trainer.data import load_dataset
from trainer.data.dataset import DatasetError
from trainer.data.features import FeatureBuildError
from trainer.data.text_features import add_text_features


def hashed_encoder(texts):
    """A deterministic stand-in for a sentence encoder: float32 [n, 8] from each text's bytes, L2-normalised."""
    rows = []
    for text in texts:
        rng = np.random.default_rng(sum(text.encode()) + len(text))
        row = rng.normal(size=8)
        rows.append(row / np.linalg.norm(row))
    return np.asarray(rows, dtype=np.float32)


def _pairs(dataset, matrix):
    coo = matrix.tocoo()
    return {(dataset.user_ids[u], dataset.item_ids[i]) for u, i in zip(coo.row, coo.col)}


def _mmrec_with_image(tmp_path):
    rows = [(f"u{u}", f"i{(u + k) % 6}", 0 if k < 3 else 1 if k == 3 else 2) for u in range(5) for k in range(5)]
    source = tmp_path / "shop"
    write_mmrec(source, rows)
    write_feature(source, "image", np.arange(6 * 3, dtype=np.float32).reshape(6, 3) + 1)
    return source


def test_texts_become_the_text_modality_next_to_the_other_modalities_and_the_same_split(tmp_path):
    source = _mmrec_with_image(tmp_path)
    texts = tmp_path / "texts.tsv"
    write_lines(texts, ["item_id\ttitle\ttext", "i0\tA\tred wool sock", "i2\tB\t  ", "i3\tC\tblue hat",
                        "i9\tZ\tnot an item", "i5\tD\twarm shoe"])
    out = add_text_features(source, texts, tmp_path / "shop-text", text_encoder=hashed_encoder)
    before, after = load_dataset(source), load_dataset(out)
    assert after.item_ids == before.item_ids and after.user_ids == before.user_ids
    for split in ("train", "valid", "test"):
        assert _pairs(after, getattr(after, split)) == _pairs(before, getattr(before, split))
    np.testing.assert_array_equal(after.features["image"], before.features["image"])
    row = {item: r for r, item in enumerate(after.item_ids)}
    expected = {"i0": "red wool sock", "i3": "blue hat", "i5": "warm shoe"}
    for item, text in expected.items():
        np.testing.assert_allclose(after.features["text"][row[item]], hashed_encoder([text])[0])
    for item in ("i1", "i2", "i4"):  # no line, an empty text, no line
        assert not after.features["text"][row[item]].any()
    info = json.loads((out / "features.json").read_text())["modalities"]["text"]
    assert info["n_items_without_text"] == 3 and info["n_unknown_ids_in_file"] == 1 and info["dim"] == 8
    assert info["model_dir"] == "caller-supplied encoder" and "model_sha256" not in info


def test_a_recbole_dataset_keeps_its_knowledge_graph(tmp_path):
    raw = small_movielens(tmp_path / "raw")
    texts = tmp_path / "texts.tsv"
    write_lines(texts, ["item_id\ttext"] + [f"{i + 1}\t{title}" for i, (title, _, _) in enumerate(TITLES)])
    out = add_text_features(raw, texts, tmp_path / "ml-text", text_encoder=hashed_encoder, split_seed=7)
    before, after = load_dataset(raw, split_seed=7), load_dataset(out)
    assert _pairs(after, after.test) == _pairs(before, before.test)

    def facts(dataset):
        kg = dataset.kg
        linked = {dataset.item_ids[i]: kg.entity_ids[e] for i, e in enumerate(kg.item_entity) if e >= 0}
        triples = {(kg.entity_ids[h], kg.relation_ids[r], kg.entity_ids[t]) for h, r, t in kg.triples.tolist()}
        return linked, triples

    assert facts(after) == facts(before)
    assert sorted(after.features) == ["text"]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["item_id\ttext", "i0\tred", "i1\tblue", "i0\tgreen"], r":4: item 'i0' already has a text on line 2"),
        (["item\ttext", "i0\tred"], "header has no column 'item_id'"),
        (["item_id\ttext", "i0\tred\textra"], ":2:"),
        (["item_id\ttext", "x1\tred", "x2\tblue"], "none of its item ids is an item of"),
    ],
)
def test_a_bad_text_file_is_a_clear_error_and_nothing_is_written(tmp_path, lines, message):
    source = _mmrec_with_image(tmp_path)
    texts = write_lines(tmp_path / "texts.tsv", lines)
    with pytest.raises((DatasetError, FeatureBuildError), match=message):
        add_text_features(source, texts, tmp_path / "out", text_encoder=hashed_encoder)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_the_output_directory_is_checked_before_anything_is_encoded(tmp_path):
    source = _mmrec_with_image(tmp_path)
    texts = write_lines(tmp_path / "texts.tsv", ["item_id\ttext", "i0\tred"])
    with pytest.raises(FeatureBuildError, match="is the input dataset directory"):
        add_text_features(source, texts, source, text_encoder=hashed_encoder)
    (tmp_path / "taken").mkdir()
    with pytest.raises(FeatureBuildError, match="is not a features build"):
        add_text_features(source, texts, tmp_path / "taken", text_encoder=hashed_encoder)
    with pytest.raises(FeatureBuildError, match="does not exist"):
        add_text_features(source, tmp_path / "nope.tsv", tmp_path / "out", text_encoder=hashed_encoder)
    first = add_text_features(source, texts, tmp_path / "out", text_encoder=hashed_encoder)
    write_lines(texts, ["item_id\ttext", "i0\tred", "i1\tblue"])
    again = add_text_features(source, texts, tmp_path / "out", text_encoder=hashed_encoder)  # a rebuild replaces it
    assert first == again and json.loads((again / "features.json").read_text())["modalities"]["text"][
        "n_items_without_text"] == 4


def test_cli_builds_with_the_default_text_model_and_its_bundles_get_the_raw_text_encoder(tmp_path, capsys):
    from trainer.data.features import sentence_encoder
    from trainer.text_encoder import dataset_text_model

    source = _mmrec_with_image(tmp_path)
    texts = write_lines(tmp_path / "texts.tsv", ["item_id\ttext", "i0\tred wool sock", "i4\tblue hat"])
    out = tmp_path / "shop-text"
    assert main(["features", "--dataset", str(source), "--item-text", str(texts), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    dataset = load_dataset(out)
    row = dataset.item_ids.index("i4")
    np.testing.assert_allclose(dataset.features["text"][row], sentence_encoder()(["blue hat"])[0], atol=1e-6)
    found = dataset_text_model(out, dataset.modality_dims["text"])
    assert found is not None  # the model is named by checksum and path: bundles carry the text encoder
    write_lines(texts, ["item_id\ttext", "i0\tred", "i0\tblue"])
    assert main(["features", "--dataset", str(source), "--item-text", str(texts), "--out", str(tmp_path / "x")]) == 2
    assert "already has a text on line 2" in capsys.readouterr().err


def _same_dataset_by_ids(before, after, kept_items):
    """``after`` (read back from the output) holds ``before``'s split, features and KG facts for ``kept_items``, each
    paired with its own item by external id."""
    for split in ("train", "valid", "test"):
        assert _pairs(after, getattr(after, split)) == _pairs(before, getattr(before, split)), split
    row_before = {item: r for r, item in enumerate(before.item_ids)}
    for modality, matrix in before.features.items():
        for r, item in enumerate(after.item_ids):
            np.testing.assert_array_equal(after.features[modality][r], matrix[row_before[item]], err_msg=item)
    if before.kg is not None:
        def facts(dataset, items):
            kg = dataset.kg
            linked = {dataset.item_ids[i]: kg.entity_ids[e] for i, e in enumerate(kg.item_entity.tolist())
                      if e >= 0 and dataset.item_ids[i] in items}
            triples = {(kg.entity_ids[h], kg.relation_ids[r], kg.entity_ids[t]) for h, r, t in kg.triples.tolist()}
            return linked, triples

        assert facts(after, set(kept_items)) == facts(before, set(kept_items))


def _check_texts(after, texts):
    for r, item in enumerate(after.item_ids):
        if item in texts:
            np.testing.assert_allclose(after.features["text"][r], hashed_encoder([texts[item]])[0], err_msg=item)
        else:
            assert not after.features["text"][r].any(), item


def test_a_lattice_dataset_with_external_ids_keeps_its_split_and_drops_items_without_interactions(tmp_path):
    """item2id.json names items by external ids whose sorted order is not the json's row order, and one listed item
    has no interaction in any split: the MMRec output cannot list it, so it is dropped (and counted), and every other
    item keeps its split rows and its own feature rows."""
    from data_fixtures import write_json

    source = tmp_path / "lattice"
    write_json(source / "train.json", {"0": [0, 1], "1": [1, 2], "2": [0, 2, 4]})
    write_json(source / "val.json", {"0": [2]})
    write_json(source / "test.json", {"1": [0]})
    write_json(source / "item2id.json", {"B0": 0, "A1": 1, "C2": 2, "B3": 3, "A4": 4})
    write_json(source / "user2id.json", {"ux": 0, "ua": 1, "um": 2})
    write_feature(source, "image", np.arange(15, dtype=np.float32).reshape(5, 3))
    texts = {"B0": "red sock", "A1": "blue hat", "B3": "never bought"}
    table = write_lines(tmp_path / "texts.tsv", ["item_id\ttext"] + [f"{i}\t{t}" for i, t in texts.items()])
    out = add_text_features(source, table, tmp_path / "lattice-text", text_encoder=hashed_encoder)
    before, after = load_dataset(source), load_dataset(out)
    assert sorted(after.item_ids) == ["A1", "A4", "B0", "C2"]  # B3 has no interaction
    _same_dataset_by_ids(before, after, after.item_ids)
    _check_texts(after, texts)
    manifest = json.loads((out / "features.json").read_text())
    assert manifest["n_items_dropped_without_interactions"] == 1 and manifest["n_items"] == 4
    assert manifest["modalities"]["text"]["n_items_without_text"] == 2


def test_a_kgat_dataset_keeps_its_seeded_valid_split_its_kg_and_its_dense_item_ids(tmp_path):
    """KGAT: valid is carved from train with the split seed; items are the integers 0..max. Item 4 has no
    interaction but lies below the largest item with one, so MMRec's dense ids keep it; items 8 (never used) and 9
    (only in a test row of a user without training rows, dropped on loading) are above it and are dropped."""
    source = tmp_path / "kgat"
    items = [0, 1, 2, 3, 5, 6, 7]
    write_lines(source / "train.txt", [f"{u} " + " ".join(str(items[(u + k) % 7]) for k in range(5))
                                       for u in range(6)])
    write_lines(source / "test.txt", [f"{u} {items[(u + 5) % 7]}" for u in range(6)] + ["6 9"])
    write_lines(source / "kg_final.txt", ["0 0 20", "1 0 20", "4 1 21", "9 1 21", "3 2 22", "20 3 21"])
    write_feature(source, "image", np.arange(30, dtype=np.float32).reshape(10, 3) + 1)
    texts = {"0": "zero", "4": "four", "9": "nine"}
    table = write_lines(tmp_path / "texts.tsv", ["item_id\ttext"] + [f"{i}\t{t}" for i, t in texts.items()])
    out = add_text_features(source, table, tmp_path / "kgat-text", text_encoder=hashed_encoder, split_seed=5)
    before, after = load_dataset(source, split_seed=5), load_dataset(out)
    assert before.valid.nnz > 0
    assert after.item_ids == [str(i) for i in range(8)]
    _same_dataset_by_ids(before, after, after.item_ids)
    _check_texts(after, texts)
    assert json.loads((out / "features.json").read_text())["n_items_dropped_without_interactions"] == 2


def test_items_sharing_a_kg_entity_keep_sharing_it(tmp_path):
    raw = small_movielens(tmp_path / "raw")
    link_path = raw / "raw.link"
    link_path.write_text(link_path.read_text().replace("2\tm.film2\n", "2\tm.film1\n"), encoding="utf-8")
    texts = {str(i + 1): title for i, (title, _, _) in enumerate(TITLES)}
    table = write_lines(tmp_path / "texts.tsv", ["item_id\ttext"] + [f"{i}\t{t}" for i, t in texts.items()])
    out = add_text_features(raw, table, tmp_path / "ml-text", text_encoder=hashed_encoder, split_seed=3)
    before, after = load_dataset(raw, split_seed=3), load_dataset(out)
    _same_dataset_by_ids(before, after, after.item_ids)
    one, two = after.item_ids.index("1"), after.item_ids.index("2")
    assert after.kg.item_entity[one] == after.kg.item_entity[two] >= 0


@pytest.mark.parametrize("bad_id", [" B1", "B1 "])
def test_an_id_that_the_mmrec_reader_would_read_as_another_is_refused_before_anything_is_written(tmp_path, bad_id):
    """MMRec fields are stripped when read: an item id with surrounding spaces would come back as another id, in
    another sorted position, and take another item's feature rows."""
    from data_fixtures import write_json

    source = tmp_path / "lattice"
    write_json(source / "train.json", {"0": [0, 1], "1": [1, 0]})
    write_json(source / "val.json", {})
    write_json(source / "test.json", {})
    write_json(source / "item2id.json", {bad_id: 0, "A": 1})
    write_feature(source, "image", np.array([[1, 0], [0, 1]], dtype=np.float32))
    table = write_lines(tmp_path / "texts.tsv", ["item_id\ttext", "A\tred"])
    with pytest.raises(FeatureBuildError, match=r"item id ' ?B1 ?' has leading or trailing whitespace"):
        add_text_features(source, table, tmp_path / "out", text_encoder=hashed_encoder)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
