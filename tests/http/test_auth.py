"""The key cache: verified keys cost no database read per request, and a revocation is
seen within one second (its real-process check is in tests/e2e/test_security.py)."""

from __future__ import annotations

import pytest

from tether.http.auth import KeyCache
from tether.store import db, keys, migrations


@pytest.fixture(autouse=True)
def store(database_url):
    db.init(database_url)
    migrations.migrate()
    yield
    db.close()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_verified_key_is_read_once_then_revalidated(database_url):
    key = keys.create("app", "client")
    reads: list[str] = []

    def verify(token: str) -> keys.Caller | None:
        reads.append(token)
        return keys.verify(token)

    clock = Clock()
    cache = KeyCache(verify, revalidate_s=0.5, clock=clock)
    for _ in range(500):
        assert cache.caller(key) == keys.Caller("app", "client")
    assert len(reads) == 1  # one SELECT for 500 requests
    assert keys.revoke("app")
    clock.now += 0.49
    assert cache.caller(key) is not None  # still trusted, for less than a second
    clock.now += 0.02
    assert cache.caller(key) is None  # revalidated: revoked
    assert len(reads) == 2
    clock.now += 0.1
    assert cache.caller(key) is None and len(reads) == 2  # refusals are cached too


def test_unknown_keys_are_cached_briefly_and_memory_stays_bounded(database_url):
    clock = Clock()
    cache = KeyCache(keys.verify, revalidate_s=0.5, max_entries=100, clock=clock)
    for i in range(250):
        assert cache.caller(f"tk_{i:012x}_nope") is None
    assert len(cache._entries) <= 100
    key = keys.create("late", "admin")  # created after a failed try: accepted soon after
    assert cache.caller(key) == keys.Caller("late", "admin")
