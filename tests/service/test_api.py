"""Contract tests over HTTP (httpx via TestClient on ``create_app(settings)``), run with the
MemoryStore and with a real Redis (same suite, parametrised ``store`` fixture)."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.bundle import load_bundle
from service.store import MemoryStore
from tests.service.conftest import ADMIN_TOKEN, MODALITIES, N_ITEMS, encoder_weights, make_settings


def exact_ranking(query: np.ndarray, item_embeddings: np.ndarray, excluded: set[int], k: int) -> list[str]:
    scores = item_embeddings @ query
    order = [int(i) for i in np.argsort(-scores, kind="stable") if int(i) not in excluded]
    return [f"i{i}" for i in order[:k]]


def ids(response) -> list[str]:
    return [item["item_id"] for item in response.json()["items"]]


def test_known_user_gets_exact_top_k_without_training_items(client: TestClient, bundle_root) -> None:
    bundle = load_bundle(bundle_root)
    response = client.post("/recommend/u2", json={"k": 5})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["fallback"] is None and body["model_version"] == bundle.version and body["user_id"] == "u2"
    seen = set(bundle.seen_items(2).tolist())
    assert ids(response) == exact_ranking(bundle.user_embeddings[2], bundle.item_embeddings, seen, 5)
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert client.post("/recommend/u2").json()["items"].__len__() == 20  # default k, empty body


def test_exclude_seen_false_and_explicit_exclude(client: TestClient, bundle_root) -> None:
    bundle = load_bundle(bundle_root)
    unfiltered = client.post("/recommend/u0", json={"k": N_ITEMS, "exclude_seen": False})
    assert sorted(ids(unfiltered)) == sorted(f"i{i}" for i in range(N_ITEMS))
    top = ids(unfiltered)[:3]
    response = client.post("/recommend/u0", json={"k": 5, "exclude_seen": False, "exclude": top + ["nope"]})
    expected = exact_ranking(bundle.user_embeddings[0], bundle.item_embeddings, {int(t[1:]) for t in top}, 5)
    assert ids(response) == expected


def test_never_fewer_than_k_when_k_unseen_items_exist(client: TestClient) -> None:
    # u0 saw i0..i3 in training; online events hide all but 7 of the remaining items.
    hidden = [f"i{i}" for i in range(4, N_ITEMS - 7)]
    assert client.post("/users/u0/events", json={"item_ids": hidden}).json()["recorded"] == len(hidden)
    response = client.post("/recommend/u0", json={"k": 7})
    assert sorted(ids(response)) == sorted(f"i{i}" for i in range(N_ITEMS - 7, N_ITEMS))
    assert len(ids(client.post("/recommend/u0", json={"k": 50}))) == 7  # only 7 unseen exist


def test_events_validate_all_ids_before_writing(client: TestClient, store) -> None:
    response = client.post("/users/u1/events", json={"item_ids": ["i10", "missing"]})
    assert response.status_code == 422 and "missing" in response.json()["detail"]
    assert store.get_seen("u1") == set()
    assert client.post("/users/u1/events", json={"item_ids": ["i10", "i10"], "type": "click"}).json() == {
        "user_id": "u1",
        "recorded": 1,
    }
    assert store.get_seen("u1") == {"i10"}
    assert "i10" not in ids(client.post("/recommend/u1", json={"k": 25}))


def test_unknown_user_popularity_then_folded_in(client: TestClient, bundle_root) -> None:
    bundle = load_bundle(bundle_root)
    response = client.post("/recommend/stranger", json={"k": 4})
    assert response.json()["fallback"] == "popularity"
    expected = [f"i{i}" for i in np.argsort(-bundle.popularity, kind="stable")[:4]]
    assert ids(response) == expected
    client.post("/users/stranger/events", json={"item_ids": ["i3", "i17"]})
    response = client.post("/recommend/stranger", json={"k": 6})
    assert response.json()["fallback"] == "folded_in"
    query = bundle.item_embeddings[[3, 17]].mean(axis=0)
    assert ids(response) == exact_ranking(query, bundle.item_embeddings, {3, 17}, 6)


def new_item_features(scale: float = 1.0) -> dict[str, list[float]]:
    rng = np.random.default_rng(7)
    return {name: (scale * rng.normal(size=dim)).tolist() for name, dim in MODALITIES.items()}


def test_new_item_is_encoded_indexed_and_persisted(client: TestClient, store, bundle_root) -> None:
    features = new_item_features()
    response = client.post("/items", json={"item_id": "fresh", "features": features})
    assert response.status_code == 201, response.text
    assert response.json()["index_size"] == N_ITEMS + 1 and response.json()["replaced"] is False
    weights = encoder_weights(0)
    embedding = sum(np.asarray(features[m], dtype=np.float32) @ weights[m] for m in sorted(MODALITIES))
    bundle = load_bundle(bundle_root)
    similar = client.get("/items/fresh/similar", params={"k": 5})
    assert ids(similar) == exact_ranking(embedding, bundle.item_embeddings, set(), 5)
    assert similar.json()["items"][0]["score"] == pytest.approx(
        float(np.max(bundle.item_embeddings @ embedding)), rel=1e-4
    )
    assert store.get_items()[1]["fresh"]["text"] == pytest.approx(features["text"])
    # a folded-in user who interacted with the new item gets it excluded and scored around it
    client.post("/users/newbie/events", json={"item_ids": ["fresh"]})
    folded = client.post("/recommend/newbie", json={"k": 5})
    assert folded.json()["fallback"] == "folded_in" and ids(folded) == ids(similar)
    replaced = client.post("/items", json={"item_id": "fresh", "features": new_item_features(2.0)})
    assert replaced.json()["replaced"] is True and replaced.json()["index_size"] == N_ITEMS + 1


def test_reserved_new_item_slots_bring_online_items_into_the_top_k(client: TestClient, store, bundle_root) -> None:
    bundle = load_bundle(bundle_root)
    weights = encoder_weights(0)
    embeddings = {}
    for name, scale in (("new-a", 0.01), ("new-b", 0.02)):  # tiny embeddings: never in the plain top k
        features = new_item_features(scale)
        assert client.post("/items", json={"item_id": name, "features": features}).status_code == 201
        embeddings[name] = sum(np.asarray(features[m], dtype=np.float32) @ weights[m] for m in sorted(MODALITIES))
    query = bundle.user_embeddings[2]
    seen = set(bundle.seen_items(2).tolist())
    plain = ids(client.post("/recommend/u2", json={"k": 6}))
    assert plain == exact_ranking(query, bundle.item_embeddings, seen, 6)
    by_score = sorted(embeddings, key=lambda name: -float(embeddings[name] @ query))
    one = client.post("/recommend/u2", json={"k": 6, "new_items": 1}).json()["items"]
    assert [item["item_id"] for item in one] == plain[:5] + by_score[:1]
    two = client.post("/recommend/u2", json={"k": 6, "new_items": 5}).json()["items"]  # only 2 exist
    assert [item["item_id"] for item in two] == plain[:4] + by_score
    scores = [item["score"] for item in two]
    assert scores == sorted(scores, reverse=True)
    assert scores[-1] == pytest.approx(float(embeddings[by_score[-1]] @ query), rel=1e-4, abs=1e-6)
    excluded = client.post("/recommend/u2", json={"k": 6, "new_items": 1, "exclude": [by_score[0]]}).json()
    assert [item["item_id"] for item in excluded["items"]] == plain[:5] + by_score[1:]
    assert client.post("/recommend/u2", json={"k": 6, "new_items": -1}).status_code == 422


def test_new_item_slots_setting_is_the_default_and_a_request_overrides_it(bundle_root) -> None:
    settings = make_settings(bundle_root, new_item_slots=1)
    registry = CollectorRegistry()
    with TestClient(create_app(settings, store=MemoryStore(), registry=registry)) as client:
        plain = ids(client.post("/recommend/u2", json={"k": 6}))  # no online item yet: nothing to reserve
        assert client.post("/items", json={"item_id": "new", "features": new_item_features(0.01)}).status_code == 201
        assert ids(client.post("/recommend/u2", json={"k": 6})) == plain[:5] + ["new"]
        assert ids(client.post("/recommend/u2", json={"k": 6, "new_items": 0})) == plain
        assert ids(client.post("/recommend/u3", json={"k": 6, "new_items": 3})).count("new") == 1  # only one exists
    assert registry.get_sample_value("modalrec_reserved_new_items_total") == 2.0


@pytest.mark.parametrize(
    ("features", "message"),
    [
        ({**new_item_features(), "audio": [1.0]}, "unknown modality"),
        ({"text": new_item_features()["text"]}, "missing modality"),
        ({**new_item_features(), "text": [1.0, 2.0]}, "expected 5"),
    ],
)
def test_bad_item_features_are_rejected_without_state(client: TestClient, store, features, message) -> None:
    response = client.post("/items", json={"item_id": "bad", "features": features})
    assert response.status_code == 422 and message in response.json()["detail"]
    assert "bad" not in store.get_items()[1]
    assert client.get("/model").json()["index"]["size"] == N_ITEMS
    assert client.get("/items/bad/similar").status_code == 404


def test_nan_features_and_bundle_item_conflict(client: TestClient) -> None:
    body = '{"item_id": "nan", "features": {"image": [NaN, 1, 2, 3], "text": [1, 2, 3, 4, 5]}}'
    response = client.post("/items", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "NaN" in response.text
    conflict = client.post("/items", json={"item_id": "i1", "features": new_item_features()})
    assert conflict.status_code == 409 and "part of bundle" in conflict.json()["detail"]


def test_bad_requests_get_clear_4xx(client: TestClient) -> None:
    assert client.post("/recommend/u0", json={"k": 0}).status_code == 422
    assert client.post("/recommend/u0", json={"k": 1001}).status_code == 422
    assert client.get("/items/i0/similar", params={"k": 0}).status_code == 422
    malformed = client.post(
        "/recommend/u0", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert malformed.status_code == 422 and "json" in malformed.text.lower()
    huge = client.post("/items", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert huge.status_code == 413
    assert client.get("/items/unknown/similar").status_code == 404
    assert client.post("/recommend/u0", json={"k": 3, "bogus": 1}).status_code == 422


def test_lone_surrogates_in_json_get_422_and_nothing_is_written(client: TestClient, store) -> None:
    json_headers = {"content-type": "application/json"}
    event = client.post("/users/u1/events", content=b'{"item_ids": ["i1"], "type": "\\ud800"}', headers=json_headers)
    assert event.status_code == 422 and "\\ud800" in event.json()["detail"][0]["input"]
    item = b'{"item_id": "a\\ud800", "features": {"image": [0, 0, 0, 0], "text": [0, 0, 0, 0, 0]}}'
    assert client.post("/items", content=item, headers=json_headers).status_code == 422
    assert store.get_seen("u1") == set() and store.get_items()[1] == {}


def test_a_refused_oversized_body_is_counted_under_its_route(bundle_root) -> None:
    registry = CollectorRegistry()
    app = create_app(make_settings(bundle_root, max_body_bytes=1024), store=MemoryStore(), registry=registry)
    with TestClient(app) as client:
        big = {"item_id": "x", "features": {"image": [0.0] * 400, "text": [0.0] * 5}}
        assert client.post("/items", json=big).status_code == 413
    labels = {"route": "/items", "method": "POST", "status": "413"}
    assert registry.get_sample_value("modalrec_http_requests_total", labels) == 1.0


def test_events_per_request_are_capped_by_the_setting(bundle_root) -> None:
    store = MemoryStore()
    app = create_app(make_settings(bundle_root, max_events_per_request=2), store=store, registry=CollectorRegistry())
    with TestClient(app) as client:
        response = client.post("/users/u1/events", json={"item_ids": ["i1", "i2", "i3"]})
        assert response.status_code == 422 and "at most 2" in response.json()["detail"]
        assert store.get_seen("u1") == set()
        assert client.post("/users/u1/events", json={"item_ids": ["i1", "i2"]}).json()["recorded"] == 2


def test_recommend_validation_matches_its_published_schema(client: TestClient) -> None:
    """/recommend validates its path and body by hand (the hot path): same rules, same 422 shape."""
    wrong_type = client.post("/recommend/u0", json={"k": "many"})
    assert wrong_type.status_code == 422
    (error,) = wrong_type.json()["detail"]
    assert error["loc"] == ["body", "k"] and error["type"] == "int_parsing"
    too_long = client.post("/recommend/" + "u" * 257, json={"k": 3})
    assert too_long.status_code == 422 and too_long.json()["detail"][0]["loc"] == ["path", "user_id"]
    not_an_object = client.post("/recommend/u0", json=[1, 2])
    assert not_an_object.status_code == 422
    not_utf8 = client.post("/recommend/u0", content=b"\x80", headers={"content-type": "application/json"})
    assert not_utf8.status_code == 422 and not_utf8.json()["detail"][0]["type"] == "json_invalid"
    assert client.post("/recommend/" + "u" * 256, json={"k": 3}).json()["fallback"] == "popularity"
    operation = client.get("/openapi.json").json()["paths"]["/recommend/{user_id}"]["post"]
    (parameter,) = operation["parameters"]
    assert parameter["name"] == "user_id" and parameter["schema"]["maxLength"] == 256
    body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["properties"]["k"]["maximum"] == 1000 and body_schema["additionalProperties"] is False


def test_operations_endpoints_and_metrics(client: TestClient, bundle_root) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["store"] == "ok"
    model = client.get("/model").json()
    assert model["version"] == load_bundle(bundle_root).version and model["index"]["kind"] == "flat"
    assert model["modalities"] == MODALITIES and model["has_item_encoder"] is True
    client.post("/recommend/stranger", json={"k": 3})
    text = client.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "modalrec_http_request_duration_seconds",
        "modalrec_http_requests",
        "modalrec_fallbacks",
        "modalrec_store_errors",
        "modalrec_reloads",
        "modalrec_reload_failures",
        "modalrec_index_size",
        "modalrec_model_info",
    ):
        assert name in families, name
    routes = {s.labels.get("route") for s in families["modalrec_http_request_duration_seconds"].samples}
    assert "/recommend/{user_id}" in routes
    fallbacks = {
        s.labels["kind"]: s.value for s in families["modalrec_fallbacks"].samples if s.name.endswith("_total")
    }
    assert fallbacks["popularity"] == 1.0
    if shutil.which("promtool"):
        result = subprocess.run(
            ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
        )
        assert result.returncode == 0, result.stdout + result.stderr


def test_online_items_survive_restart(bundle_root, store) -> None:
    settings = make_settings(bundle_root)
    with TestClient(create_app(settings, store=store, registry=CollectorRegistry())) as first:
        assert (
            first.post("/items", json={"item_id": "kept", "features": new_item_features()}).status_code == 201
        )
    with TestClient(create_app(settings, store=store, registry=CollectorRegistry())) as second:
        assert second.get("/model").json()["index"]["online_items"] == 1
        assert second.get("/items/kept/similar", params={"k": 3}).status_code == 200


def test_admin_reload_requires_token(client: TestClient) -> None:
    assert client.post("/admin/reload").status_code == 401
    wrong = client.post("/admin/reload", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = client.post("/admin/reload", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert ok.status_code == 200 and ok.json()["status"] == "unchanged"


def test_no_encoder_bundle_gives_clear_4xx(tmp_path, store) -> None:
    from tests.service.conftest import build_tiny_bundle

    root = tmp_path / "plain"
    build_tiny_bundle(root, with_encoder=False)
    with TestClient(create_app(make_settings(root), store=store, registry=CollectorRegistry())) as plain:
        response = plain.post("/items", json={"item_id": "x", "features": new_item_features()})
        assert response.status_code == 422 and "no item encoder" in response.json()["detail"]


def test_an_online_item_is_findable_by_id_only_once_the_index_holds_it(client: TestClient) -> None:
    """Readers do not lock: id -> row must never point at a row the index cannot return a vector for, and a row
    the index can return must already have its id."""
    state = client.app.state.runtime.state
    upsert = state.index.upsert
    seen_during_upsert = []

    def checking_upsert(row, vector):
        seen_during_upsert.append((state.item_ids[row], "fresh" in state.item_rows))
        upsert(row, vector)

    state.index.upsert = checking_upsert
    assert client.post("/items", json={"item_id": "fresh", "features": new_item_features()}).status_code == 201
    assert seen_during_upsert == [("fresh", False)]
    rows_before = len(state.item_ids)

    def failing_upsert(row, vector):
        raise RuntimeError("index full")

    state.index.upsert = failing_upsert
    with pytest.raises(RuntimeError):
        state.upsert_online_item("other", new_item_features(), np.zeros(state.index.dim, np.float32))
    assert len(state.item_ids) == rows_before and "other" not in state.item_rows


@pytest.mark.parametrize("bad", ["a\tb", "line\nbreak", "cr\r"])
def test_ids_with_a_tab_or_line_break_are_refused_where_they_are_recorded(client, bad) -> None:
    """Recorded ids reach the retrain job's tab-separated split files, which cannot hold them."""
    from urllib.parse import quote

    answer = client.post(f"/users/{quote(bad)}/events", json={"item_ids": ["i1"]})
    assert answer.status_code == 422, answer.text
    features = {"image": [0.0] * 4, "text": [0.0] * 5}
    assert client.post("/items", json={"item_id": bad, "features": features}).status_code == 422
    assert client.post(f"/users/{quote('fine user')}/events", json={"item_ids": ["i1"]}).status_code == 200
