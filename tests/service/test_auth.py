"""Bearer tokens: MODALREC_WRITE_TOKEN guards the writes (POST /items, POST /users/{id}/events) when set,
MODALREC_ADMIN_TOKEN guards POST /admin/reload; neither grants the other's endpoints. Reads stay open.

Run with the MemoryStore and with a real Redis (the ``store`` fixture of conftest.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from service.app import create_app
from service.settings import Settings
from service.store import MemoryStore, RedisStore
from tests.service.conftest import ADMIN_TOKEN, MODALITIES, N_ITEMS, make_settings

WRITE_TOKEN = "test-write-token"
WRITE_AUTH = {"Authorization": f"Bearer {WRITE_TOKEN}"}
ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
NEW_ITEM = {"item_id": "fresh", "features": {name: [0.5] * dim for name, dim in MODALITIES.items()}}
EVENTS = {"item_ids": ["i10", "i11"]}
# (path, valid body, status of an accepted write)
WRITES = [("/items", NEW_ITEM, 201), ("/users/u1/events", EVENTS, 200)]
REFUSED_HEADERS = {
    "no header": {},
    "wrong token": {"Authorization": "Bearer not-the-token"},
    "empty token": {"Authorization": "Bearer "},
    "wrong scheme": {"Authorization": f"Basic {WRITE_TOKEN}"},
    "no scheme": {"Authorization": WRITE_TOKEN},
    "admin token": ADMIN_AUTH,
}


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def guarded(bundle_root, store, registry) -> Iterator[TestClient]:
    """An app with both tokens set."""
    app = create_app(make_settings(bundle_root, write_token=WRITE_TOKEN), store=store, registry=registry)
    with TestClient(app) as client:
        yield client


def written(client: TestClient, store: MemoryStore | RedisStore) -> dict[str, object]:
    """Everything a write can change: the served index, the store's items hash, seen set and event stream."""
    if isinstance(store, RedisStore):
        raw = {
            "items_hash": store.client.hgetall(store.items_key),
            "stream_length": store.client.xlen(store.events_key),
        }
    else:
        raw = {"stream_length": len(store.events)}
    return {
        **raw,
        "index": client.get("/model").json()["index"],
        "items": store.get_items(),
        "seen": store.get_seen("u1"),
    }


@pytest.mark.parametrize(("path", "body", "accepted"), WRITES, ids=["items", "events"])
def test_a_write_needs_the_write_token(guarded: TestClient, store, path, body, accepted) -> None:
    for refused, headers in REFUSED_HEADERS.items():
        response = guarded.post(path, json=body, headers=headers)
        assert response.status_code == 401, refused
        assert response.json() == {"detail": "missing or wrong bearer token"}, refused
        assert response.headers["www-authenticate"] == "Bearer", refused
    assert guarded.post(path, json=body, headers=WRITE_AUTH).status_code == accepted
    lower_case_scheme = {"Authorization": f"bearer {WRITE_TOKEN}"}  # the scheme is case-insensitive (RFC 9110)
    assert guarded.post(path, json=body, headers=lower_case_scheme).status_code == accepted
    assert guarded.get("/model").json()["index"]["size"] == N_ITEMS + (path == "/items")
    assert store.get_seen("u1") == ({"i10", "i11"} if path.endswith("/events") else set())
    # reads need no token
    assert guarded.post("/recommend/u0", json={"k": 3}).status_code == 200
    assert guarded.get("/items/i1/similar", params={"k": 3}).status_code == 200
    for read in ("/model", "/healthz", "/readyz", "/metrics"):
        assert guarded.get(read).status_code == 200, read


def test_a_refused_write_changes_nothing_and_never_reaches_the_runtime(guarded: TestClient, store, monkeypatch) -> None:
    before = written(guarded, store)
    assert before["index"]["size"] == N_ITEMS and before["stream_length"] == 0
    runtime = guarded.app.state.runtime

    def must_not_run(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a refused request reached the runtime")

    with monkeypatch.context() as patched:  # no encoding, no store read or write for a refused request
        patched.setattr(runtime, "add_item", must_not_run)
        patched.setattr(runtime, "record_events", must_not_run)
        for headers in REFUSED_HEADERS.values():
            for path, body, _ in WRITES:
                assert guarded.post(path, json=body, headers=headers).status_code == 401
        # the token is checked before the body is parsed or validated: an invalid body, or one that is not JSON at
        # all, gets 401 too, not 422
        bad_item = {"item_id": "x\ty", "features": {"nope": "text"}, "extra": 1}
        assert guarded.post("/items", json=bad_item).status_code == 401
        assert guarded.post("/users/u1/events", json={"item_ids": []}).status_code == 401
        for path in ("/items", "/users/u1/events"):
            for raw in (b"{not json", b"\xff\xfe", b""):
                refused = guarded.post(path, content=raw, headers={"Content-Type": "application/json"})
                assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", (path, raw)
            # with the token, the same body is parsed and refused as before
            parsed = guarded.post(path, content=b"{not json", headers={**WRITE_AUTH, "Content-Type": "application/json"})
            assert parsed.status_code == 422, path
    assert written(guarded, store) == before
    # the same requests with the token do write (the comparison above could see a change)
    assert guarded.post("/items", json=NEW_ITEM, headers=WRITE_AUTH).status_code == 201
    assert guarded.post("/users/u1/events", json=EVENTS, headers=WRITE_AUTH).status_code == 200
    after = written(guarded, store)
    assert after["index"]["size"] == N_ITEMS + 1 and after["stream_length"] == 2 and after["seen"] == {"i10", "i11"}


def test_the_admin_and_write_tokens_are_not_interchangeable(guarded: TestClient) -> None:
    assert guarded.post("/items", json=NEW_ITEM, headers=ADMIN_AUTH).status_code == 401
    assert guarded.post("/users/u1/events", json=EVENTS, headers=ADMIN_AUTH).status_code == 401
    refused = guarded.post("/admin/reload", headers=WRITE_AUTH)
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert guarded.post("/admin/reload", headers=ADMIN_AUTH).status_code == 200


def test_refused_writes_are_counted_as_401_under_their_route(guarded: TestClient, registry) -> None:
    guarded.post("/items", json=NEW_ITEM)
    guarded.post("/users/u1/events", json=EVENTS, headers=ADMIN_AUTH)
    guarded.post("/users/u2/events", json=EVENTS, headers={"Authorization": "Bearer nope"})
    count = registry.get_sample_value
    assert count("modalrec_http_requests_total", {"route": "/items", "method": "POST", "status": "401"}) == 1.0
    events = {"route": "/users/{user_id}/events", "method": "POST", "status": "401"}
    assert count("modalrec_http_requests_total", events) == 2.0
    assert 'route="/users/{user_id}/events",status="401"' in guarded.get("/metrics").text


def test_the_write_token_comes_from_the_environment_and_empty_means_open(bundle_root, monkeypatch) -> None:
    # an empty value (e.g. `MODALREC_WRITE_TOKEN=` in an env file) means unset: the writes are open
    monkeypatch.setenv("MODALREC_WRITE_TOKEN", "")
    settings = Settings(bundle_root=bundle_root, reload_poll_s=0)
    assert settings.write_token == ""
    with TestClient(create_app(settings, store=MemoryStore(), registry=CollectorRegistry())) as client:
        assert client.post("/items", json=NEW_ITEM).status_code == 201
        assert client.post("/users/u1/events", json=EVENTS).status_code == 200
    monkeypatch.setenv("MODALREC_WRITE_TOKEN", WRITE_TOKEN)
    settings = Settings(bundle_root=bundle_root, reload_poll_s=0)
    with TestClient(create_app(settings, store=MemoryStore(), registry=CollectorRegistry())) as client:
        assert client.post("/items", json=NEW_ITEM).status_code == 401
        assert client.post("/items", json=NEW_ITEM, headers=WRITE_AUTH).status_code == 201


def test_openapi_declares_the_bearer_schemes_on_the_guarded_routes(bundle_root) -> None:
    app = create_app(make_settings(bundle_root), store=MemoryStore(), registry=CollectorRegistry())
    spec = app.openapi()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["WriteToken"]["type"] == "http" and schemes["WriteToken"]["scheme"] == "bearer"
    assert schemes["AdminToken"]["type"] == "http" and schemes["AdminToken"]["scheme"] == "bearer"
    guarded = {
        ("/items", "post"): "WriteToken",
        ("/users/{user_id}/events", "post"): "WriteToken",
        ("/admin/reload", "post"): "AdminToken",
    }
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            scheme = guarded.get((path, method))
            if scheme is None:
                assert "security" not in operation and "401" not in operation["responses"], (method, path)
            else:
                assert operation["security"] == [{scheme: []}], (method, path)
                error_schema = operation["responses"]["401"]["content"]["application/json"]["schema"]
                assert error_schema == {"$ref": "#/components/schemas/ErrorResponse"}


HOSTS_WARNED = {  # (host, write token) -> whether start-up warns that the writes are open
    ("0.0.0.0", None): True,
    ("::", ""): True,
    ("10.1.2.3", None): True,
    ("api.example.com", None): True,
    ("0.0.0.0", WRITE_TOKEN): False,
    ("127.0.0.1", None): False,
    ("127.0.0.2", None): False,
    ("localhost", None): False,
    ("::1", None): False,
}


def test_open_writes_on_a_reachable_host_log_a_warning(bundle_root, caplog) -> None:
    for (host, write_token), warned in HOSTS_WARNED.items():
        caplog.clear()
        settings = make_settings(bundle_root, host=host, write_token=write_token)
        with caplog.at_level(logging.WARNING, logger="service.app"):
            create_app(settings, store=MemoryStore(), registry=CollectorRegistry())
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == (1 if warned else 0), (host, write_token, warnings)
        if warned:
            assert host in warnings[0] and "unauthenticated writes" in warnings[0]
            assert "MODALREC_WRITE_TOKEN" in warnings[0]


def test_an_open_write_arriving_beyond_loopback_is_logged_once(bundle_root, caplog) -> None:
    """A server started as ``uvicorn ... --host 0.0.0.0`` leaves MODALREC_HOST at its loopback default, so the start-up
    warning is silent; the first unauthenticated write that arrives on another address says it, once."""
    app = create_app(make_settings(bundle_root, host="127.0.0.1"), store=MemoryStore(), registry=CollectorRegistry())

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "service.api"]

    with caplog.at_level(logging.WARNING, logger="service.api"):
        with TestClient(app, base_url="http://127.0.0.1:8000") as local:  # the connection's local address
            assert local.post("/users/u1/events", json=EVENTS).status_code == 200
        assert warnings() == []
        with TestClient(app, base_url="http://10.1.2.3:8000") as remote:
            assert remote.post("/users/u1/events", json=EVENTS).status_code == 200
            assert remote.post("/items", json=NEW_ITEM).status_code == 201
            assert remote.post("/recommend/u1", json={"k": 2}).status_code == 200  # reads are not writes
        assert len(warnings()) == 1
        assert "10.1.2.3" in warnings()[0] and "/users/u1/events" in warnings()[0]
        assert "MODALREC_WRITE_TOKEN" in warnings()[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="service.api"):  # with the token set there is nothing to warn about
        guarded = create_app(make_settings(bundle_root, host="127.0.0.1", write_token=WRITE_TOKEN),
                             store=MemoryStore(), registry=CollectorRegistry())
        with TestClient(guarded, base_url="http://10.1.2.3:8000") as remote:
            assert remote.post("/users/u1/events", json=EVENTS, headers=WRITE_AUTH).status_code == 200
        assert warnings() == []


UNSENDABLE_TOKENS = {  # an Authorization header can never carry these exactly: every request would get 401
    "whitespace only": " ",
    "a tab": "\t",
    "a trailing line break": "s3cr3t\n",
    "a leading space": " s3cr3t",
    "a trailing space": "s3cr3t ",
    "non-ASCII": "s3cr3t-é",
    "a control character": "s3cr3t\x1b",
}


@pytest.mark.parametrize("name", ["write_token", "admin_token"])
def test_a_token_no_header_can_carry_is_refused_at_start_up_without_echoing_it(
    bundle_root, name, monkeypatch, capsys
) -> None:
    from pydantic import ValidationError

    from service.__main__ import main

    for what, token in UNSENDABLE_TOKENS.items():
        with pytest.raises(ValidationError, match="printable ASCII") as refused:
            Settings(bundle_root=bundle_root, **{name: token})
        assert "s3cr3t" not in str(refused.value), what  # a secret, even a malformed one
        # python -m service: a one-line error naming the variable, exit 2, before any worker starts
        monkeypatch.setenv(f"MODALREC_{name.upper()}", token)
        assert main(["--bundle-root", str(bundle_root)]) == 2, what
        error = capsys.readouterr().err
        assert f"MODALREC_{name.upper()}" in error and "printable ASCII" in error and "s3cr3t" not in error, what
    for usable in ("", "t0k3n-._~+/=", "with inner spaces"):
        assert getattr(Settings(bundle_root=bundle_root, **{name: usable}), name) == usable


def test_an_exported_write_token_does_not_turn_the_suites_own_writes_into_401() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    # a developer with MODALREC_WRITE_TOKEN exported (docker compose asks for it) runs the tests
    env = {**os.environ, "MODALREC_WRITE_TOKEN": "exported-for-compose"}
    test = "tests/service/test_api.py::test_new_item_is_encoded_indexed_and_persisted[memory]"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", test],
        cwd=Path(__file__).resolve().parents[2], env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:]
