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


class Reads:
    """keys.verify, keeping each token it was asked for: the SELECTs a cache made."""

    def __init__(self) -> None:
        self.tokens: list[str] = []

    def __call__(self, token: str) -> keys.Caller | None:
        self.tokens.append(token)
        return keys.verify(token)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_verified_key_is_read_once_then_revalidated(database_url):
    key = keys.create("app", "client")
    reads = Reads()
    clock = Clock()
    cache = KeyCache(reads, revalidate_s=0.5, clock=clock)
    for _ in range(500):
        assert cache.caller(key) == keys.Caller("app", "client")
    assert len(reads.tokens) == 1  # one SELECT for 500 requests
    assert keys.revoke("app")
    clock.now += 0.49
    assert cache.caller(key) is not None  # still trusted, for less than a second
    clock.now += 0.02
    assert cache.caller(key) is None  # revalidated: revoked
    assert len(reads.tokens) == 2
    clock.now += 0.1
    assert cache.caller(key) is None and len(reads.tokens) == 2  # refusals are cached too


def test_unknown_keys_are_cached_briefly_and_memory_stays_bounded(database_url):
    clock = Clock()
    cache = KeyCache(keys.verify, revalidate_s=0.5, max_entries=100, clock=clock)
    for i in range(250):
        assert cache.caller(f"tk_{i:012x}_nope") is None
    assert len(cache._entries) <= 100
    key = keys.create("late", "admin")  # created after a failed try: accepted soon after
    assert cache.caller(key) == keys.Caller("late", "admin")


def test_with_revocations_pushed_a_valid_key_is_trusted_until_evicted(database_url):
    """On a bus (tether.http.revocations) a revocation evicts at once, so a valid key needs
    no re-read twice a second; unknown keys are still re-read."""
    key = keys.create("app", "client")
    reads = Reads()
    clock = Clock()
    cache = KeyCache(reads, revalidate_s=0.5, pushed_s=30.0, clock=clock)
    cache.pushed = True
    assert cache.caller(key) is not None
    clock.now += 29
    assert cache.caller(key) is not None and len(reads.tokens) == 1
    assert cache.caller("tk_000000000000_nope") is None
    clock.now += 0.6
    assert cache.caller("tk_000000000000_nope") is None and len(reads.tokens) == 3  # re-read
    assert keys.revoke("app")
    cache.evict("someone-else")
    assert cache.caller(key) is not None  # another key's revocation changes nothing
    cache.evict("app")
    assert cache.caller(key) is None  # read again at once: revoked
    cache.pushed = False  # the feed is down: back to re-reading every half second
    key2 = keys.create("app2", "client")
    assert cache.caller(key2) is not None
    clock.now += 0.6
    assert keys.revoke("app2")
    assert cache.caller(key2) is None


def test_a_read_that_overlapped_a_revocation_is_not_kept(database_url):
    key = keys.create("app", "client")
    cache: KeyCache

    def verify(token: str) -> keys.Caller | None:
        found = keys.verify(token)  # read before the revocation...
        keys.revoke("app")
        cache.evict("app")  # ...which is announced while this read is under way
        return found

    cache = KeyCache(verify, pushed_s=30.0)
    cache.pushed = True
    assert cache.caller(key) is not None  # that request was read before the revocation
    cache._verify = keys.verify
    assert cache.caller(key) is None  # but the answer was not kept for the next one
