"""Fixtures for the service tests: tiny bundles written with ``service.bundle.write_bundle`` in
``tmp_path`` (with a linear ONNX item encoder built by ``onnx.helper``), stores, and clients."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.bundle import write_bundle
from service.settings import Settings
from service.store import MemoryStore, RedisStore

TEST_REDIS_URL = os.environ.get("MODALREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
ADMIN_TOKEN = "test-admin-token"
MODALITIES = {"image": 4, "text": 5}
DIM = 8
N_USERS = 6
N_ITEMS = 30


def encoder_weights(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1000 + seed)
    return {name: rng.normal(size=(dim, DIM)).astype(np.float32) for name, dim in MODALITIES.items()}


def write_linear_encoder(path: Path, weights: dict[str, np.ndarray]) -> None:
    """ONNX graph: embedding = sum over modalities (sorted) of input_m @ W_m."""
    from onnx import TensorProto, helper, numpy_helper

    names = sorted(weights)
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["B", weights[n].shape[0]]) for n in names]
    initializers = [numpy_helper.from_array(weights[n], name=f"W_{n}") for n in names]
    nodes = [helper.make_node("MatMul", [n, f"W_{n}"], [f"h_{n}"]) for n in names]
    nodes.append(helper.make_node("Sum", [f"h_{n}" for n in names], ["embedding"]))
    output = helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["B", DIM])
    save_checked_onnx(path, helper.make_graph(nodes, "item_encoder", inputs, [output], initializers))


def save_checked_onnx(path: Path, graph) -> None:
    """Save an ``onnx.helper`` graph as an opset-17 model after ``onnx.checker`` accepts it."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def build_tiny_bundle(
    root: Path,
    *,
    seed: int = 0,
    with_encoder: bool = True,
    n_items: int = N_ITEMS,
    version: str | None = None,
    extra_files: dict[str, Path] | None = None,
    extra_manifest: dict[str, object] | None = None,
) -> Path:
    """6 users x ``n_items`` items, dim 8; user u saw items {u, u+1, ..., u+3} in training. ``extra_files`` and
    ``extra_manifest`` go into the bundle as they are (e.g. a text encoder)."""
    rng = np.random.default_rng(seed)
    user_embeddings = rng.normal(size=(N_USERS, DIM)).astype(np.float32)
    item_embeddings = rng.normal(size=(n_items, DIM)).astype(np.float32)
    seen = [np.arange(u, u + 4) % n_items for u in range(N_USERS)]
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seen])]).astype(np.int64)
    indices = np.concatenate(seen).astype(np.int64)
    popularity = np.bincount(indices, minlength=n_items).astype(np.float32) + np.linspace(0, 0.5, n_items)
    extra_files = dict(extra_files or {})
    if with_encoder:
        encoder_path = root.parent / f"encoder-{uuid.uuid4().hex}.onnx"
        root.parent.mkdir(parents=True, exist_ok=True)
        write_linear_encoder(encoder_path, encoder_weights(seed))
        extra_files["item_encoder.onnx"] = encoder_path
    return write_bundle(
        root,
        model="test-model",
        dataset="tiny",
        user_ids=[f"u{i}" for i in range(N_USERS)],
        item_ids=[f"i{i}" for i in range(n_items)],
        user_embeddings=user_embeddings,
        item_embeddings=item_embeddings,
        seen_indptr=indptr,
        seen_indices=indices,
        popularity=popularity,
        modalities=MODALITIES if with_encoder else {},
        metrics={"valid": {"recall@20": 0.5}},
        extra_files=extra_files,
        extra_manifest=extra_manifest,
        version=version,
    )


def redis_available(url: str = TEST_REDIS_URL) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


@pytest.fixture
def bundle_root(tmp_path: Path) -> Path:
    root = tmp_path / "bundles"
    build_tiny_bundle(root)
    return root


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def store(request: pytest.FixtureRequest) -> Iterator[MemoryStore | RedisStore]:
    if request.param == "memory":
        yield MemoryStore()
        return
    if not redis_available():
        pytest.skip(f"no Redis at {TEST_REDIS_URL}")
    prefix = f"modalrec-test:{uuid.uuid4().hex}:"
    redis_store = RedisStore(TEST_REDIS_URL, prefix=prefix)
    yield redis_store
    keys = list(redis_store.client.scan_iter(match=f"{prefix}*"))
    if keys:
        redis_store.client.delete(*keys)
    redis_store.close()


def make_settings(bundle_root: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {"bundle_root": bundle_root, "admin_token": ADMIN_TOKEN, "reload_poll_s": 0}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def client(bundle_root: Path, store: MemoryStore | RedisStore) -> Iterator[TestClient]:
    app = create_app(make_settings(bundle_root), store=store, registry=CollectorRegistry())
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def text_client(tmp_path: Path, store: MemoryStore | RedisStore) -> Iterator[tuple[TestClient, MemoryStore | RedisStore, Path]]:
    """(client, store, bundle root) of an app serving a bundle with a text encoder (tests/service/text_fixtures.py)."""
    from tests.service.text_fixtures import build_text_bundle

    root = tmp_path / "bundles"
    build_text_bundle(root)
    app = create_app(make_settings(root), store=store, registry=CollectorRegistry())
    with TestClient(app) as client:
        yield client, store, root
