"""Retrain job: events folded into train, new users/items appended, store stream read from real Redis."""

import json
import os
import uuid

import numpy as np
import pytest

from trainer.data.synthetic import planted_dataset
from trainer.retrain import merge_events, read_store_events

REDIS_URL = os.environ.get("MODALREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def test_merge_adds_new_pairs_users_and_items_only_once():
    data = planted_dataset(n_users=20, n_items=30, interactions_per_user=10, seed=0)
    known_pair = (data.user_ids[0], data.item_ids[int(data.train[0].indices[0])])
    new_item = {"image": [0.5] * 48, "text": [0.1] * 32}
    events = [
        known_pair,
        ("u1", "i29"),
        ("u1", "i29"),
        ("brand-new-user", "i3"),
        ("u2", "online-item"),
        ("u2", "unknown-item-without-features"),
    ]
    already = data.train[1, 29] != 0 or data.valid[1, 29] != 0 or data.test[1, 29] != 0
    merged, report = merge_events(data, events, {"online-item": new_item})
    assert report.events_read == 6
    assert report.new_users == 1 and report.new_items == 1 and report.skipped_unknown_items == 1
    assert report.events_added == (2 if already else 3)
    assert merged.n_users == 21 and merged.n_items == 31
    assert merged.train[merged.user_ids.index("brand-new-user"), 3] == 1
    assert merged.train[2, 30] == 1
    np.testing.assert_allclose(merged.features["image"][30], 0.5)
    assert merged.valid.nnz == data.valid.nnz and merged.test.nnz == data.test.nnz
    assert merged.kg is not None and merged.kg.item_entity[30] == -1


def test_merge_rejects_online_items_with_wrong_dimensions():
    data = planted_dataset(n_users=10, n_items=20, interactions_per_user=8, seed=0)
    merged, report = merge_events(data, [("u0", "x")], {"x": {"image": [1.0] * 3, "text": [1.0] * 32}})
    assert report.skipped_unknown_items == 1 and merged.n_items == 20


@pytest.mark.redis
def test_read_store_events_from_real_redis():
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: start it (see README)")
    prefix = f"test-retrain-{uuid.uuid4().hex[:8]}:"
    try:
        for i in range(5):
            client.xadd(f"{prefix}events", {"user_id": f"u{i % 2}", "item_id": f"i{i}", "type": "click", "ts": "1.0"})
        client.hset(f"{prefix}items", "new", json.dumps({"features": {"text": [1.0, 2.0]}, "ts": 1.0}))
        events, items, last_id = read_store_events(REDIS_URL, prefix, batch=2)
        assert events == [(f"u{i % 2}", f"i{i}") for i in range(5)]
        assert items == {"new": {"text": [1.0, 2.0]}}
        assert last_id == client.xrevrange(f"{prefix}events", count=1)[0][0]
    finally:
        client.delete(f"{prefix}events", f"{prefix}items")
