"""Application factory: ``create_app(settings)`` wires settings, store, metrics and routes.

The bundle is loaded in the lifespan (``with TestClient(app)`` or uvicorn start-up), so building the
app is cheap and does no I/O beyond creating the store client.
"""

from __future__ import annotations

import gc
import ipaddress
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry
from starlette.routing import Match

from service.errors import ServiceError
from service.metrics import ServiceMetrics, mark_worker_dead
from service.runtime import Runtime
from service.settings import Settings
from service.store import Store, make_store

logger = logging.getLogger(__name__)


def pin_threads(threads: int) -> None:
    """One FAISS/OpenMP pool of ``threads`` per worker (the CLI also sets OMP_NUM_THREADS). This pins the calling
    thread; the thread-pool threads that serve requests pin themselves (``service.index.pin_omp_threads``)."""
    from service.index import pin_omp_threads

    pin_omp_threads(threads)


class ObservabilityMiddleware:
    """Pure ASGI middleware: request latency/status metrics per route template, and a body-size cap.

    Bodies above ``max_body_bytes`` get 413 before any route runs (by Content-Length, or while
    buffering a chunked body).
    """

    def __init__(self, app: Any, metrics: ServiceMetrics, max_body_bytes: int, routes: Sequence[Any] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.routes = routes  # the app's routes: a request refused here never reaches the router

    def _route_template(self, scope: dict) -> str:
        route = scope.get("route")
        if route is None:
            route = next((r for r in self.routes if r.matches(scope)[0] == Match.FULL), None)
        return getattr(route, "path", None) or "unmatched"

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        method = scope["method"]

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            too_large, receive = await self._limit_body(scope, receive)
            if too_large:
                status = 413
                await _send_json(
                    send, 413, {"detail": f"request body larger than {self.max_body_bytes} bytes"}
                )
                return
            await self.app(scope, receive, send_wrapper)
        finally:
            template = self._route_template(scope)
            self.metrics.request_duration.labels(template, method).observe(time.perf_counter() - started)
            self.metrics.requests.labels(template, method, str(status)).inc()

    async def _limit_body(self, scope: dict, receive: Any) -> tuple[bool, Any]:
        length = None
        chunked = False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return True, receive
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if length is not None:
            return length > self.max_body_bytes, receive
        if not chunked:
            return False, receive
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            total += len(chunks[-1])
            if total > self.max_body_bytes:
                return True, receive
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return False, replay


async def _send_json(send: Any, status: int, payload: dict) -> None:
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _encodable(value: Any) -> Any:
    """``value`` (JSON-like) with every string made UTF-8 encodable (lone surrogates backslash-escaped)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_encodable(k): _encodable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encodable(v) for v in value]
    return value


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1). Anything else, ``0.0.0.0``/``::`` and host names
    included, may be reachable from other machines."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_writes_are_open(settings: Settings) -> None:
    """Without ``write_token`` anyone who reaches the port can add items and record events (which the retrain job
    trains on): fine on loopback (tests, the demo), said loudly anywhere else."""
    if not settings.write_token and not is_loopback_host(settings.host):
        logger.warning(
            "MODALREC_WRITE_TOKEN is not set and the service listens on %s: POST /items and "
            "POST /users/{user_id}/events accept unauthenticated writes from anyone who can reach the port; "
            "set MODALREC_WRITE_TOKEN to require a bearer token",
            settings.host,
        )


def create_app(
    settings: Settings, *, store: Store | None = None, registry: CollectorRegistry | None = None
) -> FastAPI:
    """Build the app. ``store`` and ``registry`` are injectable (tests); by default they come from settings."""
    from service.api import router

    warn_if_writes_are_open(settings)
    metrics = ServiceMetrics(registry)
    runtime = Runtime(settings, store if store is not None else make_store(settings), metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pin_threads(settings.threads_per_worker)
        runtime.start()
        # Start-up objects (modules, schemas, the bundle's id maps) live as long as the process: moving
        # them out of the collector's generations keeps full collections from pausing requests.
        gc.freeze()
        try:
            yield
        finally:
            runtime.stop()
            mark_worker_dead(os.getpid())

    app = FastAPI(
        title="modalrec",
        version="0.1.0",
        description="Recommendations for multimodal items (SAND, LUDP, Multi-KG4Rec bundles) over FAISS.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.settings = settings

    @app.exception_handler(ServiceError)
    async def service_error(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the offending input, and a lone surrogate in it ("\ud800", valid JSON)
        # cannot be encoded as UTF-8: that gave 500. Inputs are rendered with such characters escaped.
        return JSONResponse({"detail": _encodable(jsonable_encoder(exc.errors()))}, status_code=422)

    app.include_router(router)
    app.add_middleware(
        ObservabilityMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes, routes=list(router.routes)
    )
    return app


def create_app_from_env() -> FastAPI:
    """uvicorn factory (``service.app:create_app_from_env``): settings from ``MODALREC_*`` variables."""
    settings = Settings()  # type: ignore[call-arg]
    level = 5 if settings.log_level == "trace" else settings.log_level.upper()  # uvicorn's TRACE is 5
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    return create_app(settings)
