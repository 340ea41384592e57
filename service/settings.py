"""Service configuration: pydantic-settings, environment prefix ``MODALREC_``."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.store import DEFAULT_SEEN_MAX_ITEMS, DEFAULT_SEEN_TTL_S


class Settings(BaseSettings):
    """Everything the service reads from its environment (``MODALREC_<FIELD>``) or the CLI.

    ``redis_url`` unset means the embedded :class:`service.store.MemoryStore` (one process only: with
    several workers each worker would hold its own copy, so set a Redis URL there).
    """

    # hide_input_in_errors: a refused token is a secret, and uvicorn's own CLI prints the whole ValidationError
    model_config = SettingsConfigDict(env_prefix="MODALREC_", extra="ignore", hide_input_in_errors=True)

    bundle_root: Path = Field(description="bundle root holding a `current` symlink, or one bundle directory")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: str = Field(default="info", description="critical, error, warning (or warn), info, debug or trace")

    redis_url: str | None = Field(
        default=None, description="e.g. redis://127.0.0.1:6379/0; unset = MemoryStore"
    )
    redis_prefix: str = "modalrec:"
    redis_seen_ttl_s: int = Field(
        default=DEFAULT_SEEN_TTL_S,
        ge=1,
        description="TTL of a user's online seen set, refreshed on each event (Redis and the in-process MemoryStore)",
    )
    seen_max_items: int = Field(
        default=DEFAULT_SEEN_MAX_ITEMS,
        ge=1,
        le=100_000,
        description="online seen items kept per user, the most recent ones (older ones are dropped when events "
        "are recorded); bounds what every /recommend reads and over-fetches",
    )
    redis_stream_maxlen: int = Field(
        default=1_000_000, ge=1, description="approximate cap of the event stream"
    )
    redis_socket_timeout_s: float = Field(default=0.2, gt=0)
    store_retry_interval_s: float = Field(
        default=1.0, ge=0, description="after a store error, calls skip the store this long (circuit breaker)"
    )

    admin_token: str | None = Field(
        default=None, description="bearer token for POST /admin/reload only; unset = disabled"
    )
    write_token: str | None = Field(
        default=None,
        description="bearer token for the writes, POST /items and POST /users/{id}/events (the admin token does not "
        "grant them); unset or empty = writes open to anyone who reaches the port (a warning is logged at start-up "
        "when the host is not a loopback address)",
    )
    reload_poll_s: float = Field(default=2.0, ge=0, description="poll `current` this often; 0 = no polling")

    flat_max_items: int = Field(
        default=200_000,
        ge=1,
        description="exact flat inner-product search up to this many items, `large_index` above",
    )
    large_index: Literal["ivf", "hnsw"] = Field(
        default="ivf", description="approximate index above flat_max_items when the bundle ships none"
    )
    ivf_nprobe: int | None = Field(
        default=None, ge=1, description="IVF cells scanned per query; unset = the depth stored in the index"
    )
    hnsw_m: int = Field(default=32, ge=4)
    hnsw_ef_construction: int = Field(default=80, ge=8)
    hnsw_ef_search: int = Field(default=128, ge=1)
    threads_per_worker: int = Field(
        default=1, ge=1, description="FAISS OpenMP and onnxruntime threads per worker"
    )
    recommend_threads: int = Field(
        default=4,
        ge=1,
        le=64,
        description="threads per worker that run /recommend's store read and search off the event loop",
    )

    new_item_slots: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="places of each top-k reserved for the best-scoring items added online (POST /items); "
        "a request's `new_items` overrides it; 0 = plain ranking",
    )

    online_item_max_norm_factor: float = Field(
        default=10.0,
        ge=1.0,
        description="POST /items (and stored items re-applied at start-up/reload) refuses an encoded item vector whose "
        "norm exceeds this multiple of the largest item-embedding norm of the served bundle",
    )

    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="requests with larger bodies get 413")
    max_events_per_request: int = Field(
        default=1000, ge=1, le=1000, description="item ids one POST /users/{id}/events may carry (at most 1000)"
    )

    @field_validator("admin_token", "write_token")
    @classmethod
    def _token_a_header_can_carry(cls, value: str | None) -> str | None:
        """Printable ASCII without leading or trailing whitespace, or refused here: a whitespace-only token, one with a
        line break or one with non-ASCII characters can never arrive in an ``Authorization`` header (header values are
        stripped, and not UTF-8), so every request would get 401 with nothing saying why. Unset or empty stays allowed.
        The message never repeats the value (a secret)."""
        if not value:
            return value
        if value != value.strip() or not all(" " <= char <= "~" for char in value):
            raise ValueError(
                "the token must be printable ASCII without leading or trailing whitespace (an Authorization header "
                "cannot carry it otherwise and every request would get 401); e.g. `openssl rand -hex 32`"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, value: str) -> str:
        """Lower case, ``warn`` as ``warning``; anything else is refused here (uvicorn failed with a bare KeyError)."""
        level = {"warn": "warning"}.get(value.strip().lower(), value.strip().lower())
        if level not in ("critical", "error", "warning", "info", "debug", "trace"):
            raise ValueError(f"unknown log level {value!r}: use critical, error, warning, info, debug or trace")
        return level
