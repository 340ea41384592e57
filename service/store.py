"""Online state shared by service replicas: seen items, the event stream, new items, reload signals.

Two implementations of :class:`Store`: :class:`RedisStore` (redis-py) and :class:`MemoryStore` (the
embedded default, one process only). Every failure to reach the backend raises
:class:`StoreUnavailable`; the service then answers from the bundle alone (degraded).

Redis layout (``<p>`` = the configurable key prefix, ``modalrec:`` by default):

- ``<p>seen_recent:<user_id>``  ZSET item id -> unix time of the user's latest event with it (plus a microsecond
  per position within one request), trimmed to the ``seen_max_items`` most recent in the transaction that
  records the events (TTL ``seen_ttl_s``, refreshed on every event);
- ``<p>seen:<user_id>``  SET, the unbounded layout written before the cap (legacy, read-only now): read
  alongside, at most ``seen_max_items`` members (SRANDMEMBER), never written; it disappears with its TTL;
- ``<p>events``          STREAM, one entry per (user, item) event, fields ``user_id``, ``item_id``,
  ``type``, ``ts`` (unix seconds, float as text); capped approximately at ``stream_maxlen``. The retrain
  job reads this stream (docs/service.md);
- ``<p>items``           HASH item_id -> JSON ``{"features": {modality: [floats]}, "ts": ...}`` of items
  added online; ``<p>items:rev`` an INCR counter bumped on every change (replicas poll it);
  ``<p>items:changed`` ZSET item_id -> the revision of its latest write, so that a replica reads only the items
  changed since the revision it has (all three written by one Lua script, atomically);
- ``<p>reload``          pub/sub channel; a message (the bundle version or any text) triggers a reload.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

logger = logging.getLogger(__name__)

ItemFeatures = dict[str, list[float]]
DEFAULT_SEEN_TTL_S = 30 * 24 * 3600
DEFAULT_SEEN_MAX_ITEMS = 1000
# ZSET score step between the items of one request, so that their order (the request's) decides which are the most
# recent; 1000 items span 1 ms, far below the resolution that matters for "most recent"
_SEEN_ORDER_STEP_S = 1e-6


class StoreUnavailable(RuntimeError):
    """The store backend could not be reached (or is in its back-off window after a failure)."""


@runtime_checkable
class Store(Protocol):
    """What the service needs from its online state backend."""

    def ping(self) -> bool:
        """True when the backend answers; never raises."""

    def get_seen(self, user_id: str) -> set[str]:
        """Item ids the user interacted with online: at most ``seen_max_items``, the most recent."""

    def record_events(self, user_id: str, item_ids: Sequence[str], event_type: str, ts: float) -> None:
        """Add the items to the user's seen set (keeping its ``seen_max_items`` most recent, later positions of
        ``item_ids`` counting as more recent) and append one stream entry per item (atomically)."""

    def put_item(self, item_id: str, features: Mapping[str, list[float]]) -> None:
        """Persist (or replace) a new item's raw features."""

    def get_items(self) -> tuple[int, dict[str, ItemFeatures]]:
        """(revision, {item_id: features}) of every item added online."""

    def items_changed_since(self, revision: int) -> tuple[int, dict[str, ItemFeatures]]:
        """(current revision, {item_id: features}) of the items written after ``revision``."""

    def items_revision(self) -> int:
        """A counter that changes whenever an item is added or replaced."""

    def publish_reload(self, message: str) -> None:
        """Ask every replica to look for a new bundle."""

    def subscribe_reload(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Call ``callback(message)`` on every reload message; returns a function that unsubscribes."""

    def close(self) -> None: ...


class MemoryStore:
    """In-process store (the default without Redis). Thread-safe; state is lost on restart.

    Seen sets follow the Redis store's rules: at most ``seen_max_items`` per user, the most recent, and a user's set
    expires ``seen_ttl_s`` after the user's latest event (``clock``: seconds, monotonic by default). Expired users are
    dropped as later events are recorded (oldest first), so memory holds only users active within the TTL.
    """

    def __init__(
        self,
        stream_maxlen: int = 1_000_000,
        *,
        seen_ttl_s: float = DEFAULT_SEEN_TTL_S,
        seen_max_items: int = DEFAULT_SEEN_MAX_ITEMS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if seen_max_items < 1 or seen_ttl_s <= 0:
            raise ValueError("seen_max_items must be >= 1 and seen_ttl_s > 0")
        self._lock = threading.Lock()
        self.seen_ttl_s = seen_ttl_s
        self.seen_max_items = seen_max_items
        self._clock = clock
        # user -> (expiry time, {item id: None} oldest first); users ordered by their latest event = by expiry
        self._seen: OrderedDict[str, tuple[float, dict[str, None]]] = OrderedDict()
        self.events: deque[dict[str, Any]] = deque(maxlen=stream_maxlen)
        self._items: dict[str, ItemFeatures] = {}
        self._written_at: dict[str, int] = {}
        self._revision = 0
        self._subscribers: list[Callable[[str], None]] = []

    def ping(self) -> bool:
        return True

    def get_seen(self, user_id: str) -> set[str]:
        with self._lock:
            entry = self._seen.get(user_id)
            if entry is None:
                return set()
            if entry[0] <= self._clock():
                del self._seen[user_id]
                return set()
            return set(entry[1])

    def record_events(self, user_id: str, item_ids: Sequence[str], event_type: str, ts: float) -> None:
        with self._lock:
            now = self._clock()
            while self._seen:  # expired users, oldest first (the order is that of their latest event)
                oldest = next(iter(self._seen))
                if self._seen[oldest][0] > now:
                    break
                del self._seen[oldest]
            entry = self._seen.pop(user_id, None)
            items = entry[1] if entry is not None else {}
            for item_id in item_ids:
                items.pop(item_id, None)  # seen again: now the most recent
                items[item_id] = None
            while len(items) > self.seen_max_items:
                del items[next(iter(items))]
            self._seen[user_id] = (now + self.seen_ttl_s, items)
            for item_id in item_ids:
                self.events.append({"user_id": user_id, "item_id": item_id, "type": event_type, "ts": ts})

    def put_item(self, item_id: str, features: Mapping[str, list[float]]) -> None:
        with self._lock:
            self._items[item_id] = {name: list(values) for name, values in features.items()}
            self._revision += 1
            self._written_at[item_id] = self._revision

    def get_items(self) -> tuple[int, dict[str, ItemFeatures]]:
        with self._lock:
            return self._revision, dict(self._items)

    def items_changed_since(self, revision: int) -> tuple[int, dict[str, ItemFeatures]]:
        with self._lock:
            changed = {i: self._items[i] for i, written in self._written_at.items() if written > revision}
            return self._revision, changed

    def items_revision(self) -> int:
        return self._revision

    def publish_reload(self, message: str) -> None:
        for callback in list(self._subscribers):
            callback(message)

    def subscribe_reload(self, callback: Callable[[str], None]) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def close(self) -> None:
        pass


class RedisStore:
    """Redis-backed store.

    A circuit breaker keeps a dead Redis from adding latency: after a failure every call raises
    :class:`StoreUnavailable` at once for ``retry_interval_s``; the next call after that tries again,
    so the service recovers by itself when Redis is back. ``ping`` always tries.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "modalrec:",
        seen_ttl_s: int = DEFAULT_SEEN_TTL_S,
        seen_max_items: int = DEFAULT_SEEN_MAX_ITEMS,
        stream_maxlen: int = 1_000_000,
        socket_timeout_s: float = 0.2,
        retry_interval_s: float = 1.0,
    ) -> None:
        import redis  # imported here so MemoryStore users do not need the package

        self._redis_module = redis
        self.client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            decode_responses=True,
        )
        self.prefix = prefix
        if seen_max_items < 1:
            raise ValueError("seen_max_items must be >= 1")
        self.seen_ttl_s = seen_ttl_s
        self.seen_max_items = seen_max_items
        self.stream_maxlen = stream_maxlen
        self.retry_interval_s = retry_interval_s
        self._down_until = 0.0
        self._url = url
        self.events_key = f"{prefix}events"
        self.items_key = f"{prefix}items"
        self.items_rev_key = f"{prefix}items:rev"
        self.items_changed_key = f"{prefix}items:changed"
        self._put_item_script = self.client.register_script(_PUT_ITEM_SCRIPT)
        self.reload_channel = f"{prefix}reload"

    def seen_key(self, user_id: str) -> str:
        """The user's seen ZSET (item id -> time of the latest event), kept at ``seen_max_items`` members."""
        return f"{self.prefix}seen_recent:{user_id}"

    def legacy_seen_key(self, user_id: str) -> str:
        """The unbounded SET older versions wrote: read (a bounded sample), never written; it expires by its TTL."""
        return f"{self.prefix}seen:{user_id}"

    def _call(self, operation: Callable[[], Any]) -> Any:
        if time.monotonic() < self._down_until:
            raise StoreUnavailable("redis is unavailable (backing off after a recent failure)")
        try:
            return operation()
        except self._redis_module.RedisError as exc:
            self._down_until = time.monotonic() + self.retry_interval_s
            raise StoreUnavailable(f"redis error: {exc}") from exc

    def ping(self) -> bool:
        try:
            ok = bool(self.client.ping())
        except self._redis_module.RedisError:
            self._down_until = time.monotonic() + self.retry_interval_s
            return False
        if ok:
            self._down_until = 0.0
        return ok

    def get_seen(self, user_id: str) -> set[str]:
        limit = self.seen_max_items

        def read() -> tuple[list[str], list[str]]:
            pipe = self.client.pipeline(transaction=False)  # one round trip
            pipe.zrevrange(self.seen_key(user_id), 0, limit - 1)
            pipe.srandmember(self.legacy_seen_key(user_id), limit)
            recent, legacy = pipe.execute()
            return recent, legacy or []

        recent, legacy = self._call(read)
        seen = set(recent)
        # a set written before the cap fills what the recent items leave, never past the cap
        for item_id in legacy:
            if len(seen) >= limit:
                break
            seen.add(item_id)
        return seen

    def record_events(self, user_id: str, item_ids: Sequence[str], event_type: str, ts: float) -> None:
        def write() -> None:
            pipe = self.client.pipeline(transaction=True)
            key = self.seen_key(user_id)
            # later positions of one request count as more recent (as in MemoryStore); a repeated item moves up
            pipe.zadd(key, {item_id: ts + p * _SEEN_ORDER_STEP_S for p, item_id in enumerate(item_ids)})
            pipe.zremrangebyrank(key, 0, -self.seen_max_items - 1)  # keep the most recent seen_max_items
            pipe.expire(key, self.seen_ttl_s)
            for item_id in item_ids:
                pipe.xadd(
                    self.events_key,
                    {"user_id": user_id, "item_id": item_id, "type": event_type, "ts": repr(ts)},
                    maxlen=self.stream_maxlen,
                    approximate=True,
                )
            pipe.execute()

        self._call(write)

    def put_item(self, item_id: str, features: Mapping[str, list[float]]) -> None:
        payload = json.dumps({"features": {k: list(v) for k, v in features.items()}, "ts": time.time()})

        keys = [self.items_key, self.items_rev_key, self.items_changed_key]
        self._call(lambda: self._put_item_script(keys=keys, args=[item_id, payload]))

    @staticmethod
    def _parse_items(raw: Mapping[str, str | None]) -> dict[str, ItemFeatures]:
        items: dict[str, ItemFeatures] = {}
        for item_id, payload in raw.items():
            try:
                items[item_id] = json.loads(payload)["features"]  # type: ignore[arg-type]
            except (ValueError, KeyError, TypeError):
                logger.warning("skipping malformed stored item %r", item_id)
        return items

    def get_items(self) -> tuple[int, dict[str, ItemFeatures]]:
        def read() -> tuple[Any, Any]:
            pipe = self.client.pipeline(transaction=True)
            pipe.get(self.items_rev_key)
            pipe.hgetall(self.items_key)
            revision, raw = pipe.execute()
            return revision, raw

        revision, raw = self._call(read)
        return int(revision or 0), self._parse_items(raw)

    def items_changed_since(self, revision: int) -> tuple[int, dict[str, ItemFeatures]]:
        def read() -> tuple[Any, Any]:
            pipe = self.client.pipeline(transaction=True)
            pipe.get(self.items_rev_key)
            pipe.zrangebyscore(self.items_changed_key, f"({revision}", "+inf")
            current, changed = pipe.execute()
            # read after the revision: an item written again meanwhile comes back in its newer version, and
            # the next sync applies it once more (unchanged features are skipped)
            payloads = self.client.hmget(self.items_key, changed) if changed else []
            return current, dict(zip(changed, payloads, strict=True))

        current, raw = self._call(read)
        return int(current or 0), self._parse_items(raw)

    def items_revision(self) -> int:
        return int(self._call(lambda: self.client.get(self.items_rev_key)) or 0)

    def publish_reload(self, message: str) -> None:
        self._call(lambda: self.client.publish(self.reload_channel, message))

    def subscribe_reload(self, callback: Callable[[str], None]) -> Callable[[], None]:
        """Listen on the reload channel in a daemon thread; reconnects by itself after Redis outages."""
        stop = threading.Event()

        def listen() -> None:
            while not stop.is_set():
                pubsub = None
                try:
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.reload_channel)
                    while not stop.is_set():
                        message = pubsub.get_message(timeout=0.5)
                        if message and message.get("type") == "message":
                            callback(str(message.get("data")))
                except self._redis_module.RedisError as exc:
                    logger.debug("reload subscription lost (%s); retrying", exc)
                    stop.wait(self.retry_interval_s or 0.5)
                finally:
                    if pubsub is not None:
                        try:
                            pubsub.close()
                        except self._redis_module.RedisError:
                            pass

        thread = threading.Thread(target=listen, name="modalrec-reload-sub", daemon=True)
        thread.start()

        def unsubscribe() -> None:
            stop.set()
            thread.join(timeout=2)

        return unsubscribe

    def close(self) -> None:
        self.client.close()


# KEYS: items hash, revision counter, changed zset; ARGV: item id, payload. One atomic step, so a replica that reads
# revision r finds every write up to r in the zset (a pipeline could let a later write's entry land first).
_PUT_ITEM_SCRIPT = """
local revision = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], revision, ARGV[1])
return revision
"""


def make_store(settings: Any) -> Store:
    """RedisStore when ``settings.redis_url`` is set, else MemoryStore."""
    if settings.redis_url:
        return RedisStore(
            settings.redis_url,
            prefix=settings.redis_prefix,
            seen_ttl_s=settings.redis_seen_ttl_s,
            seen_max_items=settings.seen_max_items,
            stream_maxlen=settings.redis_stream_maxlen,
            socket_timeout_s=settings.redis_socket_timeout_s,
            retry_interval_s=settings.store_retry_interval_s,
        )
    return MemoryStore(
        stream_maxlen=settings.redis_stream_maxlen,
        seen_ttl_s=settings.redis_seen_ttl_s,
        seen_max_items=settings.seen_max_items,
    )
