"""FAISS retrieval over item embeddings (inner product, so it ranks exactly like the models score).

Layout: the bundle's items live in an immutable *main* index (``IndexIDMap2`` over ``IndexFlatIP`` up
to ``flat_max_items`` items, ids = item rows ``0..n-1``); above that an approximate index, by default
``IndexIVFFlat`` over the MIPS-to-L2 reduction of the items (``ivf``), or ``IndexHNSWFlat`` with inner
product (``hnsw``). The reduction appends ``sqrt(max_norm^2 - ||x||^2)`` to every item and 0 to the
query, so that ``||q' - x'||^2 = ||q||^2 + max_norm^2 - 2 q.x``: the nearest items in L2 are exactly
the largest inner products, and k-means builds its cells in that L2 space (an inner-product
quantizer over the raw items needed far more probes for the same recall). The IVF scan inside
the probed cells is exact and the returned scores are recomputed as ``q.x`` from the embeddings.
``docs/service.md`` has the measurements behind the choice. Items added online
(cold start, ``POST /items``) live in a *delta*: growable buffers of their rows ``n, n+1, ...`` and vectors,
searched exactly with ``faiss.knn`` (the routine ``IndexFlatIP`` runs, on the buffer itself). Mutations happen under
one lock and are published with a single attribute assignment of an immutable snapshot (the buffers and a count), so
searches never take a lock and never see a half-written vector: new items are appended past the end of every
published snapshot (amortised O(1), the buffers double when full), and replacing an item's vector copies the
buffer first (copy-on-write; one copy per batch, :meth:`ItemIndex.upsert_many`).

``build_index_file`` is what the trainer's export calls (when faiss is importable) to ship
``item_index.faiss`` in the bundle, so that large catalogues are not indexed at service start-up.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

logger = logging.getLogger(__name__)

INDEX_FILE = "item_index.faiss"
DEFAULT_FLAT_MAX_ITEMS = 200_000
DEFAULT_HNSW_M = 32
DEFAULT_EF_CONSTRUCTION = 80
DEFAULT_LARGE_INDEX = "ivf"
DEFAULT_IVF_NPROBE = 32
LARGE_INDEX_KINDS = ("ivf", "hnsw")


_thread_settings = threading.local()


def pin_omp_threads(threads: int | None) -> None:
    """Give FAISS ``threads`` OpenMP threads in the calling thread (None: leave it). ``omp_set_num_threads`` holds
    only for the thread that calls it, and searches run in the server's thread pool and the reload watcher: each of
    them sets it on its first FAISS call (unpinned, a pool thread used a team of one thread per core, and on a busy
    machine a single-query search took milliseconds instead of 0.1 ms)."""
    if threads is not None and getattr(_thread_settings, "omp_threads", None) != threads:
        faiss.omp_set_num_threads(threads)
        _thread_settings.omp_threads = threads


class IndexMismatchError(ValueError):
    """An index file or an embedding matrix does not match what the bundle says."""


def mips_augment(vectors: np.ndarray, max_sq_norm: float | None = None) -> np.ndarray:
    """MIPS-to-L2 reduction of items float32 [n, d] -> [n, d+1]: appends ``sqrt(max_sq_norm - ||x||^2)``
    (``max_sq_norm`` defaults to the largest squared norm), so every row has norm ``sqrt(max_sq_norm)``."""
    sq_norms = np.einsum("ij,ij->i", vectors, vectors)
    top = float(sq_norms.max()) if max_sq_norm is None else max_sq_norm
    extra = np.sqrt(np.maximum(top - sq_norms, 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([vectors, extra[:, None]]), dtype=np.float32)


def default_nlist(n_items: int) -> int:
    """IVF cells: about 4 sqrt(n) (4,000 at 1M), and at least 39 training points per cell."""
    return max(1, min(int(round(4 * np.sqrt(n_items))), n_items // 39))


def build_index(
    item_embeddings: np.ndarray,
    *,
    flat_max_items: int = DEFAULT_FLAT_MAX_ITEMS,
    hnsw_m: int = DEFAULT_HNSW_M,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    large_kind: str = DEFAULT_LARGE_INDEX,
    ivf_nlist: int | None = None,
    ivf_nprobe: int = DEFAULT_IVF_NPROBE,
    seed: int = 0,
) -> faiss.IndexIDMap2:
    """Index over ``item_embeddings`` float32 [n_items, dim], ids = rows.

    Exact ``IndexFlatIP`` when ``n_items <= flat_max_items``; else ``large_kind``: ``"ivf"``
    (``IndexIVFFlat``, L2 over :func:`mips_augment` vectors [n, dim+1], ``ivf_nlist`` cells, default
    :func:`default_nlist`; ``ivf_nprobe`` is stored in the index as its search depth) or ``"hnsw"``
    (``IndexHNSWFlat``, inner product).
    """
    embeddings = np.ascontiguousarray(item_embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[1] < 1:
        raise IndexMismatchError(f"item embeddings must be [n_items, dim], got shape {embeddings.shape}")
    if large_kind not in LARGE_INDEX_KINDS:
        raise IndexMismatchError(f"large_kind must be one of {LARGE_INDEX_KINDS}, got {large_kind!r}")
    n_items, dim = embeddings.shape
    ids = np.arange(n_items, dtype=np.int64)
    if n_items <= flat_max_items:
        inner: faiss.Index = faiss.IndexFlatIP(dim)
    elif large_kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = ef_construction
    else:
        augmented = mips_augment(embeddings)
        nlist = default_nlist(n_items) if ivf_nlist is None else ivf_nlist
        if not 1 <= nlist <= n_items:
            raise IndexMismatchError(f"ivf_nlist must be in 1..{n_items}, got {nlist}")
        inner = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim + 1), dim + 1, nlist, faiss.METRIC_L2)
        inner.cp.seed = seed
        rng = np.random.default_rng(seed)
        n_train = min(n_items, 64 * nlist)
        sample = (
            augmented
            if n_train == n_items
            else augmented[np.sort(rng.choice(n_items, n_train, replace=False))]
        )
        inner.train(sample)
        inner.nprobe = ivf_nprobe
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(augmented, ids)
        return index
    index = faiss.IndexIDMap2(inner)
    index.add_with_ids(embeddings, ids)
    return index


def build_index_file(
    item_embeddings: np.ndarray,
    path: str | os.PathLike[str],
    *,
    flat_max_items: int = DEFAULT_FLAT_MAX_ITEMS,
    hnsw_m: int = DEFAULT_HNSW_M,
    ef_construction: int = DEFAULT_EF_CONSTRUCTION,
    large_kind: str = DEFAULT_LARGE_INDEX,
    ivf_nlist: int | None = None,
    ivf_nprobe: int = DEFAULT_IVF_NPROBE,
) -> dict[str, int | str]:
    """Build the index for a bundle and write it to ``path`` (pass it to ``write_bundle`` as the
    extra file ``item_index.faiss``). Returns a description for the manifest, e.g.
    ``{"kind": "ivf", "n_items": 1000000, "ivf_nlist": 4000, "ivf_nprobe": 32}``.
    """
    index = build_index(
        item_embeddings,
        flat_max_items=flat_max_items,
        hnsw_m=hnsw_m,
        ef_construction=ef_construction,
        large_kind=large_kind,
        ivf_nlist=ivf_nlist,
        ivf_nprobe=ivf_nprobe,
    )
    faiss.write_index(index, str(path))
    description: dict[str, int | str] = {"kind": index_kind(index), "n_items": int(index.ntotal)}
    if description["kind"] == "hnsw":
        description.update(hnsw_m=hnsw_m, ef_construction=ef_construction)
    elif description["kind"] == "ivf":
        inner = faiss.downcast_index(index.index)
        description.update(ivf_nlist=int(inner.nlist), ivf_nprobe=int(inner.nprobe))
    return description


def index_kind(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    return "ivf" if isinstance(inner, faiss.IndexIVF) else "flat"


def load_index_file(path: Path, n_items: int, dim: int) -> faiss.IndexIDMap2:
    """Read an ``item_index.faiss`` and check it indexes exactly rows ``0..n_items-1`` of ``dim``
    (flat / HNSW: inner product over ``dim``; IVF: L2 over the ``dim + 1`` reduced vectors)."""
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexMismatchError(f"unreadable FAISS index {path}: {exc}") from exc
    if not isinstance(index, faiss.IndexIDMap2):
        raise IndexMismatchError(f"{path.name} must be an IndexIDMap2, got {type(index).__name__}")
    if index_kind(index) == "ivf":
        expected_metric, expected_dim = faiss.METRIC_L2, dim + 1
        if index.metric_type != expected_metric:
            raise IndexMismatchError(f"{path.name}: an IVF index must use L2 over the MIPS-reduced vectors")
    else:
        expected_metric, expected_dim = faiss.METRIC_INNER_PRODUCT, dim
        if index.metric_type != expected_metric:
            raise IndexMismatchError(
                f"{path.name} must use inner product (the models score by inner product)"
            )
    if index.d != expected_dim or index.ntotal != n_items:
        raise IndexMismatchError(
            f"{path.name} holds {index.ntotal} vectors of dim {index.d}; the bundle has {n_items} of dim "
            f"{dim} (index dim {expected_dim} expected)"
        )
    ids = faiss.vector_to_array(index.id_map)
    if not np.array_equal(ids, np.arange(n_items, dtype=ids.dtype)):
        raise IndexMismatchError(f"{path.name} ids are not the item rows 0..{n_items - 1}")
    return index


@dataclass(frozen=True)
class _Delta:
    """A published snapshot of the online items: entries ``0..n-1`` of the buffers ``ids`` int64 [capacity] (rows
    >= n_main) and ``vectors`` float32 [capacity, dim]. Entries below ``n`` never change once published (appends
    write past it, replacements copy the buffer first)."""

    ids_buffer: np.ndarray
    vectors_buffer: np.ndarray
    n: int

    @property
    def ids(self) -> np.ndarray:
        return self.ids_buffer[: self.n]

    @property
    def vectors(self) -> np.ndarray:
        return self.vectors_buffer[: self.n]


_EMPTY_CAPACITY = 16


class ItemIndex:
    """Lock-free search over the bundle's items plus items added online.

    Args:
        main: ``IndexIDMap2`` over the bundle's items, ids = rows ``0..n_main-1`` (never mutated).
        main_embeddings: float32 [n_main, dim], the same vectors (exact fallback, vector lookups).
        ef_search: HNSW search depth (raised to ``k`` when ``k`` is larger).
        nprobe: IVF cells scanned per query; None = the depth stored in the index.
        threads: FAISS OpenMP threads of every thread that searches (:func:`pin_omp_threads`); None = leave them.
    """

    def __init__(
        self,
        main: faiss.IndexIDMap2,
        main_embeddings: np.ndarray,
        ef_search: int = 128,
        nprobe: int | None = None,
        threads: int | None = None,
    ) -> None:
        self.kind = index_kind(main)
        index_dim = main_embeddings.shape[1] + (1 if self.kind == "ivf" else 0)
        if main.ntotal != main_embeddings.shape[0] or main.d != index_dim:
            raise IndexMismatchError("main index and main embeddings disagree in size or dimension")
        self.main = main
        self.main_embeddings = main_embeddings
        self.ef_search = ef_search
        self.nprobe = (
            int(faiss.downcast_index(main.index).nprobe) if nprobe is None and self.kind == "ivf" else nprobe
        )
        self.dim = int(main_embeddings.shape[1])
        self.n_main = int(main.ntotal)
        self.threads = threads
        self._lock = threading.Lock()
        self._delta = _Delta(np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32), 0)
        # online row -> its entry in the delta buffers; only ever extended, under the lock, before the snapshot that
        # holds the entry is published (an entry >= a snapshot's n is not part of that snapshot)
        self._position: dict[int, int] = {}

    @property
    def size(self) -> int:
        return self.n_main + self._delta.n

    @property
    def n_online(self) -> int:
        return self._delta.n

    def vector(self, row: int) -> np.ndarray:
        """Embedding float32 [dim] of item row ``row`` (bundle or online)."""
        if 0 <= row < self.n_main:
            return self.main_embeddings[row]
        delta = self._delta
        position = self._position[row]
        if position >= delta.n:
            raise KeyError(row)
        return delta.vectors_buffer[position]

    def upsert(self, row: int, vector: np.ndarray) -> None:
        """Add (or replace) online item ``row`` (>= n_main) with ``vector`` float32 [dim]."""
        self.upsert_many([row], np.asarray(vector, dtype=np.float32).reshape(1, -1))

    def upsert_many(self, rows: Sequence[int] | np.ndarray, vectors: np.ndarray) -> None:
        """Add or replace online items ``rows`` (each >= n_main) with ``vectors`` float32 [len(rows), dim], published
        at once; the same as upserting them one by one in this order (a row given twice: its last vector), at the
        cost of one append per new row (amortised O(1)) and at most one buffer copy for all replaced rows.

        Raises:
            IndexMismatchError: a row of the bundle, or vectors that are not finite or not [len(rows), dim]; nothing
                is changed then.
        """
        row_list = [int(r) for r in np.asarray(rows, dtype=np.int64).reshape(-1).tolist()]
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim == 1:
            vectors = vectors.reshape(1, -1)
        if vectors.ndim != 2 or vectors.shape[0] != len(row_list):
            raise IndexMismatchError(f"{len(row_list)} rows but vectors of shape {vectors.shape}")
        for row in row_list:
            if row < self.n_main:
                raise IndexMismatchError(f"row {row} belongs to the bundle; online items start at {self.n_main}")
        if vectors.shape[1] != self.dim or not np.isfinite(vectors).all():
            raise IndexMismatchError(f"online item vector must be finite with dim {self.dim}")
        if not row_list:
            return
        last = {row: i for i, row in enumerate(row_list)}  # row -> its last vector in the batch
        with self._lock:
            old = self._delta
            position = self._position
            ids_buffer, vectors_buffer, n = old.ids_buffer, old.vectors_buffer, old.n
            replaced = [(position[row], i) for row, i in last.items() if row in position]
            fresh = [(row, i) for row, i in last.items() if row not in position]
            if replaced:  # copy-on-write: published snapshots keep the vectors they were searched with
                copied = np.empty_like(vectors_buffer)
                copied[:n] = vectors_buffer[:n]
                vectors_buffer = copied
                for entry, i in replaced:
                    vectors_buffer[entry] = vectors[i]
            end = n + len(fresh)
            if end > len(ids_buffer):  # grow by doubling: amortised O(1) per appended item
                capacity = max(end, 2 * len(ids_buffer), _EMPTY_CAPACITY)
                grown_ids = np.empty(capacity, dtype=np.int64)
                grown_vectors = np.empty((capacity, self.dim), dtype=np.float32)
                grown_ids[:n] = ids_buffer[:n]
                grown_vectors[:n] = vectors_buffer[:n]
                ids_buffer, vectors_buffer = grown_ids, grown_vectors
            if fresh:  # past the end of every published snapshot that shares these buffers
                ids_buffer[n:end] = [row for row, _ in fresh]
                vectors_buffer[n:end] = vectors[[i for _, i in fresh]]
                for offset, (row, _) in enumerate(fresh):
                    position[row] = n + offset
            self._delta = _Delta(ids_buffer, vectors_buffer, end)

    def search(
        self, query: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` rows by inner product with ``query`` float32 [dim], skipping rows in ``exclude``.

        Over-fetches ``k + |exclude|`` candidates and drops excluded rows (cheaper than a FAISS
        IDSelector here: the translated selector of IndexIDMap2 costs more than the scan at 7k items).
        Returns (rows int64 [k'], scores float32 [k']) best first with ``k' = min(k, size - |exclude|)``;
        if the approximate index returns fewer survivors than that, the search is redone exactly.
        """
        pin_omp_threads(self.threads)
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        delta = self._delta
        excluded: set[int] = set()
        if exclude is not None and len(exclude):
            # A Python set: the candidate list is only k + |exclude| long, and set lookups on it are
            # several times cheaper than np.unique + np.isin at serving sizes.
            excluded = set(np.asarray(exclude, dtype=np.int64).tolist())
            position, n_delta = self._position, delta.n
            n_excluded_existing = sum(
                1 for r in excluded if 0 <= r < self.n_main or position.get(r, n_delta) < n_delta
            )
        else:
            n_excluded_existing = 0
        expected = min(k, self.n_main + delta.n - n_excluded_existing)
        fetch = k + n_excluded_existing
        rows, scores = self._search_main(query, fetch)
        if delta.n:
            d_scores, d_entries = faiss.knn(query, delta.vectors, min(fetch, delta.n), faiss.METRIC_INNER_PRODUCT)
            entries = d_entries[0]
            rows = np.concatenate([rows, np.where(entries >= 0, delta.ids[entries], -1)])
            scores = np.concatenate([scores, d_scores[0]])
            order = np.argsort(-scores, kind="stable")
            rows, scores = rows[order], scores[order]
        keep = [p for p, r in enumerate(rows.tolist()) if r >= 0 and r not in excluded][:k]
        rows, scores = rows[keep], scores[keep]
        if len(rows) < expected:
            logger.info("approximate search returned %d < %d items; redoing it exactly", len(rows), expected)
            rows, scores = self._exact(query[0], k, np.asarray(sorted(excluded), dtype=np.int64), delta)
        return rows, scores

    def search_online(
        self, query: np.ndarray, k: int, exclude: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ONLINE items (rows >= n_main) by inner product with ``query``, skipping ``exclude``; exact.

        Returns (rows int64 [k'], scores float32 [k']) best first, ties by lower row, ``k' <= k``.
        """
        delta = self._delta
        scores = delta.vectors @ np.asarray(query, dtype=np.float32).reshape(-1)
        return _exact_top_k(delta.ids, scores, k, exclude)  # delta ids ascend, so stable order = lower row first

    def _search_main(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, self.n_main)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k))
            scores, rows = self.main.search(query, k, params=params)
        elif self.kind == "ivf":
            params = faiss.SearchParametersIVF(nprobe=self.nprobe)
            augmented = np.concatenate([query, np.zeros((1, 1), dtype=np.float32)], axis=1)
            _, rows = self.main.search(augmented, k, params=params)
            rows = rows[0][rows[0] >= 0]
            scores = self.main_embeddings[rows] @ query[0]  # exact q.x (the L2 order is the same)
            order = np.argsort(-scores, kind="stable")
            return rows[order], scores[order].astype(np.float32)
        else:
            scores, rows = self.main.search(query, k)
        return rows[0], scores[0]

    def _exact(
        self, query: np.ndarray, k: int, exclude: np.ndarray | None, delta: _Delta
    ) -> tuple[np.ndarray, np.ndarray]:
        with np.errstate(over="ignore", invalid="ignore"):  # overflowing scores are dropped by the caller
            scores = np.concatenate([self.main_embeddings @ query, delta.vectors @ query])
        rows = np.concatenate([np.arange(self.n_main, dtype=np.int64), delta.ids])
        return _exact_top_k(rows, scores, k, exclude)


def _exact_top_k(
    rows: np.ndarray, scores: np.ndarray, k: int, exclude: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best (rows int64, scores float32) by score, ties in the given row order, ``exclude`` skipped."""
    if exclude is not None and len(exclude):
        keep = ~np.isin(rows, exclude)
        rows, scores = rows[keep], scores[keep]
    top = np.argsort(-scores, kind="stable")[: max(k, 0)]
    return rows[top], scores[top].astype(np.float32)
