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


def test_upsert_many_equals_one_by_one_upserts_and_a_flat_index() -> None:
    """A batch of inserts and replacements (a row twice: its last vector) gives the same online items, searches and
    scores (bit for bit: the delta is searched with faiss.knn, IndexFlatIP's own routine) as single upserts."""
    import faiss

    items = embeddings(40)
    rng = np.random.default_rng(3)
    rows = [40, 41, 42, 41, 43, 40, 44]
    vectors = rng.normal(size=(len(rows), 16)).astype(np.float32)
    one_by_one, batched = ItemIndex(build_index(items), items), ItemIndex(build_index(items), items)
    one_by_one.upsert(42, rng.normal(size=16).astype(np.float32))  # an existing item the batch replaces
    batched.upsert(42, one_by_one.vector(42))
    for row, vector in zip(rows, vectors, strict=True):
        one_by_one.upsert(row, vector)
    batched.upsert_many(rows, vectors)
    assert batched.n_online == one_by_one.n_online == 5 and batched.size == 45
    final = {row: vectors[i] for i, row in enumerate(rows)}
    for row, vector in final.items():
        assert np.array_equal(batched.vector(row), vector) and np.array_equal(one_by_one.vector(row), vector)
    flat = faiss.IndexIDMap2(faiss.IndexFlatIP(16))
    flat.add_with_ids(np.stack([final[r] for r in sorted(final)]), np.array(sorted(final), dtype=np.int64))
    for query in rng.normal(size=(5, 16)).astype(np.float32):
        a_rows, a_scores = batched.search(query, 10, np.array([3, 43]))
        b_rows, b_scores = one_by_one.search(query, 10, np.array([3, 43]))
        assert a_rows.tolist() == b_rows.tolist() and np.array_equal(a_scores, b_scores)
        flat_scores, flat_rows = flat.search(query.reshape(1, -1), 5)
        d_rows, d_scores = batched.search_online(query, 5)
        assert d_rows.tolist() == flat_rows[0].tolist() and np.allclose(d_scores, flat_scores[0], rtol=1e-5)
        online = [(r, s) for r, s in zip(*batched.search(query, 45), strict=True) if r >= 40]
        assert [r for r, _ in online] == flat_rows[0].tolist()
        assert np.array_equal(np.array([s for _, s in online], dtype=np.float32), flat_scores[0])
    with pytest.raises(IndexMismatchError):  # one bad row refuses the whole batch, nothing changes
        batched.upsert_many([45, 3], rng.normal(size=(2, 16)).astype(np.float32))
    with pytest.raises(IndexMismatchError):
        batched.upsert_many([45, 46], np.array([[0.0] * 16, [np.inf] * 16], dtype=np.float32))
    assert batched.n_online == 5


def test_online_inserts_append_without_copying_and_replacements_leave_published_snapshots_alone() -> None:
    """An insert appends to the delta buffers (amortised O(1); each insert rebuilt the whole delta and its FAISS index,
    127 ms per POST /items at 100k online items); a replacement copies them first, so a search running on an older
    snapshot never sees a vector change under it."""
    items = embeddings(20)
    index = ItemIndex(build_index(items), items)
    rng = np.random.default_rng(5)
    index.upsert(20, rng.normal(size=16).astype(np.float32))
    for row in range(21, 1000):
        before = index._delta
        index.upsert(row, rng.normal(size=16).astype(np.float32))
        if len(before.ids_buffer) > before.n:  # room left: appended in place, nothing copied
            assert index._delta.vectors_buffer is before.vectors_buffer
    assert index.n_online == 980 and len(index._delta.ids_buffer) <= 2 * 980
    published = index._delta
    kept = published.vectors.copy()
    index.upsert(500, np.zeros(16, dtype=np.float32))
    assert np.array_equal(published.vectors, kept)  # the old snapshot still holds the old vector
    assert np.array_equal(index.vector(500), np.zeros(16)) and index.n_online == 980
    assert index.search(items[0], 1000)[0].tolist().count(500) == 1


def test_every_thread_that_searches_uses_the_configured_faiss_threads() -> None:
    """``omp_set_num_threads`` holds per calling thread: searches moved to a thread pool ran with one OpenMP thread
    per core (the app pinned only its main thread), several milliseconds per single-query search on a busy machine."""
    import threading

    import faiss

    items = embeddings(30)
    index = ItemIndex(build_index(items), items, threads=3)  # 3: neither 1 nor this machine's default
    seen: list[int] = []

    def search_in_a_fresh_thread() -> None:
        index.search(items[0], 3)
        seen.append(faiss.omp_get_max_threads())

    worker = threading.Thread(target=search_in_a_fresh_thread)
    worker.start()
    worker.join()
    assert seen == [3]
