"""HTTP routes. Thin: parse, call the :class:`~service.runtime.Runtime`, shape the answer."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from service.app import is_loopback_host
from service.errors import ConflictError, ForbiddenError, UnauthorizedError
from service.runtime import ReloadRefused, Runtime
from service.schemas import (
    MAX_ID_LENGTH,
    MAX_K,
    WRITTEN_ID_PATTERN,
    ErrorResponse,
    EventsRequest,
    EventsResponse,
    HealthResponse,
    IndexInfo,
    ModelResponse,
    NewItemRequest,
    NewItemResponse,
    ReadyResponse,
    RecommendRequest,
    RecommendResponse,
    ReloadResponse,
    ScoredItem,
    SimilarResponse,
)
from service.store import StoreUnavailable

logger = logging.getLogger(__name__)
router = APIRouter()
DEFAULT_RECOMMEND_REQUEST = RecommendRequest()

UserId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)]
WrittenUserId = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=WRITTEN_ID_PATTERN,
                                    description="no tab or line break")]
ItemIdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH)]
ERRORS = {code: {"model": ErrorResponse} for code in (404, 409, 413, 422, 503)}
UNAUTHORIZED = {401: {"model": ErrorResponse, "description": "missing or wrong bearer token"}}


async def get_runtime(request: Request) -> Runtime:
    """Async on purpose: a sync dependency would cost a thread-pool hop on every request."""
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]

# Two bearer schemes, two settings: each endpoint accepts only its own token (the admin token grants no writes and the
# write token no reload). auto_error=False: a missing header or another scheme comes back as None, and check_bearer
# answers 401 the same way for all of them.
admin_bearer = HTTPBearer(
    scheme_name="AdminToken",
    description="MODALREC_ADMIN_TOKEN, for POST /admin/reload only (unset: the endpoint answers 403)",
    auto_error=False,
)
write_bearer = HTTPBearer(
    scheme_name="WriteToken",
    description="MODALREC_WRITE_TOKEN, for POST /items and POST /users/{user_id}/events; enforced only when set "
    "(unset or empty: the writes are open)",
    auto_error=False,
)
Credentials = HTTPAuthorizationCredentials | None


def check_bearer(credentials: Credentials, token: str) -> None:
    """The one bearer-token check (admin and writes): 401 unless ``Authorization: Bearer <token>`` carried exactly
    ``token``, compared in constant time."""
    given = credentials.credentials if credentials is not None else ""
    if credentials is None or not hmac.compare_digest(given.encode(), token.encode()):
        raise UnauthorizedError("missing or wrong bearer token")


class WriteTokenFirstRoute(APIRoute):
    """Route class of the write routes: the bearer token (MODALREC_WRITE_TOKEN, when set) is checked before anything
    else, before FastAPI parses or validates the body. A refused request is never parsed, validated, encoded
    or written, and a body that is not JSON at all gets 401 like any other: FastAPI parses a JSON body before it
    solves the route's dependencies, so a dependency could not see such a request first."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def token_first(request: Request) -> Response:
            settings = request.app.state.runtime.settings
            if settings.write_token:
                check_bearer(await write_bearer(request), settings.write_token)
            else:
                warn_once_about_an_open_write(request, settings.host)
            return await handler(request)

        return token_first


def warn_once_about_an_open_write(request: Request, configured_host: str) -> None:
    """Log, once per app, an unauthenticated write that reached this process on an address other than loopback.

    The start-up warning (``service.app.warn_if_writes_are_open``) reads ``MODALREC_HOST`` and cannot see the address
    of a server started another way (``uvicorn service.app:create_app_from_env --factory --host 0.0.0.0``); a
    request's ``server`` is the local address the connection arrived on. Not repeated when the start-up warning
    already fired."""
    state = request.app.state
    if getattr(state, "open_write_warned", False) or not is_loopback_host(configured_host):
        return
    server = request.scope.get("server")
    if not server or is_loopback_host(str(server[0])):
        return
    state.open_write_warned = True
    logger.warning(
        "an unauthenticated %s %s arrived on %s: MODALREC_WRITE_TOKEN is not set, so anyone who can reach that "
        "address can add items and record events; set MODALREC_WRITE_TOKEN to require a bearer token",
        request.method, request.url.path, server[0],
    )  # fmt: skip


def write_route(path: str, **options: Any) -> Callable[[Callable], Callable]:
    """``@router.post`` for a write route: WriteTokenFirstRoute does the check; the write_bearer dependency only
    declares the scheme in OpenAPI (with auto_error=False it refuses nothing)."""

    def register(endpoint: Callable) -> Callable:
        router.add_api_route(
            path, endpoint, methods=["POST"], dependencies=[Depends(write_bearer)],
            route_class_override=WriteTokenFirstRoute, **options,
        )  # fmt: skip
        return endpoint

    return register


RECOMMEND_OPENAPI = {
    "parameters": [
        {
            "name": "user_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "title": "User Id"},
        }
    ],
    "requestBody": {
        "required": False,
        "content": {"application/json": {"schema": RecommendRequest.model_json_schema()}},
    },
}


def _body_error(error: dict) -> dict:
    """A pydantic error on the raw body, located under ``body`` as FastAPI does. A body that is not JSON
    (or not UTF-8) comes back as bytes in ``input``; it is echoed as text so the 422 can be encoded."""
    error = {**error, "loc": ("body", *error["loc"])}
    if isinstance(error.get("input"), bytes | bytearray):
        error["input"] = bytes(error["input"][:256]).decode("utf-8", errors="replace")
    return error


@router.post(
    "/recommend/{user_id}",
    response_model=RecommendResponse,
    responses=ERRORS,
    tags=["serving"],
    openapi_extra=RECOMMEND_OPENAPI,
)
async def recommend(request: Request) -> Response:
    """Top-k items for a user. Unknown users: folded in from their online events, else popularity.

    Body: :class:`RecommendRequest` (optional; no body gives the defaults).
    """
    # The hot path. The path parameter and the body are validated here (same rules and 422 shape as
    # FastAPI's, same schemas in OpenAPI via RECOMMEND_OPENAPI) and the answer is serialised without
    # re-validation: FastAPI's dependency solving and response-model round trip cost more than the
    # FAISS search itself at 7k items (docs/service.md, "Request overhead").
    user_id: str = request.path_params["user_id"]
    if not 1 <= len(user_id) <= MAX_ID_LENGTH:
        raise RequestValidationError(
            [
                {
                    "type": "string_too_long" if user_id else "string_too_short",
                    "loc": ("path", "user_id"),
                    "msg": f"user_id must have 1 to {MAX_ID_LENGTH} characters",
                    "input": user_id[:64],
                }
            ]
        )
    raw = await request.body()
    try:
        body = RecommendRequest.model_validate_json(raw) if raw.strip() else DEFAULT_RECOMMEND_REQUEST
    except ValidationError as exc:
        raise RequestValidationError([_body_error(error) for error in exc.errors(include_url=False)]) from None
    runtime: Runtime = request.app.state.runtime
    # the store read (Redis: a blocking socket call) and the search run in the runtime's request threads, not on the
    # event loop: a slow or hung Redis, or a costly search, must not stall the worker's other requests
    result, version = await asyncio.get_running_loop().run_in_executor(
        runtime.request_executor(), runtime.recommend, user_id, body.k, body.exclude_seen, body.exclude, body.new_items
    )
    payload = {
        "user_id": user_id,
        "items": [{"item_id": i, "score": s} for i, s in zip(result.item_ids, result.scores, strict=True)],
        "model_version": version,
        "fallback": result.fallback,
    }
    return Response(orjson.dumps(payload), media_type="application/json")


@write_route(
    "/users/{user_id}/events",
    response_model=EventsResponse,
    responses={**UNAUTHORIZED, **ERRORS},
    tags=["serving"],
)
def record_events(user_id: WrittenUserId, body: EventsRequest, runtime: RuntimeDep) -> EventsResponse:
    """Record interactions: the user's seen set (filtered from recommendations) and the event stream.

    Bearer token (MODALREC_WRITE_TOKEN) when one is set."""
    # a plain def: FastAPI runs it in the thread pool, so the blocking store write never stalls the event loop
    recorded = runtime.record_events(user_id, body.item_ids, body.type)
    return EventsResponse(user_id=user_id, recorded=recorded)


@write_route(
    "/items",
    response_model=NewItemResponse,
    status_code=201,
    responses={**UNAUTHORIZED, **ERRORS},
    tags=["serving"],
)
def add_item(body: NewItemRequest, runtime: RuntimeDep) -> NewItemResponse:
    """Add (or replace) a cold-start item from its modality features via the bundle's item encoder; the modality
    that GET /model names in ``text_encoder`` may be sent as raw text. Bearer token (MODALREC_WRITE_TOKEN) when one
    is set."""
    replaced, state = runtime.add_item(body.item_id, body.features)
    return NewItemResponse(
        item_id=body.item_id, replaced=replaced, index_size=state.index.size, model_version=state.version
    )


@router.get("/items/{item_id}/similar", response_model=SimilarResponse, responses=ERRORS, tags=["serving"])
def similar_items(
    item_id: ItemIdPath, runtime: RuntimeDep, k: Annotated[int, Query(ge=1, le=MAX_K)] = 20
) -> SimilarResponse:
    """Items nearest to ``item_id`` by inner product of item embeddings (the item itself excluded)."""
    # a plain def (thread pool): an unknown id syncs with the store first, a blocking call
    ids, scores, version = runtime.similar(item_id, k)
    return SimilarResponse(
        item_id=item_id,
        items=[ScoredItem(item_id=i, score=s) for i, s in zip(ids, scores, strict=True)],
        model_version=version,
    )


@router.get("/model", response_model=ModelResponse, responses=ERRORS, tags=["operations"])
async def model(runtime: RuntimeDep) -> ModelResponse:
    """Manifest of the served bundle (version, metrics, modalities) and the index size."""
    state = runtime.state
    manifest = state.bundle.manifest
    return ModelResponse(
        version=state.version,
        model=manifest.get("model"),
        dataset=manifest.get("dataset"),
        created_at=manifest.get("created_at"),
        dim=state.bundle.dim,
        n_users=len(state.bundle.user_ids),
        n_items=len(state.bundle.item_ids),
        modalities=state.bundle.modalities,
        metrics=manifest.get("metrics", {}),
        has_item_encoder=state.encoder is not None,
        text_encoder=state.text_encoder.modality if state.text_encoder is not None else None,
        index=IndexInfo(
            kind=state.index.kind,
            size=state.index.size,
            bundle_items=state.index.n_main,
            online_items=state.index.n_online,
        ),
    )


@router.get("/healthz", response_model=HealthResponse, tags=["operations"])
async def healthz() -> HealthResponse:
    """The process is alive (no dependency is checked)."""
    return HealthResponse(status="ok")


@router.get(
    "/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}}, tags=["operations"]
)
async def readyz(runtime: RuntimeDep) -> Response:
    """200 when a bundle is loaded and warmed and the store answers; 503 (with the reason) otherwise."""
    report = await run_in_threadpool(runtime.readiness)
    return JSONResponse(ReadyResponse(**report).model_dump(), status_code=200 if report["ready"] else 503)


@router.get("/metrics", tags=["operations"], response_class=Response)
def metrics(runtime: RuntimeDep) -> Response:
    """Prometheus text exposition (aggregated over workers in multiprocess mode)."""
    payload, content_type = runtime.metrics.render()
    return Response(content=payload, media_type=content_type)


@router.post(
    "/admin/reload",
    response_model=ReloadResponse,
    responses={**UNAUTHORIZED, **{code: {"model": ErrorResponse} for code in (403, 409)}},
    tags=["operations"],
)
def admin_reload(
    runtime: RuntimeDep, credentials: Annotated[Credentials, Depends(admin_bearer)], force: bool = False
) -> ReloadResponse:
    """Load the bundle `current` points at now (bearer token MODALREC_ADMIN_TOKEN; unset: 403). 409 when it is
    refused; old one keeps serving."""
    token = runtime.settings.admin_token
    if not token:
        raise ForbiddenError("the admin endpoint is disabled (set MODALREC_ADMIN_TOKEN)")
    check_bearer(credentials, token)
    try:
        result = runtime.reload("admin", force=force)
    except ReloadRefused as exc:
        raise ConflictError(str(exc)) from exc
    if result.status == "reloaded":
        try:
            runtime.store.publish_reload(result.version)
        except StoreUnavailable:  # other replicas still find it by polling
            pass
    return ReloadResponse(
        status=result.status, version=result.version, previous_version=result.previous_version
    )
