"""The benchmark's building blocks (the benchmark itself is not run by default)."""

from __future__ import annotations

import numpy as np

from service.bench import hnsw_recall, index_recall, resize_items, synthetic_catalogue
from service.index import build_index_file


def test_expansion_keeps_structure_and_size() -> None:
    catalogue = synthetic_catalogue(n_users=50, n_items=400, dim=16, seed=0)
    expanded = resize_items(catalogue.item_embeddings, 1000, seed=1)
    assert expanded.shape == (1000, 16) and expanded.dtype == np.float32
    np.testing.assert_array_equal(expanded[:400], catalogue.item_embeddings)
    # every new item is close to some base item (perturbation), far closer than random pairs are
    base = catalogue.item_embeddings
    new = expanded[400:]
    nearest = np.sqrt(((new[:, None, :] - base[None, :, :]) ** 2).sum(-1)).min(1)
    random_pairs = np.linalg.norm(base[:300] - base[100:400], axis=1)
    assert np.median(nearest) < 0.5 * np.median(random_pairs)


def test_hnsw_recall_is_measured_against_exact(tmp_path) -> None:
    catalogue = synthetic_catalogue(n_users=100, n_items=2000, dim=16, seed=0)
    items = catalogue.item_embeddings
    path = tmp_path / "item_index.faiss"
    build_index_file(items, path, flat_max_items=10, hnsw_m=16, ef_construction=40, large_kind="hnsw")
    good, _ = hnsw_recall(catalogue, items, path, ef_search=200, n_queries=50)
    poor, _ = hnsw_recall(catalogue, items, path, ef_search=1, n_queries=50)
    assert 0.9 <= good <= 1.0 and poor < good


def test_ivf_recall_grows_with_nprobe_and_reaches_exact(tmp_path) -> None:
    catalogue = synthetic_catalogue(n_users=100, n_items=2000, dim=16, seed=0)
    items = catalogue.item_embeddings
    path = tmp_path / "item_index.faiss"
    description = build_index_file(items, path, flat_max_items=10, ivf_nlist=32)
    assert description["kind"] == "ivf" and description["ivf_nlist"] == 32
    sweep = index_recall(catalogue, items, path, [1, 32], n_queries=50)
    assert sweep[0]["recall_at_20"] < 0.9  # one cell of 32 misses part of the top 20
    assert sweep[1]["recall_at_20"] == 1.0  # all cells scanned = exact search
