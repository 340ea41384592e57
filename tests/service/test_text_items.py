"""POST /items with raw text: the bundle's text encoder (tokenizer.json + text_encoder.onnx) turns it into the
``text`` modality's features; the store keeps those floats. Tiny files built in tmp_path: a word-level tokenizer
and an ONNX graph that averages word vectors over the attention mask and L2-normalises them."""

from __future__ import annotations

import numpy as np
import pytest

from service.bundle import BundleError, load_bundle
from service.state import ServingState
from tests.service.conftest import encoder_weights, make_settings
from tests.service.text_fixtures import IMAGE, MAX_TOKENS, TEXT_DIM, build_text_bundle, expected_text_features


def test_raw_text_is_encoded_by_the_bundles_text_encoder_and_stored_as_floats(text_client):
    client, store, _ = text_client
    assert client.get("/model").json()["text_encoder"] == "text"
    created = client.post("/items", json={"item_id": "n1", "features": {"text": "Warm wool SOCK", "image": IMAGE}})
    assert created.status_code == 201, created.text
    text = expected_text_features("Warm wool SOCK")
    _, items = store.get_items()
    np.testing.assert_allclose(items["n1"]["text"], text, rtol=1e-5, atol=1e-6)
    assert items["n1"]["image"] == IMAGE
    # the index holds the item encoder's output for those features: its nearest item by inner product is the one
    # whose embedding scores highest against it
    weights = encoder_weights(0)
    vector = text @ weights["text"] + np.asarray(IMAGE, np.float32) @ weights["image"]
    bundle = load_bundle(client.app.state.runtime.state.bundle.path)
    best = f"i{int(np.argmax(bundle.item_embeddings @ vector))}"
    assert client.get("/items/n1/similar", params={"k": 1}).json()["items"][0]["item_id"] == best
    # the same item sent as floats is the same item
    again = client.post("/items", json={"item_id": "n2", "features": {"text": text.tolist(), "image": IMAGE}})
    assert again.status_code == 201
    _, items = store.get_items()
    np.testing.assert_allclose(items["n2"]["text"], items["n1"]["text"], rtol=1e-6)


def test_text_longer_than_the_token_limit_is_truncated_like_the_features_were(text_client):
    client, store, _ = text_client
    long_text = "red blue shoe hat warm wool sock"  # 7 words, limit 4
    assert client.post("/items", json={"item_id": "long", "features": {"text": long_text, "image": IMAGE}}).status_code == 201
    _, items = store.get_items()
    np.testing.assert_allclose(items["long"]["text"], expected_text_features("red blue shoe hat"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({"text": "   ", "image": IMAGE}, "modality 'text': the text is empty"),
        ({"text": "sock " * 5000, "image": IMAGE}, "the text has 25000 characters; at most 20000"),
        ({"text": "red hat", "image": "a blue picture"},
         "modality 'image' was given as raw text; this bundle's text encoder serves modality 'text', send 4 floats"),
        ({"text": "red hat"}, "missing modality ['image']"),
        ({"text": "red hat", "image": IMAGE, "audio": "beep"}, "modality 'audio' was given as raw text"),
    ],
)
def test_bad_text_items_get_a_clear_422_and_nothing_is_stored(text_client, features, message):
    client, store, _ = text_client
    answer = client.post("/items", json={"item_id": "bad", "features": features})
    assert answer.status_code == 422 and message in answer.text, answer.text
    _, items = store.get_items()
    assert "bad" not in items
    assert client.get("/items/bad/similar").status_code == 404


def test_a_bundle_without_a_text_encoder_refuses_raw_text_clearly(client):
    assert client.get("/model").json()["text_encoder"] is None
    answer = client.post("/items", json={"item_id": "x", "features": {"text": "red hat", "image": IMAGE}})
    assert answer.status_code == 422
    assert "modality 'text' was given as raw text; this bundle has no text encoder, send 5 floats" in answer.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"files": ("text_encoder.onnx",)}, "part of a text encoder"),
        ({"info": {"modality": "audio", "dim": TEXT_DIM, "max_tokens": MAX_TOKENS}}, "modality 'audio'"),
        ({"info": {"modality": "text", "dim": 7, "max_tokens": MAX_TOKENS}}, "gives 7-d vectors"),
        ({"out_dim": 3}, "gives 3-d vectors; the 'text' modality is 5-d"),
        ({"info": {"modality": "text", "dim": TEXT_DIM, "max_tokens": "many"}}, "max_tokens must be an integer"),
    ],
)
def test_a_bundle_with_a_broken_text_encoder_is_refused(tmp_path, kwargs, message):
    bundle = build_text_bundle(tmp_path / "bundles", **kwargs)
    with pytest.raises(BundleError, match=message):
        ServingState.build(load_bundle(bundle), make_settings(tmp_path / "bundles"))


def test_time_spent_encoding_text_is_exported_as_a_histogram(tmp_path):
    from fastapi.testclient import TestClient
    from prometheus_client import CollectorRegistry

    from service.app import create_app
    from service.store import MemoryStore

    root = tmp_path / "bundles"
    build_text_bundle(root)
    registry = CollectorRegistry()
    with TestClient(create_app(make_settings(root), store=MemoryStore(), registry=registry)) as client:
        assert client.post("/items", json={"item_id": "a", "features": {"text": "red hat", "image": IMAGE}}).status_code == 201
        floats = expected_text_features("red hat").tolist()
        assert client.post("/items", json={"item_id": "b", "features": {"text": floats, "image": IMAGE}}).status_code == 201
        assert client.post("/items", json={"item_id": "c", "features": {"text": " ", "image": IMAGE}}).status_code == 422
        exposition = client.get("/metrics").text
    assert registry.get_sample_value("modalrec_text_encode_duration_seconds_count") == 1.0  # only "a" was encoded
    assert registry.get_sample_value("modalrec_text_encode_duration_seconds_sum") > 0
    assert "modalrec_text_encode_duration_seconds_bucket" in exposition
