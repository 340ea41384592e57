"""Several service replicas on one Redis: online items reach every replica, and the store is the truth.

Runtimes are driven directly (no watcher threads) so that the order of reload, sync and writes is fixed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.metrics import ServiceMetrics
from service.runtime import Runtime
from service.store import RedisStore
from tests.service.conftest import TEST_REDIS_URL, build_tiny_bundle, make_settings, redis_available

pytestmark = pytest.mark.redis

F1 = {"image": [1.0, 0.0, 0.0, 0.0], "text": [0.0] * 5}
F2 = {"image": [0.0, 0.0, 0.0, 0.0], "text": [0.0, 0.0, 0.0, 0.0, 5.0]}


@pytest.fixture
def prefix() -> Iterator[str]:
    if not redis_available():
        pytest.fail(f"Redis is not reachable at {TEST_REDIS_URL}: start it (see README)")
    prefix = f"modalrec-test:{uuid.uuid4().hex}:"
    yield prefix
    store = RedisStore(TEST_REDIS_URL, prefix=prefix)
    keys = list(store.client.scan_iter(match=f"{prefix}*"))
    if keys:
        store.client.delete(*keys)
    store.close()


def _runtime(root: Path, prefix: str) -> Runtime:
    runtime = Runtime(make_settings(root), RedisStore(TEST_REDIS_URL, prefix=prefix), ServiceMetrics(CollectorRegistry()))
    runtime.reload("startup")
    return runtime


def _served_vector(runtime: Runtime, item_id: str) -> np.ndarray:
    state = runtime.state
    return state.index.vector(state.item_rows[item_id])


def test_a_reload_serves_the_stores_version_of_an_item_another_replica_replaced(tmp_path, prefix):
    root = tmp_path / "bundles"
    build_tiny_bundle(root)
    a, b = _runtime(root, prefix), _runtime(root, prefix)
    a.add_item("x", F1)
    b.sync_online_items()  # b serves x = F1
    a.add_item("x", F2)  # the store has x = F2; b has not synced
    build_tiny_bundle(root, seed=1)  # a new bundle: b's watcher reloads before it syncs
    b.reload("poll")
    b.sync_online_items()
    assert b.state.online_features["x"] == F2
    np.testing.assert_allclose(_served_vector(b, "x"), b.state.encode(F2))


def test_a_sync_during_a_reload_does_not_hide_a_replacement_from_the_new_state(tmp_path, prefix):
    """A request-triggered sync (unknown item id) can run on the old state while a reload encodes the online items:
    the replacement it applied there must still reach the new state, which was built from the older snapshot."""
    root = tmp_path / "bundles"
    build_tiny_bundle(root)
    a, b = _runtime(root, prefix), _runtime(root, prefix)
    a.add_item("x", F1)
    b.sync_online_items()
    build_tiny_bundle(root, seed=1)
    snapshot = b._stored_items

    def snapshot_then_concurrent_replacement_and_sync():
        taken = snapshot()  # b's reload has read x = F1
        a.add_item("x", F2)  # replica a replaces x
        b.sync_online_items()  # a request on b syncs, on the old state
        return taken

    b._stored_items = snapshot_then_concurrent_replacement_and_sync
    b.reload("poll")
    b._stored_items = snapshot
    b.sync_online_items()
    assert b.state.online_features["x"] == F2
    np.testing.assert_allclose(_served_vector(b, "x"), b.state.encode(F2))


def test_an_item_added_through_one_replica_is_known_to_another_at_once(tmp_path, prefix):
    root = tmp_path / "bundles"
    build_tiny_bundle(root)
    apps = [create_app(make_settings(root), store=RedisStore(TEST_REDIS_URL, prefix=prefix),
                       registry=CollectorRegistry()) for _ in range(2)]
    with TestClient(apps[0]) as a, TestClient(apps[1]) as b:
        assert a.post("/items", json={"item_id": "fresh", "features": F1}).status_code == 201
        # b's background sync has not run (reload_poll_s = 0): the request itself picks the item up
        assert b.post("/users/bob/events", json={"item_ids": ["fresh"]}).json()["recorded"] == 1
        assert b.get("/items/fresh/similar", params={"k": 2}).status_code == 200
        assert b.post("/items", json={"item_id": "fresh", "features": F2}).json()["replaced"] is True
        assert b.post("/users/bob/events", json={"item_ids": ["nowhere"]}).status_code == 422


def test_a_malformed_stored_item_is_skipped_at_start_up_and_in_sync(tmp_path, prefix):
    root = tmp_path / "bundles"
    build_tiny_bundle(root)
    store = RedisStore(TEST_REDIS_URL, prefix=prefix)
    keys = [store.items_key, store.items_rev_key, store.items_changed_key]

    def write_raw(item_id: str, payload: dict) -> None:  # what a faulty writer could leave in the store
        store._put_item_script(keys=keys, args=[item_id, json.dumps(payload)])

    write_raw("bad", {"features": {"image": [1, "a", 0, 0], "text": [0] * 5}, "ts": 0})
    app = create_app(make_settings(root), store=store, registry=CollectorRegistry())
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        runtime = app.state.runtime
        write_raw("later", {"features": F1, "ts": 0})
        write_raw("worse", {"features": {"image": {"not": "a list"}, "text": [0] * 5}, "ts": 0})
        assert runtime.sync_online_items() == 1
        assert "later" in runtime.state.item_rows and not {"bad", "worse"} & set(runtime.state.item_rows)


def test_a_sync_reads_only_the_items_written_since_the_revision_it_has(tmp_path, prefix):
    root = tmp_path / "bundles"
    build_tiny_bundle(root)
    a, b = _runtime(root, prefix), _runtime(root, prefix)
    for n in range(5):
        a.add_item(f"old{n}", F1)
    assert b.sync_online_items() == 5  # b's first sync after start-up: only what came after its reload
    full_reads = []
    get_items = b.store.get_items
    b.store.get_items = lambda: full_reads.append(1) or get_items()
    a.add_item("x", F1)
    a.add_item("old0", F2)
    changed = b.store.items_changed_since(b._items_revision)[1]
    assert set(changed) == {"x", "old0"} and changed["old0"] == F2
    assert b.sync_online_items() == 2 and not full_reads
    np.testing.assert_allclose(_served_vector(b, "old0"), b.state.encode(F2))
    assert b.sync_online_items() == 0  # nothing new
