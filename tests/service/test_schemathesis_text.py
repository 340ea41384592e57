"""Property-based run of POST /items against a bundle with a text encoder (tokenizer.json + text_encoder.onnx): any
string the schema allows for a modality, raw text included, gets an answer below 500."""

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
from tests.service.conftest import make_settings
from tests.service.test_text_items import build_text_bundle

_ROOT = Path(tempfile.mkdtemp(prefix="modalrec-schemathesis-text-")) / "bundles"
build_text_bundle(_ROOT)
APP = create_app(make_settings(_ROOT), store=MemoryStore(), registry=CollectorRegistry())
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).include(path="/items", method="POST")


@pytest.fixture(scope="module", autouse=True)
def running_app():
    with TestClient(APP) as client:  # runs the lifespan: bundle loaded and warmed
        yield client


@schema.parametrize()
@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_for_new_items(case) -> None:
    case.call_and_validate(checks=[not_a_server_error])
