"""Request and response bodies (pydantic); they define the published OpenAPI schema."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat

MAX_K = 1000
MAX_ID_LENGTH = 256
MAX_EVENT_ITEMS = 1000
MAX_EXCLUDE = 10_000

ItemId = Field(min_length=1, max_length=MAX_ID_LENGTH)
# ids the service records (new items, users with events) reach the trainer's tab-separated split files through the
# retrain job, which cannot hold a tab or a line break in an id: such ids are refused where they are written
WRITTEN_ID_PATTERN = r"^[^\t\r\n]*$"


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    k: int = Field(default=20, ge=1, le=MAX_K, description="number of items to return")
    exclude_seen: bool = Field(default=True, description="drop training interactions and online events")
    exclude: list[str] = Field(
        default_factory=list, max_length=MAX_EXCLUDE, description="item ids never returned"
    )
    new_items: int | None = Field(
        default=None,
        ge=0,
        le=MAX_K,
        description="reserve up to this many of the k places for the user's best-scoring items added online "
        "(POST /items), which otherwise rarely outrank trained items; null = the service's new_item_slots setting",
    )


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    user_id: str
    items: list[ScoredItem]
    model_version: str
    fallback: Literal["popularity", "folded_in"] | None = Field(
        description="null for users known to the bundle; how an unknown user was served otherwise"
    )


class EventsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_ids: list[str] = Field(min_length=1, max_length=MAX_EVENT_ITEMS)
    type: str = Field(
        default="interaction", min_length=1, max_length=64, description="event type, e.g. click"
    )


class EventsResponse(BaseModel):
    user_id: str
    recorded: int


class NewItemRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH, pattern=WRITTEN_ID_PATTERN,
                         description="no tab or line break")
    # StrictFloat: numbers only (integers too). Lax floats took ["1", "2"] and [true, false] as vectors without a word.
    features: dict[str, list[StrictFloat] | str] = Field(
        min_length=1,
        max_length=16,
        description=(
            "one float vector per modality of the served model (GET /model); the modality that GET /model names "
            "in text_encoder may be given as raw text instead, encoded by the bundle's text encoder"
        ),
    )


class NewItemResponse(BaseModel):
    item_id: str
    replaced: bool
    index_size: int
    model_version: str


class SimilarResponse(BaseModel):
    item_id: str
    items: list[ScoredItem]
    model_version: str


class IndexInfo(BaseModel):
    kind: Literal["flat", "hnsw", "ivf"]
    size: int
    bundle_items: int
    online_items: int


class ModelResponse(BaseModel):
    version: str
    model: str | None
    dataset: str | None
    created_at: str | None
    dim: int
    n_users: int
    n_items: int
    modalities: dict[str, int]
    metrics: dict[str, Any]
    has_item_encoder: bool
    text_encoder: str | None = Field(
        default=None, description="the modality POST /items accepts as raw text (null: none; send its floats)"
    )
    index: IndexInfo


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    ready: bool
    bundle: str | None
    bundle_loaded: bool
    store: Literal["ok", "unreachable"]


class ReloadResponse(BaseModel):
    status: Literal["reloaded", "unchanged"]
    version: str
    previous_version: str | None


class ErrorResponse(BaseModel):
    detail: Any
