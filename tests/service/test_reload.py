"""Hot reload: admin endpoint, polling of `current`, pub/sub; corrupt bundles are refused."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.bundle import ITEM_EMBEDDINGS, MANIFEST, load_bundle, publish_current
from tests.service.conftest import ADMIN_TOKEN, build_tiny_bundle, make_settings

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def wait_for(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_admin_reload_swaps_bundle_and_reapplies_online_items(client: TestClient, bundle_root) -> None:
    old_version = client.get("/model").json()["version"]
    features = {"image": [0.1, 0.2, 0.3, 0.4], "text": [1.0, 0.0, 0.0, 0.0, 1.0]}
    assert client.post("/items", json={"item_id": "online", "features": features}).status_code == 201
    client.post("/users/stranger/events", json={"item_ids": ["online"]})
    new_dir = build_tiny_bundle(bundle_root, seed=1)
    response = client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "reloaded", "version": new_dir.name, "previous_version": old_version}
    model = client.get("/model").json()
    assert model["version"] == new_dir.name and model["index"]["online_items"] == 1
    recommendation = client.post("/recommend/u0", json={"k": 3}).json()
    assert recommendation["model_version"] == new_dir.name
    # the online item is re-encoded with the new bundle's encoder and the user's events still fold in
    assert client.post("/recommend/stranger", json={"k": 3}).json()["fallback"] == "folded_in"


def test_corrupt_bundle_is_refused_and_old_one_keeps_serving(client: TestClient, bundle_root) -> None:
    old_version = client.get("/model").json()["version"]
    bad_dir = build_tiny_bundle(bundle_root, seed=2, version="corrupt-v2")
    embeddings = np.load(bad_dir / ITEM_EMBEDDINGS)
    embeddings[0, 0] += 1.0
    np.save(bad_dir / ITEM_EMBEDDINGS, embeddings)  # checksum no longer matches the manifest
    response = client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 409 and "checksum" in response.json()["detail"]
    assert client.post("/recommend/u0", json={"k": 3}).json()["model_version"] == old_version
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics").text
    assert 'modalrec_reload_failures_total{trigger="admin"} 1.0' in metrics


def test_polling_picks_up_a_new_current(bundle_root, store) -> None:
    settings = make_settings(bundle_root, reload_poll_s=0.1)
    with TestClient(create_app(settings, store=store, registry=CollectorRegistry())) as client:
        first = client.get("/model").json()["version"]
        second_dir = build_tiny_bundle(bundle_root, seed=3)
        assert second_dir.name != first
        assert wait_for(lambda: client.get("/model").json()["version"] == second_dir.name)
        # going back to the first version through the symlink works as well
        publish_current(bundle_root, first)
        assert wait_for(lambda: client.get("/model").json()["version"] == first)


def test_pubsub_message_triggers_reload(bundle_root, store) -> None:
    settings = make_settings(bundle_root, reload_poll_s=0)  # no polling: only the message can trigger it
    with TestClient(create_app(settings, store=store, registry=CollectorRegistry())) as client:
        first = client.get("/model").json()["version"]
        new_dir = build_tiny_bundle(bundle_root, seed=4)
        time.sleep(0.3)
        assert client.get("/model").json()["version"] == first
        store.publish_reload(new_dir.name)
        assert wait_for(lambda: client.get("/model").json()["version"] == new_dir.name)


def test_startup_without_bundle_is_not_ready_then_recovers(tmp_path, store) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    settings = make_settings(root, reload_poll_s=0.1)
    with TestClient(create_app(settings, store=store, registry=CollectorRegistry())) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
        assert client.post("/recommend/u0").status_code == 503
        build_tiny_bundle(root)
        assert wait_for(lambda: client.get("/readyz").status_code == 200)
        assert load_bundle(root).version == client.get("/model").json()["version"]


def test_reload_failure_counters_exist_at_zero_before_the_first_refusal(client: TestClient) -> None:
    """deploy/alerts.yml fires on increase(modalrec_reload_failures_total[15m]) > 0: a series that appears only with
    the first refusal (at 1) has no increase for Prometheus, so every process's first refused bundle went unnoticed."""
    metrics = client.get("/metrics").text
    for trigger in ("startup", "poll", "pubsub", "admin"):
        assert f'modalrec_reload_failures_total{{trigger="{trigger}"}} 0.0' in metrics
    for kind in ("popularity", "folded_in"):
        assert f'modalrec_fallbacks_total{{kind="{kind}"}} 0.0' in metrics


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.pop("version"),
        lambda m: m.update(version=None),
        lambda m: m.update(dim=None),
        lambda m: m.update(modalities=None),
    ],
    ids=["no-version", "null-version", "null-dim", "null-modalities"],
)
def test_a_bundle_with_a_malformed_manifest_is_refused(client: TestClient, bundle_root, edit) -> None:
    """The manifest is not covered by the checksums: a bad one must be refused like a corrupt file, not swapped in
    (without a version every request then failed with 500) nor crash the reload (500, no refusal metric)."""
    old_version = client.get("/model").json()["version"]
    bad_dir = build_tiny_bundle(bundle_root, seed=5)
    manifest = json.loads((bad_dir / MANIFEST).read_text())
    edit(manifest)
    (bad_dir / MANIFEST).write_text(json.dumps(manifest))
    response = client.post("/admin/reload", headers=AUTH)
    assert response.status_code == 409 and "manifest" in response.json()["detail"]
    assert client.post("/recommend/u0", json={"k": 3}).json()["model_version"] == old_version
    assert client.get("/model").json()["version"] == old_version
    assert client.get("/readyz").status_code == 200


def test_prune_keeps_the_newest_bundles_and_the_current_one(tmp_path) -> None:
    from service.bundle import prune_bundles

    root = tmp_path / "bundles"
    names = [build_tiny_bundle(root, seed=seed, version=f"v{seed}").name for seed in range(5)]
    publish_current(root, "v1")  # rolled back to an old version: it must survive
    (root / "v9.tmp").mkdir()  # an export in progress is not a bundle
    assert prune_bundles(root, keep=2) == ["v2", "v0"]
    assert sorted(p.name for p in root.iterdir()) == ["current", "v1", "v3", "v4", "v9.tmp"]
    assert load_bundle(root).version == "v1"
    assert prune_bundles(root, keep=2) == [] and names == ["v0", "v1", "v2", "v3", "v4"]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        prune_bundles(root, keep=0)
