"""The real datasets in ../shared/datasets (skipped when absent)."""

from __future__ import annotations

import pytest

from trainer.data import detect_format, load_dataset
from trainer.data.kg import read_recbole_kg
from trainer.data.obtain import obtain_ml100k
from trainer.data.parsing import index_of


def test_amazon_baby_counts(shared_datasets):
    dataset = load_dataset(shared_datasets / "amazon-baby")
    assert detect_format(shared_datasets / "amazon-baby") == "lattice"
    assert (dataset.n_users, dataset.n_items) == (19_445, 7_050)
    assert (dataset.train.nnz, dataset.valid.nnz, dataset.test.nnz) == (119_674, 20_559, 20_559)
    assert dataset.item_ids[2] == "B00000IZQI" and dataset.user_ids[0] == "A00097001C4CLB27DQV4U"  # item2id.json


def test_ml100k_counts_split_and_kg(shared_datasets):
    directory = shared_datasets / "ml-100k"
    dataset = load_dataset(directory, split_seed=2024)
    assert detect_format(directory) == "recbole"
    assert (dataset.n_users, dataset.n_items) == (943, 1_682)
    assert dataset.train.nnz + dataset.valid.nnz + dataset.test.nnz == 100_000
    assert abs(dataset.train.nnz / 100_000 - 0.8) < 0.01
    kg = dataset.kg
    assert (len(kg.triples), kg.n_relations, int((kg.item_entity >= 0).sum())) == (91_631, 24, 1_598)
    _, stats = read_recbole_kg(
        directory / "ml-100k.kg", directory / "ml-100k.link", index_of(dataset.item_ids)
    )
    assert stats.n_entities == 34_628 and stats.n_dangling_links == 0 and stats.n_duplicate_triples == 0


def test_obtain_ml100k_from_shared(shared_datasets, tmp_path, monkeypatch):
    monkeypatch.setenv("MODALREC_SHARED_DATASETS", str(shared_datasets))

    def no_download(_directory):
        raise AssertionError("must copy the shared files, not download")

    dest = obtain_ml100k(tmp_path / "ml-100k", download_wheel=no_download)
    for name in ("ml-100k.inter", "ml-100k.kg", "ml-100k.link", "ml-100k.item"):
        assert (dest / name).read_bytes() == (shared_datasets / "ml-100k" / name).read_bytes()


@pytest.mark.slow
def test_ml100k_features_build_roundtrip(shared_datasets, tmp_path):
    """Full MovieLens-100K build with MiniLM (about 1 min on 2 CPU cores)."""
    from trainer.data.features import build_features

    out = build_features(shared_datasets / "ml-100k", tmp_path / "ml-100k-mm")
    dataset = load_dataset(out)
    raw = load_dataset(shared_datasets / "ml-100k")
    assert dataset.n_users == 943 and dataset.modality_dims == {"kg": 256, "text": 384}
    assert dataset.kg is not None and len(dataset.kg.triples) == 91_631
    assert all((getattr(dataset, s) != getattr(raw, s)).nnz == 0 for s in ("train", "valid", "test"))
