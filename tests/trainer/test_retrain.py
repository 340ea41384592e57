"""Retrain job: events folded into train, new users/items appended, store stream read from real Redis."""

import json
import uuid

import numpy as np
import pytest

from tests.trainer.real_redis import REDIS_URL, redis_client
from trainer.data.synthetic import planted_dataset
from trainer.retrain import merge_events, read_store_events


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
    client = redis_client()
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


@pytest.mark.redis
def test_events_trimmed_from_the_stream_still_reach_later_retrains(tmp_path, monkeypatch):
    """The stream is capped (MAXLEN) and the dataset on disk never changes: an event a run has read must stay in
    the training data of every later run, after the cap has trimmed it from the stream."""
    import trainer.pipeline as pipeline
    from trainer.data.features import write_mmrec_dir
    from trainer.retrain import retrain

    client = redis_client()
    data = planted_dataset(n_users=20, n_items=30, interactions_per_user=8, with_kg=False, seed=0)
    dataset_dir = write_mmrec_dir(data, tmp_path / "planted")
    trained = []

    def fake_fit(run_config, dataset, dataset_path, out_dir, progress=True, derived_dataset=None):
        trained.append(dataset)
        return {"bundle": str(out_dir / "bundles" / f"v{len(trained)}"), "valid": {}, "test": {}}

    monkeypatch.setattr(pipeline, "run_fit_config", fake_fit)
    prefix = f"test-retrain-{uuid.uuid4().hex[:8]}:"
    stream = f"{prefix}events"
    try:
        client.xadd(stream, {"user_id": "early", "item_id": "i1", "type": "click", "ts": "1.0"})
        first = retrain(dataset_dir, tmp_path / "run", redis_url=REDIS_URL, prefix=prefix, keep_bundles=0)
        assert first["merge"]["new_users"] == 1
        for n in range(3):  # later traffic; the cap trims the oldest entry
            client.xadd(stream, {"user_id": f"late{n}", "item_id": "i2", "type": "click", "ts": "2.0"},
                        maxlen=3, approximate=False)
        assert "early" not in {fields["user_id"] for _, fields in client.xrange(stream)}
        second = retrain(dataset_dir, tmp_path / "run", redis_url=REDIS_URL, prefix=prefix, keep_bundles=0)
        assert second["merge"]["events_added"] == 4 and second["merge"]["new_users"] == 4
        merged = trained[-1]
        assert merged.train[merged.user_ids.index("early"), merged.item_ids.index("i1")] == 1
        third = retrain(dataset_dir, tmp_path / "run", redis_url=REDIS_URL, prefix=prefix, keep_bundles=0)  # nothing new
        assert third["merge"] == second["merge"]
        assert len((tmp_path / "run" / "online_events.jsonl").read_text().splitlines()) == 4
        monkeypatch.setenv("MODALREC_REDIS_PREFIX", prefix)  # no --key-prefix: the service's setting, not modalrec:
        from_env = retrain(dataset_dir, tmp_path / "run_env", redis_url=REDIS_URL, keep_bundles=0)
        assert from_env["merge"]["new_users"] == 3  # the three entries still in the stream
    finally:
        client.delete(stream, f"{prefix}items")


def test_merge_skips_events_whose_ids_a_dataset_refuses_instead_of_failing_every_retrain(caplog):
    """The service takes any non-empty id (a user id with %09 in the path, an item id with a line break), but a
    dataset refuses ids with a tab or line break (they break split files). Such an event, kept in
    online_events.jsonl, must not make every later retrain fail: it is skipped, with a warning that counts it."""
    data = planted_dataset(n_users=20, n_items=30, interactions_per_user=10, seed=0)
    new_item = {"image": [0.5] * 48, "text": [0.1] * 32}
    events = [("user\twith tab", "i3"), ("u1", "item\nwith newline"), ("u2", "i4\r"), ("new-user", "i5")]
    online = {"item\nwith newline": new_item, "i4\r": new_item}
    merged, report = merge_events(data, events, online)
    assert report.events_read == 4 and report.events_added == 1
    assert report.new_users == 1 and report.new_items == 0
    assert merged.user_ids[-1] == "new-user" and merged.n_items == data.n_items
    assert "skipped 3 events whose user or item id has a tab or line break" in caplog.text
