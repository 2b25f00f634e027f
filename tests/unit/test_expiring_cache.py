"""The bounded, expiring cache behind the API key and webhook sender caches."""

from __future__ import annotations

import pytest

from shared.expiring_cache import ExpiringLru


def test_full_cache_drops_the_least_recently_used_entry_only() -> None:
    cache: ExpiringLru[str, int] = ExpiringLru(3)
    for number, key in enumerate("abc"):
        cache.put(key, number, expires_at=100)
    assert cache.get("a", now=0) == 0  # "a" is now the most recently used
    cache.put("d", 3, expires_at=100)
    assert len(cache) == 3
    assert cache.get("b", now=0) is None  # the least recently used went
    assert [cache.get(key, now=0) for key in "acd"] == [0, 2, 3]


def test_a_flood_of_new_keys_never_holds_more_than_the_bound() -> None:
    cache: ExpiringLru[int, bool] = ExpiringLru(100)
    for key in range(10_000):
        cache.put(key, True, expires_at=100)
        assert len(cache) <= 100
    assert cache.get(9_999, now=0) and cache.get(9_899, now=0) is None


def test_entries_expire_and_can_be_discarded() -> None:
    cache: ExpiringLru[str, str] = ExpiringLru(10)
    cache.put("short", "s", expires_at=5)
    cache.put("long", "l", expires_at=50)
    cache.put("other", "o", expires_at=50)
    assert cache.get("short", now=4) == "s"
    assert cache.get("short", now=5) is None and len(cache) == 2
    cache.discard(["long", "absent"])
    assert cache.get("long", now=0) is None
    cache.put("x", "match", expires_at=50)
    cache.discard_where(lambda value: value == "match")
    assert cache.get("x", now=0) is None and cache.get("other", now=0) == "o"
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError):
        ExpiringLru(0)
