"""The running service: the current :class:`ServingState`, the store, reloads and background sync.

Reads never lock: a request takes ``runtime.state`` once and uses that snapshot to the end. Two locks
exist: ``_reload_lock`` (one reload at a time) and ``_mutation_lock`` (online items and the final swap of
a reload, so an item added while a new bundle is being prepared is carried over).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.bundle import CURRENT_LINK, BundleError, load_bundle, resolve_bundle_dir
from service.encoder import FeatureError
from service.errors import ConflictError, InvalidInputError, NotFoundError, UnavailableError
from service.metrics import ServiceMetrics
from service.settings import Settings
from service.state import Recommendation, ServingState
from service.store import Store, StoreUnavailable

logger = logging.getLogger(__name__)


class ReloadRefused(Exception):
    """A new bundle failed verification or could not be indexed; the old one keeps serving."""


@dataclass
class ReloadResult:
    status: str  # "reloaded" | "unchanged"
    version: str
    previous_version: str | None


class Runtime:
    def __init__(self, settings: Settings, store: Store, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.store = store
        self.metrics = metrics
        self._state: ServingState | None = None
        self._reload_lock = threading.Lock()
        self._mutation_lock = threading.Lock()
        self._online_items: dict[str, Mapping[str, Sequence[float]]] = {}
        # add_item writes counted, and the count at each item's latest local write: tells a reload which local
        # items are newer than the store snapshot it took
        self._item_writes = 0
        self._written_at: dict[str, int] = {}
        self._items_revision: int | None = None
        self._last_refused: Path | None = None
        self._store_ok = True
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._unsubscribe: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._executor_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        try:
            self.reload("startup")
        except ReloadRefused as exc:
            logger.error(
                "no servable bundle at start-up (%s); will keep polling %s", exc, self.settings.bundle_root
            )
        self.check_store()
        try:
            self._unsubscribe = self.store.subscribe_reload(lambda _msg: self._wake.set())
        except StoreUnavailable as exc:
            logger.warning("reload subscription unavailable: %s", exc)
        self._watcher = threading.Thread(target=self._watch, name="modalrec-watcher", daemon=True)
        self._watcher.start()

    def request_executor(self) -> ThreadPoolExecutor:
        """The threads that run ``/recommend``'s store read and search off the event loop (``recommend_threads`` of
        them; created on first use, shut down by :meth:`stop`). A small dedicated pool: measured on the server
        benchmark it costs less per request than FastAPI's shared thread pool (docs/service.md)."""
        executor = self._executor
        if executor is None:
            with self._executor_lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        max_workers=self.settings.recommend_threads, thread_name_prefix="modalrec-recommend"
                    )
                executor = self._executor
        return executor

    def stop(self) -> None:
        with self._executor_lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
        self._stop.set()
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        self.store.close()

    @property
    def state(self) -> ServingState:
        state = self._state
        if state is None:
            raise UnavailableError("no bundle is loaded yet")
        return state

    @property
    def loaded(self) -> bool:
        return self._state is not None

    # -- reload ---------------------------------------------------------------------------------
    def reload(self, trigger: str, force: bool = False) -> ReloadResult:
        """Load the bundle ``bundle_root`` points at, warm it on the side and swap it in.

        Raises:
            ReloadRefused: corrupt or inconsistent bundle; the current one keeps serving.
        """
        with self._reload_lock:
            previous = self._state
            try:
                target = resolve_bundle_dir(self.settings.bundle_root)
            except BundleError as exc:
                self.metrics.reload_failures.labels(trigger).inc()
                raise ReloadRefused(str(exc)) from exc
            if previous is not None and target == previous.bundle.path and not force:
                return ReloadResult("unchanged", previous.version, previous.version)
            started = time.perf_counter()
            try:
                bundle = load_bundle(target)
                new_state = ServingState.build(bundle, self.settings)
                new_state.warm()
            except Exception as exc:  # any failure refuses the bundle: onnxruntime's run-time errors
                # (a text encoder that loads but fails on a test text) are not RuntimeError; an uncaught one answered
                # the admin reload with 500 and was retried by the watcher on every poll
                self._last_refused = target
                self.metrics.reload_failures.labels(trigger).inc()
                logger.error(
                    "bundle %s refused (%s); still serving %s",
                    target,
                    exc,
                    previous.version if previous else "nothing",
                )
                raise ReloadRefused(f"bundle {target.name} refused: {exc}") from exc
            writes_before = self._item_writes
            revision, stored = self._stored_items()
            new_state.apply_online_items(self._merged_items(stored, writes_before))  # encoding, outside the lock
            with self._mutation_lock:  # items added meanwhile; unchanged ones are skipped
                items = self._merged_items(stored, writes_before)
                new_state.apply_online_items(items)
                self._online_items = dict(items)
                if revision is not None:
                    # the new state holds the snapshot, not what a sync applied to the old state since: the next sync
                    # must read every item written after the snapshot (keeping a newer revision lost those writes)
                    self._items_revision = revision
                self._state = new_state
                self._update_index_gauges(new_state)
            self._last_refused = None
            self.metrics.reloads.labels(trigger).inc()
            self.metrics.set_model(
                new_state.version, str(bundle.manifest.get("model")), str(bundle.manifest.get("dataset"))
            )
            logger.info(
                "serving bundle %s (%s, %.2fs)", new_state.version, trigger, time.perf_counter() - started
            )
            return ReloadResult("reloaded", new_state.version, previous.version if previous else None)

    def _merged_items(
        self, stored: Mapping[str, Mapping[str, Sequence[float]]], writes_before: int
    ) -> dict[str, Mapping[str, Sequence[float]]]:
        """Online items for a new state: the store's snapshot wins (another replica may have replaced an item this
        one still holds), except items written here after the snapshot was taken (``writes_before``)."""
        newer = {i: f for i, f in self._online_items.items() if self._written_at.get(i, 0) > writes_before}
        return {**self._online_items, **stored, **newer}

    def _stored_items(self) -> tuple[int | None, dict[str, Mapping[str, Sequence[float]]]]:
        """(revision, items) of the store's online items; (None, {}) when the store is unavailable."""
        try:
            revision, items = self.store.get_items()
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("get_items").inc()
            logger.warning("store unavailable while loading online items: %s", exc)
            return None, {}
        return revision, dict(items)

    def _current_target_changed(self) -> bool:
        root = Path(self.settings.bundle_root)
        link = root / CURRENT_LINK
        if not link.exists():
            return False
        target = Path(os.path.realpath(link))
        state = self._state
        if target == self._last_refused:
            return False
        return state is None or target != state.bundle.path

    def _watch(self) -> None:
        interval = self.settings.reload_poll_s if self.settings.reload_poll_s > 0 else 1.0
        while not self._stop.is_set():
            woken = self._wake.wait(timeout=interval)
            if woken:  # cleared only when seen: a message arriving just after a timeout waits for the next pass
                self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if woken:
                    self.reload("pubsub")
                elif self.settings.reload_poll_s > 0 and self._current_target_changed():
                    self.reload("poll")
            except ReloadRefused:
                pass
            except Exception:  # the watcher must survive anything; it is the recovery path
                logger.exception("reload check failed")
            try:
                self.check_store()
                self.sync_online_items()
            except Exception:
                logger.exception("store sync failed")

    # -- store ----------------------------------------------------------------------------------
    def check_store(self) -> bool:
        ok = self.store.ping()
        if ok != self._store_ok:
            logger.warning("store is %s", "reachable again" if ok else "unreachable; serving degraded")
        self._store_ok = ok
        self.metrics.store_up.set(1 if ok else 0)
        return ok

    def sync_online_items(self) -> int:
        """Pick up items other replicas added (the store's item revision changed)."""
        state = self._state
        if state is None:
            return 0
        known = self._items_revision
        try:
            revision = self.store.items_revision()
            if revision == known:
                return 0
            if known is None or revision < known:  # nothing read yet, or the store was emptied: read everything
                revision, items = self.store.get_items()
            else:
                revision, items = self.store.items_changed_since(known)
        except StoreUnavailable:
            return 0
        with self._mutation_lock:
            if self._state is not state:
                return 0
            applied = state.apply_online_items(items)
            self._online_items.update(items)
            self._items_revision = revision
            if applied:
                self._update_index_gauges(state)
        return applied

    def _sync_for(self, item_ids: Sequence[str]) -> bool:
        """Item ids unknown here may have been added through another replica since the last background sync:
        sync now (one revision read when nothing changed). True if any of them is known afterwards."""
        try:
            self.sync_online_items()
        except Exception:  # a failed sync leaves the ids unknown, as they were
            logger.exception("on-demand item sync failed")
            return False
        rows = self.state.item_rows
        return any(i in rows for i in item_ids)

    def _update_index_gauges(self, state: ServingState) -> None:
        self.metrics.index_size.labels("bundle").set(state.index.n_main)
        self.metrics.index_size.labels("online").set(state.index.n_online)

    # -- operations -----------------------------------------------------------------------------
    def recommend(
        self, user_id: str, k: int, exclude_seen: bool, exclude: Sequence[str], new_item_slots: int | None = None
    ) -> tuple[Recommendation, str]:
        """``new_item_slots`` None: the ``new_item_slots`` setting (see :meth:`ServingState.recommend`)."""
        state = self.state
        known = user_id in state.user_rows
        online_seen: set[str] = set()
        if not known or exclude_seen:
            try:
                online_seen = self.store.get_seen(user_id)
            except StoreUnavailable:
                self.metrics.store_errors.labels("get_seen").inc()
                self.metrics.degraded.labels("recommend").inc()
        slots = self.settings.new_item_slots if new_item_slots is None else new_item_slots
        result = state.recommend(user_id, k, exclude_seen, exclude, online_seen, slots)
        if result.fallback is not None:
            self.metrics.fallbacks.labels(result.fallback).inc()
        if result.reserved_new_items:
            self.metrics.reserved_new_items.inc(result.reserved_new_items)
        if result.dropped_nonfinite:
            self.metrics.nonfinite_scores_dropped.labels("/recommend/{user_id}").inc(result.dropped_nonfinite)
        return result, state.version

    def record_events(self, user_id: str, item_ids: Sequence[str], event_type: str) -> int:
        limit = self.settings.max_events_per_request
        if len(item_ids) > limit:
            raise InvalidInputError(f"{len(item_ids)} item ids in one request; at most {limit}; nothing was recorded")
        state = self.state
        unknown = sorted({i for i in item_ids if i not in state.item_rows})
        if unknown and self._sync_for(unknown):
            state = self.state
            unknown = sorted({i for i in item_ids if i not in state.item_rows})
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:10])
            raise InvalidInputError(f"unknown item ids ({len(unknown)}): {shown}; nothing was recorded")
        unique = list(dict.fromkeys(item_ids))
        try:
            self.store.record_events(user_id, unique, event_type, time.time())
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels("record_events").inc()
            # a timeout may hide a write that did happen: say so; a retry is harmless (seen items are a set, and
            # the retrain job counts a repeated user-item pair once)
            raise UnavailableError(
                f"the event store did not confirm the write ({exc}); the events may not have been recorded, "
                "retrying is safe"
            ) from exc
        return len(unique)

    def add_item(
        self, item_id: str, features: Mapping[str, Sequence[float] | str]
    ) -> tuple[bool, ServingState]:
        """Encode a new item (raw text through the bundle's text encoder), store it, then add it to the index."""
        if item_id not in self.state.item_rows:
            self._sync_for([item_id])  # another replica may have added it: then this is a replacement
        outside_lock = self.state
        if outside_lock.is_bundle_item(item_id):  # checked again under the lock; here so no text is encoded for it
            raise ConflictError(
                f"item {item_id!r} is part of bundle {outside_lock.version}; it cannot be replaced online"
            )
        try:  # text encoding is the slow part: done before taking the lock, again only if a reload came between
            resolved = self._resolve_features(outside_lock, features)
        except FeatureError as exc:
            raise InvalidInputError(str(exc)) from exc
        with self._mutation_lock:
            state = self.state
            if state.is_bundle_item(item_id):
                raise ConflictError(
                    f"item {item_id!r} is part of bundle {state.version}; it cannot be replaced online"
                )
            try:
                if state is not outside_lock:
                    resolved = self._resolve_features(state, features)
                vector = state.encode(resolved)
            except FeatureError as exc:
                raise InvalidInputError(str(exc)) from exc
            stored = {name: [float(v) for v in values] for name, values in resolved.items()}
            try:
                self.store.put_item(item_id, stored)
            except StoreUnavailable as exc:
                self.metrics.store_errors.labels("put_item").inc()
                raise UnavailableError(
                    f"the item store did not confirm the write ({exc}); item {item_id!r} is not served here, "
                    "retrying is safe"
                ) from exc
            replaced = state.upsert_online_item(item_id, stored, vector)
            self._online_items[item_id] = stored
            self._item_writes += 1
            self._written_at[item_id] = self._item_writes
            self._update_index_gauges(state)
        return replaced, state

    def _resolve_features(
        self, state: ServingState, features: Mapping[str, Sequence[float] | str]
    ) -> dict[str, list[float]]:
        """``state.resolve_features``, timed into ``modalrec_text_encode_duration_seconds`` when it encodes text."""
        if not any(isinstance(values, str) for values in features.values()):
            return state.resolve_features(features)
        started = time.perf_counter()
        resolved = state.resolve_features(features)
        self.metrics.text_encode_duration.observe(time.perf_counter() - started)
        return resolved

    def similar(self, item_id: str, k: int) -> tuple[list[str], list[float], str]:
        state = self.state
        if item_id not in state.item_rows and self._sync_for([item_id]):
            state = self.state
        if item_id not in state.item_rows:
            raise NotFoundError(f"unknown item {item_id!r}")
        ids, scores, dropped = state.similar(item_id, k)
        if dropped:
            self.metrics.nonfinite_scores_dropped.labels("/items/{item_id}/similar").inc(dropped)
        return ids, scores, state.version

    def readiness(self) -> dict[str, Any]:
        store_ok = self.check_store()
        state = self._state
        return {
            "ready": state is not None and store_ok,
            "bundle": state.version if state else None,
            "bundle_loaded": state is not None,
            "store": "ok" if store_ok else "unreachable",
        }
