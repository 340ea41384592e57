"""The real Redis the trainer's retrain tests use (``MODALREC_TEST_REDIS_URL``, default db 15)."""

from __future__ import annotations

import os

import pytest

REDIS_URL = os.environ.get("MODALREC_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_client():
    """A client of the test Redis; the test fails (not skips) when it is down."""
    redis = pytest.importorskip("redis")
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis is not reachable at {REDIS_URL}: start it (see README)")
    return client
