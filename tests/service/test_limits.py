"""Bounds on what a client can make one worker hold or compute: the per-user seen cap (both stores, the Redis layout
written before it), the MemoryStore's seen TTL, blocking store calls kept off the event loop, the norm bound on
online items and non-finite scores, and manifest file names that must stay inside the bundle."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.bundle import BundleError, load_bundle, sha256_file, write_bundle
from service.store import MemoryStore, RedisStore, make_store
from tests.service.conftest import (
    MODALITIES,
    N_ITEMS,
    TEST_REDIS_URL,
    build_tiny_bundle,
    make_settings,
    redis_available,
)

CAP = 3


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def capped_store(request: pytest.FixtureRequest) -> Iterator[MemoryStore | RedisStore]:
    """A store keeping at most CAP seen items per user."""
    if request.param == "memory":
        yield MemoryStore(seen_max_items=CAP)
        return
    if not redis_available():
        pytest.skip(f"no Redis at {TEST_REDIS_URL}")
    prefix = f"modalrec-test:{uuid.uuid4().hex}:"
    store = RedisStore(TEST_REDIS_URL, prefix=prefix, seen_max_items=CAP)
    yield store
    keys = list(store.client.scan_iter(match=f"{prefix}*"))
    if keys:
        store.client.delete(*keys)
    store.close()


def stream_length(store: MemoryStore | RedisStore) -> int:
    return len(store.events) if isinstance(store, MemoryStore) else int(store.client.xlen(store.events_key))


# -- the seen cap ---------------------------------------------------------------------------------------------------
def test_seen_set_keeps_only_the_most_recent_items_and_the_stream_keeps_every_event(capped_store) -> None:
    """A user's seen set had no limit: 150 event requests made every /recommend of that user read 150k ids and
    over-fetch 150k candidates (3.4 -> 143 ms in memory, 414 ms with Redis). It keeps the CAP most recent now; the
    event stream, which the retrain job reads, still gets every event."""
    store = capped_store
    store.record_events("u", ["a", "b"], "interaction", 100.0)
    store.record_events("u", ["c", "d"], "interaction", 101.0)
    assert store.get_seen("u") == {"b", "c", "d"}
    store.record_events("u", ["b"], "interaction", 102.0)  # seen again: now the most recent
    store.record_events("u", ["e"], "interaction", 103.0)
    assert store.get_seen("u") == {"d", "b", "e"}
    store.record_events("u", ["f", "g", "h", "i"], "click", 104.0)  # one request over the cap: its last items
    assert store.get_seen("u") == {"g", "h", "i"}
    assert store.get_seen("nobody") == set()
    assert stream_length(store) == 10
    if isinstance(store, RedisStore):  # one bounded ZSET with the TTL, written in the events' transaction
        key = store.seen_key("u")
        assert store.client.type(key) == "zset" and store.client.zcard(key) == CAP
        assert 0 < store.client.ttl(key) <= store.seen_ttl_s


@pytest.mark.redis
def test_redis_seen_sets_of_the_unbounded_layout_are_read_up_to_the_cap_and_never_written() -> None:
    """Seen SETs written before the cap (``<p>seen:<user>``) are still read, at most CAP members, after the recent
    items; they are left to expire by their own TTL."""
    if not redis_available():
        pytest.skip(f"no Redis at {TEST_REDIS_URL}")
    prefix = f"modalrec-test:{uuid.uuid4().hex}:"
    store = RedisStore(TEST_REDIS_URL, prefix=prefix, seen_max_items=CAP)
    try:
        legacy = store.legacy_seen_key("old")
        old_items = {f"x{i}" for i in range(10)}
        store.client.sadd(legacy, *old_items)
        store.client.expire(legacy, 1000)
        seen = store.get_seen("old")
        assert len(seen) == CAP and seen <= old_items
        store.record_events("old", ["n1", "n2"], "interaction", time.time())
        seen = store.get_seen("old")
        assert {"n1", "n2"} <= seen and len(seen) == CAP and seen - {"n1", "n2"} <= old_items
        assert store.client.scard(legacy) == 10 and store.client.ttl(legacy) > 0
    finally:
        keys = list(store.client.scan_iter(match=f"{prefix}*"))
        if keys:
            store.client.delete(*keys)
        store.close()


def test_recommend_excludes_and_over_fetches_only_the_capped_seen_items(bundle_root, capped_store) -> None:
    app = create_app(
        make_settings(bundle_root, seen_max_items=CAP), store=capped_store, registry=CollectorRegistry()
    )
    with TestClient(app) as client:
        for item in ("i10", "i11", "i12", "i13", "i14"):
            assert client.post("/users/u0/events", json={"item_ids": [item]}).status_code == 200
        index = client.app.state.runtime.state.index
        search, excluded_sizes = index.search, []

        def spying_search(query, k, exclude=None):
            excluded_sizes.append(0 if exclude is None else len(exclude))
            return search(query, k, exclude)

        index.search = spying_search
        items = [item["item_id"] for item in client.post("/recommend/u0", json={"k": 50}).json()["items"]]
    # u0 saw i0..i3 in training; of its online events only the 3 most recent are excluded
    assert set(items) == {f"i{i}" for i in range(N_ITEMS)} - {"i0", "i1", "i2", "i3", "i12", "i13", "i14"}
    assert excluded_sizes == [4 + CAP]


def test_the_store_settings_reach_both_stores(tmp_path) -> None:
    memory = make_store(make_settings(tmp_path, seen_max_items=7, redis_seen_ttl_s=5))
    assert isinstance(memory, MemoryStore) and memory.seen_max_items == 7 and memory.seen_ttl_s == 5
    redis_store = make_store(make_settings(tmp_path, seen_max_items=7, redis_url=TEST_REDIS_URL))
    assert isinstance(redis_store, RedisStore) and redis_store.seen_max_items == 7
    redis_store.close()


# -- MemoryStore TTL --------------------------------------------------------------------------------------------
def test_memory_store_seen_sets_expire_like_redis_ones() -> None:
    """``redis_seen_ttl_s`` was ignored by the MemoryStore: every user id stayed forever. A user's set now expires
    that long after the user's latest event, and expired users are dropped as later events arrive."""
    now = [0.0]
    store = MemoryStore(seen_ttl_s=10, clock=lambda: now[0])
    store.record_events("early", ["i1"], "interaction", 1.0)
    now[0] = 5.0
    store.record_events("late", ["i2"], "interaction", 2.0)
    now[0] = 9.0
    store.record_events("early", ["i3"], "interaction", 3.0)  # refreshes early's TTL: expires at 19
    now[0] = 16.0
    assert store.get_seen("late") == set() and store.get_seen("early") == {"i1", "i3"}
    now[0] = 19.5
    store.record_events("other", ["i4"], "interaction", 4.0)
    assert list(store._seen) == ["other"]  # expired users are not kept
    assert store.get_seen("early") == set() and len(store.events) == 4  # the stream is not the seen set


# -- blocking store calls stay off the event loop -----------------------------------------------------------------
class BlockingStore(MemoryStore):
    """A MemoryStore whose request-path calls hang (a stalled Redis) while ``block`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.block = threading.Event()
        self.entered = threading.Event()
        self.release = threading.Event()

    def _maybe_hang(self) -> None:
        if self.block.is_set() and threading.current_thread().name != "modalrec-watcher":
            self.entered.set()
            self.release.wait(3)

    def get_seen(self, user_id: str) -> set[str]:
        self._maybe_hang()
        return super().get_seen(user_id)

    def record_events(self, *args, **kwargs) -> None:
        self._maybe_hang()
        super().record_events(*args, **kwargs)

    def items_revision(self) -> int:
        self._maybe_hang()
        return super().items_revision()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/recommend/u1", {"k": 5}),
        ("POST", "/users/u1/events", {"item_ids": ["i1"]}),
        ("GET", "/items/not-here-yet/similar", None),  # an unknown id syncs with the store first
    ],
)
def test_a_hung_store_call_does_not_stall_other_requests(bundle_root, method, path, body) -> None:
    """The routes that call the store ran it on the event loop (``async def``): a Redis that stopped answering froze
    every request of the worker, /healthz included, for the socket timeout."""
    store = BlockingStore()
    app = create_app(make_settings(bundle_root), store=store, registry=CollectorRegistry())
    with TestClient(app) as client:
        answers = []
        store.block.set()
        caller = threading.Thread(target=lambda: answers.append(client.request(method, path, json=body)))
        caller.start()
        try:
            assert store.entered.wait(5)
            started = time.perf_counter()
            health = client.get("/healthz")
            elapsed = time.perf_counter() - started
            still_hung = not store.release.is_set() and caller.is_alive()
        finally:
            store.release.set()
            caller.join(10)
    assert health.status_code == 200 and still_hung and elapsed < 1.5, elapsed
    assert answers[0].status_code in (200, 404)


# -- online item norms, non-finite scores ---------------------------------------------------------------------------
def scaled_features(scale: float) -> dict[str, list[float]]:
    rng = np.random.default_rng(11)
    return {name: (scale * rng.normal(size=dim)).tolist() for name, dim in MODALITIES.items()}


def test_features_far_outside_the_catalogue_scale_are_refused_and_nothing_is_stored(client, store) -> None:
    """Features of 1e36 were accepted, ranked first for every user and (3e37) gave ``"score": null``. The encoded
    vector's norm may be at most online_item_max_norm_factor (10) x the largest item-embedding norm of the bundle."""
    state = client.app.state.runtime.state
    largest = float(np.linalg.norm(state.bundle.item_embeddings.astype(np.float64), axis=1).max())
    assert state.max_online_item_norm == pytest.approx(10 * largest)
    huge = {name: [1e36] * dim for name, dim in MODALITIES.items()}
    response = client.post("/items", json={"item_id": "huge", "features": huge})
    assert response.status_code == 422 and "norm" in response.json()["detail"], response.text
    unit = float(np.linalg.norm(state.encode(scaled_features(1.0))))  # the test encoder is linear
    too_big = client.post(
        "/items",
        json={"item_id": "big", "features": scaled_features(1.5 * state.max_online_item_norm / unit)},
    )
    assert too_big.status_code == 422 and "at most" in too_big.json()["detail"]
    assert store.get_items()[1] == {} and client.get("/model").json()["index"]["online_items"] == 0
    fits = client.post(
        "/items",
        json={"item_id": "fits", "features": scaled_features(0.5 * state.max_online_item_norm / unit)},
    )
    assert fits.status_code == 201, fits.text


def test_stored_items_beyond_the_norm_bound_are_skipped_when_applied(bundle_root, store) -> None:
    """Items stored before the bound (or by a replica with another bundle) are re-encoded at start-up, reload and sync;
    one beyond the bound is skipped with a warning, the others are served."""
    store.put_item("huge", {name: [1e36] * dim for name, dim in MODALITIES.items()})
    store.put_item("fine", scaled_features(0.1))
    app = create_app(make_settings(bundle_root), store=store, registry=CollectorRegistry())
    with TestClient(app) as client:
        state = client.app.state.runtime.state
        assert "fine" in state.item_rows and "huge" not in state.item_rows and state.index.n_online == 1


def test_non_finite_scores_are_dropped_and_counted(tmp_path) -> None:
    """Scores that overflow float32 were sent as ``"score": null``. They are left out of the answer and counted in
    modalrec_nonfinite_scores_dropped_total{route}."""
    root = tmp_path / "bundles"
    items = np.array(
        [[2, 0, 0, 0], [-2, 0, 0, 0], [0.5, 0, 0, 0], [0, 1, 0, 0], [2e38, 0, 0, 0]], dtype=np.float32
    )
    write_bundle(
        root, model="m", dataset="d", user_ids=["big", "plain"], item_ids=[f"i{i}" for i in range(5)],
        user_embeddings=np.array([[3e38, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32), item_embeddings=items,
        seen_indptr=np.zeros(3, dtype=np.int64), seen_indices=np.zeros(0, dtype=np.int64),
        popularity=np.array([1, np.nan, 1, 1, 1], dtype=np.float32),
    )  # fmt: skip
    app = create_app(make_settings(root), store=MemoryStore(), registry=CollectorRegistry())
    with TestClient(app) as client:
        response = client.post("/recommend/big", json={"k": 5})
        similar = client.get("/items/i0/similar", params={"k": 4})
        assert client.post("/recommend/plain", json={"k": 5}).status_code == 200
        popular = client.post("/recommend/stranger", json={"k": 5}).json()  # popularity fallback, i1's is NaN
        metrics = client.get("/metrics").text
    assert response.status_code == 200 and similar.status_code == 200
    scores = [item["score"] for item in response.json()["items"]]
    assert [item["item_id"] for item in response.json()["items"]] == ["i2", "i3"]  # i0, i4: +inf, i1: -inf
    assert all(isinstance(s, float) and np.isfinite(s) for s in scores)
    assert [item["item_id"] for item in similar.json()["items"]] == ["i2", "i3", "i1"]  # i0 . i4 overflows
    popular_ids = [item["item_id"] for item in popular["items"]]
    assert popular["fallback"] == "popularity" and popular_ids == ["i0", "i2", "i3", "i4"]
    assert 'modalrec_nonfinite_scores_dropped_total{route="/recommend/{user_id}"} 4.0' in metrics
    assert 'modalrec_nonfinite_scores_dropped_total{route="/items/{item_id}/similar"} 1.0' in metrics


# -- manifest file names --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name", ["../outside.bin", "../../etc/hostname", "/etc/passwd", "sub/file", "a\\b", ".", ".."]
)
def test_manifest_file_names_must_stay_inside_the_bundle(tmp_path, name) -> None:
    """Manifest names were joined to the bundle path unchecked: ``../../etc/hostname`` and ``/etc/passwd`` were
    checksummed and the bundle loaded."""
    bundle_dir = build_tiny_bundle(tmp_path / "bundles")
    (tmp_path / "bundles" / "outside.bin").write_bytes(b"x")
    (bundle_dir / "sub").mkdir()
    (bundle_dir / "sub" / "file").write_bytes(b"y")
    target = Path(name) if name.startswith("/") else bundle_dir / name
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    manifest["files"][name] = sha256_file(target) if target.is_file() else "0" * 64
    (bundle_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not a plain file name"):
        load_bundle(bundle_dir)
