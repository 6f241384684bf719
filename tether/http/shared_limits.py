"""Per-key limits counted in Redis, so they hold across every hub process (docs/protocol.md,
Several hub processes: rate_limit_per_min, max_inflight_per_key and max_streams_per_key are
cluster-wide). Same interface as tether.http.limits, which stays the one-process default.

- The rate is the `limits` library's moving window on Redis: at most rate_limit_per_min
  requests in any 60 s, whichever process takes them.
- In-flight infers and open streams are holds: one member each in a sorted set per key,
  scored by when it lapses. The holding process renews its holds every RENEW_S and removes
  each when it ends; a process that dies stops renewing, so its holds lapse within HOLD_S
  instead of counting against the key for good. After a Redis restart, the renewals put
  every live hold back.
- When Redis does not answer, a process counts on its own (the in-process limiters) until
  it answers again: a Redis outage loosens the limits to per-process, it never refuses
  traffic or holds requests up for more than one Redis timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import secrets
import time
from collections.abc import Callable

import redis
from limits import RateLimitItemPerMinute
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter

from tether.cluster import redis_client
from tether.common.runtime import spawn
from tether.config import Settings
from tether.http.limits import Limiter, StreamCounter, once, rate_limited
from tether.store.keys import Caller

log = logging.getLogger("tether.limits")

HOLD_S = 15.0  # a hold its process stopped renewing lapses after this
RENEW_S = 5.0
RETRY_REDIS_S = 1.0  # after a Redis error, count in-process this long before trying again

# Drop lapsed holds, then add one unless `limit` are held. Redis's clock, so that hosts
# whose clocks differ agree on what has lapsed.
_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# Push the lapse time of each of this process's holds (ARGV[2..]) forward, re-adding any
# that Redis lost (a restart): they are still held.
_RENEW = """
local t = redis.call('TIME')
local lapse = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], lapse, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return #ARGV - 1
"""


class _Fallback:
    """Whether to skip Redis for now, after it failed (one warning per outage)."""

    def __init__(self, url: str, what: str) -> None:
        self._until = 0.0
        self._outage = redis_client.Outage(log, "limits", url, what,
                                           "counting per process until it does")

    def active(self) -> bool:
        return time.monotonic() < self._until

    def failed(self, exc: Exception) -> None:
        self._until = time.monotonic() + RETRY_REDIS_S
        self._outage.failed(exc)

    def answered(self) -> None:
        self._outage.answered()


class Holds:
    """Things each key holds at once, cluster-wide (infers in flight, open streams)."""

    def __init__(self, client: redis.Redis, prefix: str, kind: str, limit: int) -> None:
        self._redis = client
        self._prefix = f"{prefix}:holds:{kind}:"
        self.limit = limit
        self._take = client.register_script(_TAKE)
        self._renew = client.register_script(_RENEW)
        self._ids = (f"{secrets.token_hex(4)}:{n}" for n in itertools.count())
        self._held: dict[str, set[str]] = {}  # key name -> this process's hold ids

    def take(self, key_name: str) -> Callable[[], None] | None:
        """One more hold for `key_name`, or None when it holds `limit` already; raises
        redis.RedisError when Redis does not answer. Returns the function that ends it."""
        hold = next(self._ids)
        if not self._take(keys=[self._prefix + key_name],
                          args=[self.limit, int(HOLD_S * 1000), hold]):
            return None
        self._held.setdefault(key_name, set()).add(hold)

        def release() -> None:
            held = self._held.get(key_name)
            if held is not None:
                held.discard(hold)
                if not held:
                    del self._held[key_name]
            # Unanswered, the hold is not renewed any more: it lapses within HOLD_S.
            with contextlib.suppress(redis.RedisError):
                self._redis.zrem(self._prefix + key_name, hold)

        return once(release)

    def renew(self) -> None:
        """Push every hold of this process forward (and back in, after a Redis restart)."""
        for key_name, held in list(self._held.items()):
            if held:
                self._renew(keys=[self._prefix + key_name],
                            args=[int(HOLD_S * 1000), *held])


def _renew_forever(holds: list[Holds]) -> None:
    while True:
        time.sleep(RENEW_S)  # gevent's sleep under the hub's worker
        for each in holds:
            try:
                each.renew()
            except redis.RedisError as exc:
                log.debug("limits: renewing holds failed: %s", exc)


class SharedLimiter(Limiter):
    """rate_limit_per_min and max_inflight_per_key for client keys, across processes (the
    in-process Limiter's counts while Redis does not answer)."""

    def __init__(self, settings: Settings, client: redis.Redis, prefix: str) -> None:
        super().__init__(settings)
        self.inflight = Holds(client, prefix, "inflight", self.max_inflight)
        self._item = RateLimitItemPerMinute(self.per_min)
        assert settings.bus_url is not None
        self._rate = MovingWindowRateLimiter(RedisStorage(
            "redis://", connection_pool=client.connection_pool, key_prefix=f"{prefix}:rate"))
        self._fallback = _Fallback(settings.bus_url, "the rate and in-flight counts")

    def admit(self, caller: Caller) -> Callable[[], None]:
        """Count one infer against `caller`; returns the function that ends it."""
        if not self.enabled or caller.role != "client" or self._fallback.active():
            return super().admit(caller)
        try:
            release = self.inflight.take(caller.name)
            if release is None:
                self._fallback.answered()
                raise rate_limited(
                    f"{self.max_inflight} requests already in flight for this key", 1)
            try:
                admitted = self._rate.hit(self._item, caller.name)
                if not admitted:
                    reset = self._rate.get_window_stats(self._item, caller.name).reset_time
            except BaseException:
                release()
                raise
        except redis.RedisError as exc:
            self._fallback.failed(exc)
            return super().admit(caller)
        self._fallback.answered()
        if not admitted:
            release()
            raise rate_limited(f"more than {self.per_min} requests a minute for this key",
                               reset - time.time())
        return release


class SharedStreamCounter(StreamCounter):
    """max_streams_per_key, across processes (in-process while Redis does not answer)."""

    def __init__(self, settings: Settings, client: redis.Redis, prefix: str) -> None:
        super().__init__(settings)
        self.streams = Holds(client, prefix, "streams", self.limit)
        assert settings.bus_url is not None
        self._fallback = _Fallback(settings.bus_url, "the open-stream counts")

    def open(self, caller: Caller) -> Callable[[], None]:
        if not self.enabled or caller.role == "admin" or self._fallback.active():
            return super().open(caller)
        try:
            release = self.streams.take(caller.name)
        except redis.RedisError as exc:
            self._fallback.failed(exc)
            return super().open(caller)
        self._fallback.answered()
        if release is None:
            raise rate_limited(f"this key already holds {self.limit} open streams", 5)
        return release


def shared(settings: Settings) -> tuple[SharedLimiter, SharedStreamCounter]:
    """The limiters of a process on a bus; their holds renewed by one greenlet."""
    assert settings.bus_url is not None
    client = redis_client.client(settings.bus_url)
    prefix = redis_client.prefix_of(settings.bus_url)
    limiter = SharedLimiter(settings, client, prefix)
    streams = SharedStreamCounter(settings, client, prefix)
    spawn(_renew_forever, [limiter.inflight, streams.streams])
    return limiter, streams
