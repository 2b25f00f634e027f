"""Dropping cached credentials in every process at once, over Redis pub/sub.

Each web process caches API keys (shared/auth.py) and webhook senders
(services/intake/webhook_verification.py) for a while, so that a request costs no query. When a
key is revoked, or an integration is created, disabled or has its secrets changed, the command
that did it publishes an invalidation once its transaction has committed; every process's
listener thread drops those entries from its caches within milliseconds.

Redis is not needed for correctness. Publishing fails quietly (logged), a listener that cannot
reach Redis tries again with back-off, and the caches' expiry time
(`MYOTRIAGE_API_KEY_CACHE_SECONDS`) bounds how long a revoked key keeps working meanwhile. A
listener empties its caches whenever it (re)subscribes: it may have missed messages while away.

Fork-safe: the listener thread starts on first use in the process that serves requests (a
gunicorn worker, after the fork), and a forked child forgets its parent's listeners.
"""

from __future__ import annotations

import json
import os
import random
import threading
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

import redis
import structlog
from redis.backoff import NoBackoff
from redis.retry import Retry

log = structlog.get_logger("myotriage.cache_invalidation")

# What an invalidation is about; its keys say which entries.
API_KEYS = "api_key"  # keys: SHA-256 hex digests of the keys (as stored; never a key itself)
INTEGRATIONS = "integration"  # keys: an integration's id and name
CHANNEL_PREFIX = "myotriage.cache-invalidation"
# How long `get_message` waits: also how soon a stopping listener notices.
POLL_SECONDS = 1.0
# Redis redelivers nothing: a subscriber that was away may have missed messages, so it empties
# its caches on every (re)subscription. Back-off between attempts, doubling, with jitter.
MIN_BACKOFF_SECONDS = 0.5
MAX_BACKOFF_SECONDS = 15.0


class InvalidatedCache(Protocol):
    """A cache that listens: drops some entries, or all of them."""

    def invalidate(self, keys: Sequence[str]) -> None: ...

    def invalidate_all(self) -> None: ...


def channel_of(client: redis.Redis) -> str:
    """The channel for the client's database: pub/sub spans a server's databases, and
    deployments (or test runs) on other database numbers of the same server are not ours."""
    return f"{CHANNEL_PREFIX}.db{client.connection_pool.connection_kwargs.get('db', 0)}"


def publish_invalidation(client: redis.Redis, kind: str, keys: Sequence[str]) -> bool:
    """Tell every process to drop these entries; False (logged) when Redis is unreachable, and
    the caches' expiry time is then the bound. Call it after the change has committed."""
    try:
        client.publish(channel_of(client), json.dumps({"kind": kind, "keys": list(keys)}))
    except (redis.RedisError, OSError) as exc:
        log.warning("cache_invalidation.publish_failed", kind=kind, error_class=type(exc).__name__)
        return False
    return True


def publish_invalidation_to(redis_url: str, kind: str, keys: Sequence[str]) -> bool:
    """`publish_invalidation` from a command-line process: a client of its own, short timeouts."""
    client = redis.Redis.from_url(
        redis_url, socket_connect_timeout=2, socket_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    try:
        return publish_invalidation(client, kind, keys)
    finally:
        client.close()


def publisher(target: redis.Redis | str) -> Callable[[str, Sequence[str]], bool]:
    """Publishing through a service's client, or (a URL) from a command-line process."""
    if isinstance(target, str):
        return partial(publish_invalidation_to, target)
    return partial(publish_invalidation, target)


class InvalidationListener:
    """One process's subscriber thread for one Redis: hands each invalidation to the caches
    registered for its kind. Started by the first `add`."""

    def __init__(
        self,
        redis_url: str,
        *,
        min_backoff: float = MIN_BACKOFF_SECONDS,
        max_backoff: float = MAX_BACKOFF_SECONDS,
    ) -> None:
        self.redis_url = redis_url
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._backoff = min_backoff
        self._caches: dict[str, weakref.WeakSet[Any]] = {}
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, kind: str, cache: InvalidatedCache) -> None:
        """Send invalidations of `kind` to `cache` (held weakly) from now on."""
        with self._lock:
            self._caches.setdefault(kind, weakref.WeakSet()).add(cache)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="myotriage-cache-invalidation", daemon=True
                )
                self._thread.start()

    @property
    def subscribed(self) -> bool:
        """Whether invalidations reach this process now (else caches rely on expiry)."""
        return self._subscribed.is_set()

    def wait_subscribed(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                self._listen()
            except Exception as exc:  # any failure: this thread must outlive it
                was_subscribed = self._subscribed.is_set()
                self._subscribed.clear()
                if was_subscribed:
                    self._backoff = self._min_backoff
                    failures = 0
                failures += 1
                if failures == 1:  # once per outage, not once per attempt
                    log.warning(
                        "cache_invalidation.unavailable",
                        error_class=type(exc).__name__,
                        detail="cached credentials now expire on their own time",
                    )
            if self._stopping.wait(self._backoff * random.uniform(0.5, 1.0)):
                break
            self._backoff = min(self._backoff * 2, self._max_backoff)

    def _listen(self) -> None:
        client = redis.Redis.from_url(
            self.redis_url,
            socket_connect_timeout=2,
            # Longer than a poll; health checks (PING) find a dead connection within seconds.
            socket_timeout=10,
            socket_keepalive=True,
            health_check_interval=5,
            retry=Retry(NoBackoff(), 0),  # our own back-off, and a flush after each reconnect
        )
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(channel_of(client))
            while not self._stopping.is_set():
                message = pubsub.get_message(timeout=POLL_SECONDS)
                if message is None:
                    continue
                if message["type"] == "subscribe":
                    self._on_subscribed()
                elif message["type"] == "message":
                    self._dispatch(message["data"])
        finally:
            self._subscribed.clear()
            pubsub.close()
            client.close()

    def _on_subscribed(self) -> None:
        for cache in self._all_caches():
            cache.invalidate_all()
        self._backoff = self._min_backoff
        self._subscribed.set()
        log.info("cache_invalidation.subscribed")

    def _dispatch(self, data: Any) -> None:
        try:
            message = json.loads(data)
            kind = str(message["kind"])
            keys = [str(key) for key in message["keys"]]
        except (ValueError, KeyError, TypeError):
            log.warning("cache_invalidation.bad_message")
            return
        with self._lock:
            caches = list(self._caches.get(kind, ()))
        for cache in caches:
            cache.invalidate(keys)

    def _all_caches(self) -> list[InvalidatedCache]:
        with self._lock:
            return [cache for caches in self._caches.values() for cache in caches]


# One listener per Redis URL in a process.
_listeners: dict[str, InvalidationListener] = {}
_listeners_lock = threading.Lock()


def listener_for(redis_url: str) -> InvalidationListener:
    with _listeners_lock:
        listener = _listeners.get(redis_url)
        if listener is None:
            listener = _listeners[redis_url] = InvalidationListener(redis_url)
        return listener


def stop_listener(redis_url: str) -> None:
    """Stop and forget this process's listener for `redis_url` (tests; a shutdown)."""
    with _listeners_lock:
        listener = _listeners.pop(redis_url, None)
    if listener is not None:
        listener.stop()


def _forget_listeners_in_child() -> None:
    # The parent's threads do not exist in a forked child, and its lock may have been held.
    global _listeners_lock
    _listeners.clear()
    _listeners_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_listeners_in_child)


class ListeningCache:
    """Registers a cache with its process's listener on first use in each process (so a cache
    built before gunicorn forks starts listening in each worker, and never in the master)."""

    def __init__(self, redis_url: str, kind: str) -> None:
        self.redis_url = redis_url
        self.kind = kind
        self._pid: int | None = None

    def ensure(self, cache: InvalidatedCache) -> None:
        """Cheap after the first call in a process: one comparison."""
        pid = os.getpid()
        if self._pid != pid:
            self._pid = pid
            listener_for(self.redis_url).add(self.kind, cache)

    @property
    def listener(self) -> InvalidationListener:
        return listener_for(self.redis_url)
