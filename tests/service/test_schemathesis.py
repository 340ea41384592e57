"""Property-based run over the published OpenAPI schema: no input produces a 5xx.

Bounded: a few dozen generated requests per operation, MemoryStore, a tiny bundle."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from prometheus_client import CollectorRegistry
from schemathesis.checks import not_a_server_error

from service.app import create_app
from service.store import MemoryStore
from tests.service.conftest import build_tiny_bundle, make_settings

_ROOT = Path(tempfile.mkdtemp(prefix="modalrec-schemathesis-")) / "bundles"
build_tiny_bundle(_ROOT)
APP = create_app(make_settings(_ROOT), store=MemoryStore(), registry=CollectorRegistry())
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture(scope="module", autouse=True)
def running_app():
    with TestClient(APP) as client:  # runs the lifespan: bundle loaded and warmed
        yield client


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case) -> None:
    case.call_and_validate(checks=[not_a_server_error])
