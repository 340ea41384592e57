"""The bundle's raw-text encoder (trainer/text_encoder.py): the ONNX export of all-MiniLM-L6-v2, run the way the
service runs it, gives the vectors ``trainer features`` stored; which datasets get one; the cache."""

import json
import shutil

import numpy as np
import pytest

from service.encoder import TextEncoder
from trainer.data.features import _directory_sha256, default_text_model_path, sentence_encoder
from trainer.text_encoder import (
    SAMPLE_TEXTS,
    TextEncoderError,
    dataset_text_model,
    exported_text_encoder,
)

TEXTS = [
    "Star Wars (1977): Action, Adventure, Romance, Sci-Fi, War",
    "Fargo (1996): Crime, Drama, Thriller",
    "une comédie française — très drôle",
    "word " * 400,  # over the 256-token limit
    "x",
]


@pytest.fixture(scope="module")
def minilm():
    path = default_text_model_path()
    return path, _directory_sha256(path)


@pytest.fixture(scope="module")
def exported(minilm):
    return exported_text_encoder(*minilm)


def test_service_text_encoder_reproduces_the_features_trainer_features_stores(exported):
    """The service's tokenizer + ONNX path against sentence_encoder(), the function that wrote text_feat.npy."""
    reference = sentence_encoder()(TEXTS)
    info = exported.info
    assert info["dim"] == 384 and info["max_tokens"] == 256 and info["modality"] == "text"
    assert info["max_abs_error_vs_sentence_transformers"] < 1e-5
    encoder = TextEncoder(exported.onnx, exported.tokenizer, "text", 384, info["max_tokens"])
    got = np.asarray([encoder.encode(text) for text in TEXTS], dtype=np.float32)
    np.testing.assert_allclose(got, reference, atol=1e-5)
    assert np.abs(got[3] - reference[4]).max() > 0.1  # different texts give different vectors


def test_the_export_is_cached_per_model(minilm, exported, monkeypatch):
    import trainer.text_encoder as text_encoder

    def must_not_export(*args, **kwargs):
        raise AssertionError("exported again instead of reading the cache")

    monkeypatch.setattr(text_encoder, "_export", must_not_export)
    again = exported_text_encoder(*minilm)
    assert again.onnx == exported.onnx and again.info == exported.info


def test_only_mean_pooled_normalised_models_are_exported(minilm, tmp_path):
    model_dir = tmp_path / "cls-model"
    model_dir.mkdir()
    for name in ("modules.json", "sentence_bert_config.json", "tokenizer.json"):
        shutil.copy(minilm[0] / name, model_dir / name)
    (model_dir / "1_Pooling").mkdir()
    pooling = json.loads((minilm[0] / "1_Pooling" / "config.json").read_text())
    pooling.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    (model_dir / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    with pytest.raises(TextEncoderError, match="only mean pooling is exported"):
        exported_text_encoder(model_dir, "0" * 64)
    modules = json.loads((minilm[0] / "modules.json").read_text())[:2]
    (model_dir / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(TextEncoderError, match=r"modules \['Transformer', 'Pooling'\]"):
        exported_text_encoder(model_dir, "1" * 64)


def _write_features_json(directory, text):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "features.json").write_text(json.dumps({"modalities": {"text": text}}))


def test_a_dataset_gets_the_text_model_that_built_its_text_features(minilm, tmp_path):
    path, sha = minilm
    _write_features_json(tmp_path / "a", {"dim": 384, "model_sha256": sha})
    assert dataset_text_model(tmp_path / "a", 384) == (path, sha)
    assert dataset_text_model(tmp_path / "a", 128) is None  # the dataset's text features are not this model's
    _write_features_json(tmp_path / "b", {"dim": 384, "model_sha256": "f" * 64})  # a model not on this machine
    assert dataset_text_model(tmp_path / "b", 384) is None
    _write_features_json(tmp_path / "c", {"dim": 384, "model_dir": "caller-supplied encoder"})
    assert dataset_text_model(tmp_path / "c", 384) is None
    (tmp_path / "d").mkdir()  # no features.json: nobody knows how its text features were made
    assert dataset_text_model(tmp_path / "d", 384) is None
    assert dataset_text_model(tmp_path / "a", None) is None  # no text modality
    copy = tmp_path / "model-copy"  # the recorded model_path is tried first
    shutil.copytree(path, copy)
    _write_features_json(tmp_path / "e", {"dim": 384, "model_sha256": sha, "model_path": str(copy)})
    assert dataset_text_model(tmp_path / "e", 384) == (copy, sha)


def _text_dataset_dir(tmp_path, sha):
    from trainer.data.features import write_mmrec_dir
    from trainer.data.synthetic import planted_dataset

    data = planted_dataset(n_users=40, n_items=50, interactions_per_user=8, modality_dims={"text": 384, "image": 8},
                           with_kg=False, seed=0)
    directory = write_mmrec_dir(data, tmp_path / "texty")
    (directory / "features.json").write_text(json.dumps({"modalities": {"text": {"dim": 384, "model_sha256": sha}}}))
    return directory


def test_fit_puts_the_text_encoder_in_the_bundle_hard_linked_from_the_cache(minilm, exported, tmp_path):
    import os

    from service.bundle import load_bundle
    from trainer.pipeline import run_fit

    directory = _text_dataset_dir(tmp_path, minilm[1])
    quick = {"max_epochs": 1, "device": "cpu"}
    metrics = run_fit("mf", directory, tmp_path / "run", train_overrides=quick, progress=False)
    bundle = load_bundle(metrics["bundle"])
    assert bundle.manifest["text_encoder"] == exported.info
    assert os.path.samefile(bundle.path / "text_encoder.onnx", exported.onnx)
    assert os.path.samefile(bundle.path / "tokenizer.json", exported.tokenizer)

    # served: a new item sent as text gets the features sentence_encoder() gives that text
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings
    from service.store import MemoryStore

    store = MemoryStore()
    text = "Brand New Film (2026): Animation, Comedy"
    with TestClient(create_app(Settings(bundle_root=tmp_path / "run" / "bundles", reload_poll_s=0), store=store)) as client:
        assert client.get("/model").json()["text_encoder"] == "text"
        image = [0.0] * 8
        created = client.post("/items", json={"item_id": "new", "features": {"text": text, "image": image}})
        assert created.status_code == 201, created.text
    np.testing.assert_allclose(store.get_items()[1]["new"]["text"], sentence_encoder()([text])[0], atol=1e-5)

    config = tmp_path / "off.yaml"
    config.write_text("export: {text_encoder: false}\n")
    metrics = run_fit("mf", directory, tmp_path / "run-off", config_path=config, train_overrides=quick, progress=False)
    bundle = load_bundle(metrics["bundle"])
    assert "text_encoder" not in bundle.manifest and bundle.file("text_encoder.onnx") is None


def test_a_failed_text_encoder_export_leaves_the_trained_model_exported_without_it(minilm, tmp_path, monkeypatch,
                                                                                   caplog):
    import trainer.text_encoder as text_encoder
    from service.bundle import load_bundle
    from trainer.pipeline import run_fit

    def broken(*args, **kwargs):
        raise TextEncoderError("the ONNX text encoder disagrees with sentence-transformers: max abs error 0.5")

    monkeypatch.setattr(text_encoder, "exported_text_encoder", broken)
    directory = _text_dataset_dir(tmp_path, minilm[1])
    metrics = run_fit("mf", directory, tmp_path / "run", train_overrides={"max_epochs": 1, "device": "cpu"},
                      progress=False)
    bundle = load_bundle(metrics["bundle"])
    assert bundle.file("text_encoder.onnx") is None and bundle.file("item_encoder.onnx") is not None
    assert "no text encoder in the bundle: exporting" in caplog.text


def test_sample_texts_cover_truncation_and_the_empty_text():
    assert "" in SAMPLE_TEXTS and max(len(t.split()) for t in SAMPLE_TEXTS) > 256
