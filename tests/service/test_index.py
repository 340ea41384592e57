"""FAISS index: flat vs IVF / HNSW by size, exclusion, the never-fewer-than-k guarantee, index files."""

from __future__ import annotations

import numpy as np
import pytest

from service.bundle import BundleError, load_bundle
from service.index import (
    IndexMismatchError,
    ItemIndex,
    build_index,
    build_index_file,
    load_index_file,
)
from service.settings import Settings
from service.state import ServingState
from tests.service.conftest import build_tiny_bundle


def embeddings(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(8, dim))
    return (centers[rng.integers(0, 8, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32)


def exact(items: np.ndarray, query: np.ndarray, k: int, exclude: set[int]) -> list[int]:
    return [int(i) for i in np.argsort(-(items @ query), kind="stable") if int(i) not in exclude][:k]


def test_kind_follows_size_and_search_excludes() -> None:
    items = embeddings(300)
    assert ItemIndex(build_index(items, flat_max_items=300), items).kind == "flat"
    hnsw = ItemIndex(build_index(items, flat_max_items=100, hnsw_m=8, large_kind="hnsw"), items, ef_search=64)
    assert hnsw.kind == "hnsw"
    query = items[5]
    excluded = set(exact(items, query, 10, set()))
    rows, scores = hnsw.search(query, 10, np.array(sorted(excluded)))
    assert not excluded & set(rows.tolist()) and len(rows) == 10
    assert np.all(np.diff(scores) <= 1e-6)


def test_never_fewer_than_k_even_when_hnsw_misses() -> None:
    items = embeddings(300)
    index = ItemIndex(build_index(items, flat_max_items=100, hnsw_m=4, large_kind="hnsw"), items, ef_search=1)
    query = items[0]
    exclude = np.arange(0, 290)  # only 10 items left; a shallow HNSW search cannot reach them all
    rows, _ = index.search(query, 10, exclude)
    assert sorted(rows.tolist()) == list(range(290, 300))


def test_ivf_is_the_default_large_index_and_ranks_by_inner_product() -> None:
    rng = np.random.default_rng(3)
    items = embeddings(400) * rng.lognormal(0.0, 0.5, size=(400, 1)).astype(np.float32)  # varied norms
    built = build_index(items, flat_max_items=100, ivf_nlist=8, ivf_nprobe=8)
    index = ItemIndex(built, items)
    assert index.kind == "ivf" and index.nprobe == 8 and built.d == 17  # MIPS-to-L2: one extra coordinate
    for row in (0, 5, 123):
        query = items[row] + 0.1 * rng.normal(size=16).astype(np.float32)
        excluded = set(exact(items, query, 3, set()))
        rows, scores = index.search(query, 10, np.array(sorted(excluded)))
        # all cells probed: exactly the inner-product top 10, with the exact scores
        assert rows.tolist() == exact(items, query, 10, excluded)
        np.testing.assert_allclose(scores, items[rows] @ query, rtol=1e-5)
    shallow = ItemIndex(built, items, nprobe=1)
    assert shallow.nprobe == 1
    rows, _ = shallow.search(items[0], 10, np.arange(0, 390))  # one cell cannot hold the 10 left
    assert sorted(rows.tolist()) == list(range(390, 400))


def test_ivf_index_file_round_trip_and_checks(tmp_path) -> None:
    items = embeddings(200)
    path = tmp_path / "item_index.faiss"
    description = build_index_file(items, path, flat_max_items=50, ivf_nlist=4, ivf_nprobe=2)
    assert description == {"kind": "ivf", "n_items": 200, "ivf_nlist": 4, "ivf_nprobe": 2}
    loaded = load_index_file(path, 200, 16)
    index = ItemIndex(loaded, items)
    assert index.kind == "ivf" and index.nprobe == 2  # the depth stored in the file
    rows, _ = ItemIndex(loaded, items, nprobe=4).search(items[7], 5)
    assert rows.tolist() == exact(items, items[7], 5, set())
    with pytest.raises(IndexMismatchError, match="dim"):
        load_index_file(path, 200, 17)


def test_online_items_upsert_and_merge() -> None:
    items = embeddings(50)
    index = ItemIndex(build_index(items), items)
    strong = 10 * items[3]
    index.upsert(50, strong)
    rows, _ = index.search(items[3], 2)
    assert rows[0] == 50 and index.size == 51 and index.n_online == 1
    index.upsert(50, -strong)  # replace: now the worst match
    rows, _ = index.search(items[3], 51)
    assert rows[-1] == 50 and index.size == 51
    rows, _ = index.search(items[3], 60, np.array([50]))
    assert 50 not in rows.tolist() and len(rows) == 50
    with pytest.raises(IndexMismatchError):
        index.upsert(3, items[3])
    with pytest.raises(IndexMismatchError):
        index.upsert(51, np.full(16, np.nan, dtype=np.float32))


def test_index_file_round_trip_and_mismatch(tmp_path) -> None:
    items = embeddings(120)
    path = tmp_path / "item_index.faiss"
    description = build_index_file(items, path, flat_max_items=50, hnsw_m=8, large_kind="hnsw")
    assert description["kind"] == "hnsw" and description["n_items"] == 120
    loaded = load_index_file(path, 120, 16)
    rows, _ = ItemIndex(loaded, items, ef_search=64).search(items[7], 5)
    assert rows[0] == 7
    with pytest.raises(IndexMismatchError):
        load_index_file(path, 121, 16)


def test_bundle_with_item_index_file_is_loaded_and_checked(tmp_path) -> None:
    from service.bundle import write_bundle

    good = build_tiny_bundle(tmp_path / "a")
    bundle = load_bundle(good)
    index_path = tmp_path / "item_index.faiss"
    build_index_file(bundle.item_embeddings, index_path, flat_max_items=10, hnsw_m=8, large_kind="hnsw")
    wrong_path = tmp_path / "wrong.faiss"
    build_index_file(bundle.item_embeddings[:-1], wrong_path)
    settings = Settings(bundle_root=tmp_path)
    common = dict(
        model="m",
        dataset="d",
        user_ids=bundle.user_ids,
        item_ids=bundle.item_ids,
        user_embeddings=bundle.user_embeddings,
        item_embeddings=bundle.item_embeddings,
        seen_indptr=bundle.seen_indptr,
        seen_indices=bundle.seen_indices,
        popularity=bundle.popularity,
    )
    with_index = write_bundle(tmp_path / "b", extra_files={"item_index.faiss": index_path}, **common)
    state = ServingState.build(load_bundle(with_index), settings)
    assert state.index.kind == "hnsw"  # loaded from the file, although 30 items would be flat
    with_wrong = write_bundle(tmp_path / "c", extra_files={"item_index.faiss": wrong_path}, **common)
    with pytest.raises(BundleError, match="holds 29 vectors"):
        ServingState.build(load_bundle(with_wrong), settings)
