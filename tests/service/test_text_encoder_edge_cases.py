"""POST /items with raw text, edge cases: text the tokenizer cannot take, strictness of the ``[floats] | "text"``
union, bundles whose text encoder loads but fails when run (refused with 409 on reload, the old bundle keeps
serving), and the order of the checks (nothing costly for a request that is refused anyway)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

import tests.service.text_fixtures as text_items
from service.app import create_app
from tests.service.conftest import ADMIN_TOKEN, make_settings
from tests.service.text_fixtures import IMAGE, MAX_TOKENS, TEXT_DIM, VOCAB, build_text_bundle, word_vectors

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WRITE_TEXT_ENCODER = text_items.write_text_encoder  # the tests below monkeypatch the module's name


def _assert_nothing_stored(client, store, item_id):
    _, items = store.get_items()
    assert item_id not in items
    assert client.get(f"/items/{item_id}/similar").status_code == 404


def test_text_with_a_lone_surrogate_is_a_422_not_a_500(text_client):
    """JSON may escape a lone UTF-16 surrogate (``"\\ud800"``); Python's json accepts it, the tokenizer does not
    (TypeError: 500)."""
    client, store, _ = text_client
    body = b'{"item_id": "s", "features": {"text": "red \\ud800 hat", "image": [0.5, -1.0, 0.25, 2.0]}}'
    answer = client.post("/items", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 422, answer.text
    assert "modality 'text'" in answer.text and "unicode" in answer.text.lower()
    _assert_nothing_stored(client, store, "s")


@pytest.mark.parametrize(
    "text_values",
    [["1", "2", "3", "4", "5"], [True, False, True, False, True], ["0.5", 1, 2, 3, 4]],
    ids=["numeric-strings", "booleans", "mixed"],
)
def test_feature_values_that_are_not_numbers_are_refused_not_coerced(text_client, text_values):
    """``list[float] | str`` in lax mode turned ``["1", ...]`` and ``[true, ...]`` into floats silently."""
    client, store, _ = text_client
    answer = client.post("/items", json={"item_id": "c", "features": {"text": text_values, "image": IMAGE}})
    assert answer.status_code == 422, answer.text
    _assert_nothing_stored(client, store, "c")


def test_integers_and_a_string_of_digits_keep_working(text_client):
    client, store, _ = text_client
    ints = client.post("/items", json={"item_id": "ints", "features": {"text": [1, 0, 0, 0, 2], "image": [1, 2, 3, 4]}})
    assert ints.status_code == 201, ints.text
    digits = client.post("/items", json={"item_id": "digits", "features": {"text": "1995", "image": IMAGE}})
    assert digits.status_code == 201, digits.text  # a string is always text, even when it looks like a number
    _, items = store.get_items()
    assert items["ints"]["text"] == [1.0, 0.0, 0.0, 0.0, 2.0]
    np.testing.assert_allclose(items["digits"]["text"], text_items.expected_text_features("1995"), rtol=1e-5)


@pytest.mark.parametrize("encoded", ["[0.5, -1.0, 0.25, 2.0, 1.0]", " [1, 2, 3] ", "[]"])
def test_a_vector_sent_as_a_json_string_is_refused_not_encoded_as_text(text_client, encoded):
    """A client that JSON-encodes its vector twice sends ``"[0.5, ...]"``: for the text modality that was a valid
    string, encoded as text, and the item was stored with a meaningless vector (201)."""
    client, store, _ = text_client
    answer = client.post("/items", json={"item_id": "j", "features": {"text": encoded, "image": IMAGE}})
    assert answer.status_code == 422, answer.text
    assert "a string holding a JSON list" in answer.text
    _assert_nothing_stored(client, store, "j")
    text = client.post("/items", json={"item_id": "t", "features": {"text": "[red] hat [wool]", "image": IMAGE}})
    assert text.status_code == 201, text.text  # brackets in real text are fine


def write_short_table_encoder(path, out_dim=TEXT_DIM):
    """A text encoder whose embedding table has fewer rows than the tokenizer's vocabulary (the tokenizer of
    another model): it loads, and fails on any text with a word past row 2."""
    WRITE_TEXT_ENCODER(path, vectors=word_vectors()[:3])


def write_position_limited_encoder(path, out_dim=TEXT_DIM, n_positions=MAX_TOKENS):
    """A text encoder with a position table of ``n_positions`` rows (a BERT-like model's limit)."""
    WRITE_TEXT_ENCODER(path, n_positions=n_positions)


BROKEN = {
    "embedding-table-smaller-than-the-vocabulary": (write_short_table_encoder, None),
    # the manifest's token limit is past the model's position table: fine on short texts, fails on long ones
    "token-limit-past-the-position-table": (
        write_position_limited_encoder,
        {"modality": "text", "dim": TEXT_DIM, "max_tokens": MAX_TOKENS + 2},
    ),
}


@pytest.mark.parametrize("broken", sorted(BROKEN))
def test_a_bundle_whose_text_encoder_fails_when_run_is_refused_with_409(text_client, monkeypatch, broken):
    """onnxruntime's run-time errors are not RuntimeError/ValueError: the reload answered 500, counted no refusal,
    and (by polling) retried the bundle forever; a check only on a short text missed the token-limit case and
    every long text then got a 500."""
    client, store, root = text_client
    old = client.get("/model").json()["version"]
    writer, info = BROKEN[broken]
    monkeypatch.setattr(text_items, "write_text_encoder", writer)
    bad = build_text_bundle(root, seed=1, info=info)
    answer = client.post("/admin/reload", headers=AUTH)
    assert answer.status_code == 409, answer.text
    assert bad.name in answer.json()["detail"] and "text encoder" in answer.json()["detail"]
    assert client.get("/model").json()["version"] == old
    assert 'modalrec_reload_failures_total{trigger="admin"} 1.0' in client.get("/metrics").text
    long_text = " ".join(VOCAB[1:] * 2)
    created = client.post("/items", json={"item_id": "n", "features": {"text": long_text, "image": IMAGE}})
    assert created.status_code == 201, created.text  # the old bundle's text encoder keeps serving


def test_a_polled_bundle_whose_text_encoder_fails_is_refused_once_not_retried(tmp_path, store, monkeypatch):
    root = tmp_path / "bundles"
    first = build_text_bundle(root)
    app = create_app(make_settings(root, reload_poll_s=0.05), store=store, registry=CollectorRegistry())
    with TestClient(app) as client:
        monkeypatch.setattr(text_items, "write_text_encoder", write_short_table_encoder)
        build_text_bundle(root, seed=1)
        metric = 'modalrec_reload_failures_total{trigger="poll"} 1.0'
        deadline = time.monotonic() + 5
        while metric not in client.get("/metrics").text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric in client.get("/metrics").text
        time.sleep(0.5)  # ten more polls: the refused bundle is not tried again
        assert metric in client.get("/metrics").text
        assert client.get("/model").json()["version"] == first.name


def test_raw_text_for_a_bundle_item_or_with_a_missing_modality_is_refused_before_it_is_encoded(text_client,
                                                                                               monkeypatch):
    """The text encoder is the costly part of a request (tens of ms of CPU for a long text): requests refused
    anyway (409 bundle item, 422 missing or unknown modality) must not run it."""
    client, store, _ = text_client
    text_encoder = client.app.state.runtime.state.text_encoder

    def must_not_run(text):
        raise AssertionError("the text was encoded for a request that is refused anyway")

    monkeypatch.setattr(text_encoder, "encode", must_not_run)
    assert client.post("/items", json={"item_id": "i0", "features": {"text": "red hat", "image": IMAGE}}).status_code == 409
    missing = client.post("/items", json={"item_id": "m", "features": {"text": "red hat"}})
    assert missing.status_code == 422 and "missing modality ['image']" in missing.text
    unknown = client.post("/items", json={"item_id": "m", "features": {"text": "red hat", "image": IMAGE,
                                                                       "audio": [1.0]}})
    assert unknown.status_code == 422 and "unknown modality ['audio']" in unknown.text
    short = client.post("/items", json={"item_id": "m", "features": {"text": "red hat", "image": [1.0]}})
    assert short.status_code == 422 and "modality 'image' has 1 values; expected 4" in short.text
    nan = client.post("/items", content=b'{"item_id": "m", "features": {"text": "red hat", "image": [NaN, 1, 2, 3]}}',
                      headers={"Content-Type": "application/json"})
    assert nan.status_code == 422 and "modality 'image' contains NaN" in nan.text
    _assert_nothing_stored(client, store, "m")


def test_a_reload_while_the_text_is_encoded_re_encodes_it_with_the_new_bundles_text_encoder(text_client,
                                                                                           monkeypatch):
    """add_item encodes the text outside the mutation lock; a bundle swapped in meanwhile (here: one whose text
    encoder has other word vectors) must encode it again, so the stored floats are the new text model's."""
    client, store, root = text_client
    runtime = client.app.state.runtime
    old_state = runtime.state
    other_vectors = np.random.default_rng(99).normal(size=(len(VOCAB), TEXT_DIM)).astype(np.float32)
    original_encode = old_state.text_encoder.encode
    swapped = []

    def encode_then_reload(text):
        vector = original_encode(text)
        if not swapped:
            monkeypatch.setattr(text_items, "word_vectors", lambda: other_vectors)
            swapped.append(build_text_bundle(root, seed=1))
            runtime.reload("admin")
        return vector

    monkeypatch.setattr(old_state.text_encoder, "encode", encode_then_reload)
    created = client.post("/items", json={"item_id": "n", "features": {"text": "warm wool sock", "image": IMAGE}})
    assert created.status_code == 201, created.text
    assert created.json()["model_version"] == swapped[0].name
    ids = [VOCAB.index(w) for w in ("warm", "wool", "sock")]
    mean = other_vectors[ids].mean(axis=0)
    _, items = store.get_items()
    np.testing.assert_allclose(items["n"]["text"], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    assert runtime.state.online_features["n"] == items["n"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"files": ("text_encoder.onnx",)}, "part of a text encoder"),
        ({"files": ("tokenizer.json",)}, "part of a text encoder"),
        ({"info": {"modality": "text", "dim": TEXT_DIM}}, "max_tokens must be an integer"),
    ],
    ids=["no-tokenizer", "no-onnx", "no-max-tokens"],
)
def test_a_bundle_with_part_of_a_text_encoder_is_refused_on_reload_with_409(text_client, kwargs, message):
    client, _, root = text_client
    old = client.get("/model").json()["version"]
    build_text_bundle(root, seed=1, **kwargs)
    answer = client.post("/admin/reload", headers=AUTH)
    assert answer.status_code == 409 and message in answer.json()["detail"], answer.text
    assert client.get("/model").json()["version"] == old
    created = client.post("/items", json={"item_id": "n", "features": {"text": "red hat", "image": IMAGE}})
    assert created.status_code == 201, created.text
