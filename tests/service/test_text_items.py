"""POST /items with raw text: the bundle's text encoder (tokenizer.json + text_encoder.onnx) turns it into the
``text`` modality's features; the store keeps those floats. Tiny files built in tmp_path: a word-level tokenizer
and an ONNX graph that averages word vectors over the attention mask and L2-normalises them."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.bundle import BundleError, load_bundle, write_bundle
from service.state import ServingState
from tests.service.conftest import (
    DIM,
    MODALITIES,
    N_USERS,
    encoder_weights,
    make_settings,
    write_linear_encoder,
)

VOCAB = ["[UNK]", "red", "blue", "shoe", "hat", "warm", "wool", "sock"]
MAX_TOKENS = 4
TEXT_DIM = MODALITIES["text"]


def word_vectors() -> np.ndarray:
    return np.random.default_rng(7).normal(size=(len(VOCAB), TEXT_DIM)).astype(np.float32)


def expected_text_features(text: str) -> np.ndarray:
    """What the tiny text encoder computes: mean of the (lower-cased, truncated) words' vectors, L2-normalised."""
    ids = [VOCAB.index(w) if w in VOCAB else 0 for w in text.lower().split()][:MAX_TOKENS]
    mean = word_vectors()[ids].mean(axis=0)
    return mean / np.linalg.norm(mean)


def write_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(VOCAB)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.save(str(path))


def write_text_encoder(path: Path, out_dim: int = TEXT_DIM) -> None:
    """ONNX: embedding = normalize(sum_t mask[b, t] * V[input_ids[b, t]] / sum_t mask[b, t])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    vectors = word_vectors()[:, :out_dim] if out_dim <= TEXT_DIM else np.ones((len(VOCAB), out_dim), np.float32)
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["B", "T"]) for n in ("input_ids", "attention_mask")]
    initializers = [
        numpy_helper.from_array(vectors, name="V"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), name="axis2"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), name="axis1"),
    ]
    nodes = [
        helper.make_node("Gather", ["V", "input_ids"], ["words"]),
        helper.make_node("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "axis2"], ["mask3"]),
        helper.make_node("Mul", ["words", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "axis1"], ["count"], keepdims=0),
        helper.make_node("Div", ["summed", "count"], ["mean"]),
        helper.make_node("LpNormalization", ["mean"], ["embedding"], axis=1, p=2),
    ]
    output = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", out_dim])
    graph = helper.make_graph(nodes, "text_encoder", inputs, [output], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_text_bundle(root: Path, *, files=("text_encoder.onnx", "tokenizer.json"), info=None, out_dim=TEXT_DIM,
                      seed: int = 0) -> Path:
    """The conftest's tiny bundle (linear item encoder over image 4-d + text 5-d) plus a text encoder."""
    rng = np.random.default_rng(seed)
    n_items = 30
    work = root.parent / f"text-{uuid.uuid4().hex}"
    work.mkdir(parents=True)
    write_linear_encoder(work / "item_encoder.onnx", encoder_weights(seed))
    write_text_encoder(work / "text_encoder.onnx", out_dim)
    write_tokenizer(work / "tokenizer.json")
    seen = [np.arange(u, u + 4) % n_items for u in range(N_USERS)]
    extra = {"item_encoder.onnx": work / "item_encoder.onnx"}
    extra.update({name: work / name for name in files})
    manifest = {"text_encoder": info if info is not None else {"modality": "text", "dim": TEXT_DIM,
                                                                "max_tokens": MAX_TOKENS}}
    return write_bundle(
        root,
        model="test-model",
        dataset="tiny",
        user_ids=[f"u{i}" for i in range(N_USERS)],
        item_ids=[f"i{i}" for i in range(n_items)],
        user_embeddings=rng.normal(size=(N_USERS, DIM)).astype(np.float32),
        item_embeddings=rng.normal(size=(n_items, DIM)).astype(np.float32),
        seen_indptr=np.concatenate([[0], np.cumsum([len(s) for s in seen])]).astype(np.int64),
        seen_indices=np.concatenate(seen).astype(np.int64),
        popularity=np.arange(n_items, dtype=np.float32),
        modalities=MODALITIES,
        extra_files=extra,
        extra_manifest=manifest,
    )


@pytest.fixture
def text_client(tmp_path, store):
    root = tmp_path / "bundles"
    build_text_bundle(root)
    app = create_app(make_settings(root), store=store, registry=CollectorRegistry())
    with TestClient(app) as client:
        yield client, store


IMAGE = [0.5, -1.0, 0.25, 2.0]


def test_raw_text_is_encoded_by_the_bundles_text_encoder_and_stored_as_floats(text_client):
    client, store = text_client
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
    client, store = text_client
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
    client, store = text_client
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
