"""End to end: a model trained and exported by the trainer is served, including a cold-start item
encoded by the trainer's own ONNX export."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from service.store import MemoryStore
from trainer.data.synthetic import planted_dataset
from trainer.pipeline import run_fit


@pytest.mark.parametrize("model", ["ludp", "sand"])
def test_trained_bundle_serves_recommendations_and_cold_start_items(model, tmp_path):
    data = planted_dataset(n_users=80, n_items=60, interactions_per_user=12, seed=4)
    metrics = run_fit(model, tmp_path / "planted", tmp_path / "run", dataset=data, progress=False,
                      train_overrides={"max_epochs": 2, "device": "cpu", "seed": 1})
    settings = Settings(bundle_root=str(tmp_path / "run" / "bundles"), reload_poll_s=0)
    with TestClient(create_app(settings, store=MemoryStore())) as client:
        assert client.get("/readyz").status_code == 200
        model_info = client.get("/model").json()
        assert model_info["model"] == model and model_info["has_item_encoder"] is True
        assert model_info["n_items"] == data.n_items and model_info["modalities"] == data.modality_dims
        answer = client.post(f"/recommend/{data.user_ids[0]}", json={"k": 5}).json()
        seen = {data.item_ids[i] for i in data.train[0].indices}
        assert len(answer["items"]) == 5 and not seen & {x["item_id"] for x in answer["items"]}
        assert answer["fallback"] is None and answer["model_version"] == metrics["bundle"].rsplit("/", 1)[-1]

        features = {name: data.features[name][7].tolist() for name in sorted(data.features)}
        created = client.post("/items", json={"item_id": "brand-new", "features": features})
        assert created.status_code == 201, created.text
        similar = client.get("/items/brand-new/similar", params={"k": 5})
        assert similar.status_code == 200 and len(similar.json()["items"]) == 5
        wrong = dict(features, text=features["text"][:-1])
        assert client.post("/items", json={"item_id": "bad", "features": wrong}).status_code == 422
        nan = dict(features, image=[float("nan")] * len(features["image"]))
        bad_json = client.post("/items", content=str({"item_id": "nan", "features": nan}).replace("'", '"'),
                               headers={"Content-Type": "application/json"})
        assert 400 <= bad_json.status_code < 500
        assert client.get("/items/bad/similar").status_code == 404
    assert np.isfinite(metrics["test"]["recall@20"])
