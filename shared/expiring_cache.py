"""A bounded in-process cache whose entries expire: the API key and webhook sender caches."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ExpiringLru(Generic[K, V]):
    """At most `max_entries` entries, each until its expiry time (`time.monotonic()` seconds).

    When full, a new entry pushes out the least recently used one only, so a flood of lookups
    can never empty the cache at once (as clearing it when full would). Not thread-safe: the
    owner holds its lock around every call.
    """

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float) -> V | None:
        """The live value of `key`, or None (an expired entry is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: K, value: V, expires_at: float) -> None:
        self._entries[key] = (expires_at, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def discard(self, keys: Iterable[K]) -> None:
        for key in keys:
            self._entries.pop(key, None)

    def discard_where(self, predicate: Callable[[V], bool]) -> None:
        """Drop every entry whose value matches (a scan: for rare invalidations only)."""
        for key in [key for key, (_, value) in self._entries.items() if predicate(value)]:
            del self._entries[key]

    def clear(self) -> None:
        self._entries.clear()
