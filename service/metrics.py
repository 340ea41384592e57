"""Prometheus collectors, registered on an injected registry (so tests and apps stay independent).

With ``PROMETHEUS_MULTIPROC_DIR`` set (the CLI sets it for ``--workers > 1``) prometheus_client keeps
values in per-process files and :meth:`ServiceMetrics.render` aggregates them with
``MultiProcessCollector``; gauges use the ``livemax`` mode (max over live workers).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


# label values known in advance: their series are exported at 0 from the start, so that the first increment is a
# visible change (Prometheus' increase()/rate() cannot see the first value of a series that appears at 1, and the
# ModalrecReloadFailed alert missed every process's first refused bundle)
RELOAD_TRIGGERS = ("startup", "poll", "pubsub", "admin")
FALLBACK_KINDS = ("popularity", "folded_in")
SCORED_ROUTES = ("/recommend/{user_id}", "/items/{item_id}/similar")


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class ServiceMetrics:
    """Every collector the service exports. ``registry`` defaults to a fresh ``CollectorRegistry``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_enabled()
        r = self.registry
        self.request_duration = Histogram(
            "modalrec_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "modalrec_http_requests",
            "HTTP requests by route and status code",
            ["route", "method", "status"],
            registry=r,
        )
        self.fallbacks = Counter(
            "modalrec_fallbacks", "Recommendations served by a fallback (unknown user)", ["kind"], registry=r
        )
        self.reserved_new_items = Counter(
            "modalrec_reserved_new_items",
            "Online (POST /items) items placed in a recommendation by the reserved new-item places",
            registry=r,
        )
        self.nonfinite_scores_dropped = Counter(
            "modalrec_nonfinite_scores_dropped",
            "Candidates left out of a response because their score was NaN or infinite",
            ["route"],
            registry=r,
        )
        self.text_encode_duration = Histogram(
            "modalrec_text_encode_duration_seconds",
            "Time POST /items spent encoding raw text into a modality's features (the bundle's text encoder)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "modalrec_store_errors", "Store (Redis) operations that failed", ["operation"], registry=r
        )
        self.degraded = Counter(
            "modalrec_degraded_responses",
            "Responses answered without the store (bundle only)",
            ["route"],
            registry=r,
        )
        self.reloads = Counter("modalrec_reloads", "Bundles loaded and swapped in", ["trigger"], registry=r)
        self.reload_failures = Counter(
            "modalrec_reload_failures",
            "Bundles refused (corrupt, inconsistent) on reload",
            ["trigger"],
            registry=r,
        )
        self.index_size = Gauge(
            "modalrec_index_size",
            "Items in the serving index",
            ["part"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.model_info = Gauge(
            "modalrec_model_info",
            "The bundle being served (value 1; previous versions 0)",
            ["version", "model", "dataset"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.store_up = Gauge(
            "modalrec_store_up",
            "1 when the store answered the last check",
            registry=r,
            multiprocess_mode="livemin",
        )
        for trigger in RELOAD_TRIGGERS:
            self.reloads.labels(trigger)
            self.reload_failures.labels(trigger)
        for kind in FALLBACK_KINDS:
            self.fallbacks.labels(kind)
        for route in SCORED_ROUTES:
            self.nonfinite_scores_dropped.labels(route)
        self._model_labels: tuple[str, str, str] | None = None

    def set_model(self, version: str, model: str, dataset: str) -> None:
        if self._model_labels is not None:
            self.model_info.labels(*self._model_labels).set(0)
        self._model_labels = (version, model, dataset)
        self.model_info.labels(version, model, dataset).set(1)

    def render(self) -> tuple[bytes, str]:
        """The text exposition: this registry, or every worker's values in multiprocess mode."""
        if self.multiprocess:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)
