"""End to end with a live service on real Redis: online events and a cold-start item go in over HTTP, the
retrain job folds them into the training split, exports, publishes on ``<prefix>reload``, and the
running service swaps the new bundle in by itself (pub/sub), now knowing the new user and item."""

import json
import time
import uuid

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.store import RedisStore
from tests.service.conftest import TEST_REDIS_URL, redis_available
from trainer.data.features import write_mmrec_dir
from trainer.data.synthetic import planted_dataset
from trainer.pipeline import export_checkpoint, run_fit
from trainer.retrain import retrain

pytestmark = pytest.mark.redis
TRAIN = {"max_epochs": 2, "device": "cpu", "seed": 1}


def wait_for_version(client: TestClient, version: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = client.get("/model").json()
        if model["version"] == version:
            return model
        time.sleep(0.1)
    raise AssertionError(f"the service did not switch to {version} within {timeout}s")


def test_events_and_new_item_reach_the_next_bundle_and_the_live_service(tmp_path):
    if not redis_available():
        pytest.fail(f"Redis is not reachable at {TEST_REDIS_URL}: start it (see README)")
    data = planted_dataset(n_users=60, n_items=50, interactions_per_user=10, with_kg=False, seed=3)
    dataset_dir = write_mmrec_dir(data, tmp_path / "planted")
    run_dir = tmp_path / "run"
    first = run_fit("ludp", dataset_dir, run_dir, train_overrides=TRAIN, progress=False)

    prefix = f"test-e2e-{uuid.uuid4().hex[:8]}:"
    settings = Settings(
        bundle_root=str(run_dir / "bundles"), redis_url=TEST_REDIS_URL, redis_prefix=prefix, reload_poll_s=0
    )
    store = RedisStore(TEST_REDIS_URL, prefix=prefix)
    try:
        with TestClient(create_app(settings, store=store)) as client:
            before = wait_for_version(client, first["bundle"].rsplit("/", 1)[-1])
            features = {name: data.features[name][4].tolist() for name in sorted(data.features)}
            assert client.post("/items", json={"item_id": "fresh", "features": features}).status_code == 201
            unseen = next(i for i in data.item_ids if data.train[0, data.item_ids.index(i)] == 0)
            assert client.post("/users/u0/events", json={"item_ids": [unseen], "type": "click"}).status_code == 200
            assert client.post(
                "/users/newbie/events", json={"item_ids": ["fresh", "i1", "i6"], "type": "click"}
            ).json()["recorded"] == 3
            assert client.post("/recommend/newbie", json={"k": 5}).json()["fallback"] == "folded_in"

            result = retrain(dataset_dir, run_dir, model="ludp", redis_url=TEST_REDIS_URL, prefix=prefix,
                             max_epochs=2)
            assert result["merge"] == {
                "events_read": 4, "events_added": 4, "duplicate_events": 0,
                "new_users": 1, "new_items": 1, "skipped_unknown_items": 0,
            }
            after = wait_for_version(client, result["bundle"].rsplit("/", 1)[-1])
            assert after["n_users"] == before["n_users"] + 1 and after["n_items"] == before["n_items"] + 1
            assert after["index"]["online_items"] == 0  # "fresh" is a bundle item now
            known = client.post("/recommend/newbie", json={"k": 5}).json()
            assert known["fallback"] is None and len(known["items"]) == 5
            assert not {"fresh", "i1", "i6"} & {item["item_id"] for item in known["items"]}
            u0 = client.post("/recommend/u0", json={"k": 40}).json()
            assert unseen not in {item["item_id"] for item in u0["items"]}
            assert client.get("/items/fresh/similar", params={"k": 3}).status_code == 200
            # the merged dataset is not on disk: the run records it, and re-exporting from the original is refused
            assert json.loads((run_dir / "metrics.json").read_text())["derived_dataset"]["merge"] == result["merge"]
            with pytest.raises(ValueError, match="names no dataset"):
                export_checkpoint(run_dir)
    finally:
        keys = list(store.client.scan_iter(match=f"{prefix}*"))
        if keys:
            store.client.delete(*keys)
