"""Per-client-key limits: requests per minute (token bucket) and infers in flight, counted
in this process. With a bus_url they are counted in Redis instead (tether.http.shared_limits;
http.app picks which)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import limits
from limits import storage, strategies

from tether import errors
from tether.config import Settings
from tether.errors import TetherError
from tether.store.keys import Caller


def rate_limited(message: str, retry_after_s: float) -> TetherError:
    error = errors.RATE_LIMITED(why=message)
    error.headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
    return error


class Limiter:
    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth_enabled  # without keys there is no one to count
        self.per_min = settings.rate_limit_per_min
        self.max_inflight = settings.max_inflight_per_key
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last refill)
        self._inflight: dict[str, int] = {}

    def admit(self, caller: Caller) -> Callable[[], None]:
        """Count one infer against `caller`; returns the function that ends it."""
        if not self.enabled or caller.role != "client":
            return _not_counted
        now = time.monotonic()
        rate = self.per_min / 60.0
        tokens, last = self._buckets.get(caller.name, (float(self.per_min), now))
        tokens = min(float(self.per_min), tokens + (now - last) * rate)
        if tokens < 1.0:
            self._buckets[caller.name] = (tokens, now)
            raise rate_limited(f"more than {self.per_min} requests a minute for this key",
                               (1.0 - tokens) / rate if rate else 60)
        if self._inflight.get(caller.name, 0) >= self.max_inflight:
            raise rate_limited(f"{self.max_inflight} requests already in flight for this key", 1)
        self._buckets[caller.name] = (tokens - 1.0, now)
        return _hold(self._inflight, caller.name)


def _not_counted() -> None:
    """What admit and open hand a caller nothing is counted for: nothing to give back."""


def once(release: Callable[[], None]) -> Callable[[], None]:
    """`release`, run at its first call only: a hold is given back once, however many of
    its request's paths end it (here and in tether.http.shared_limits)."""
    done = False

    def first_time() -> None:
        nonlocal done
        if not done:
            done = True
            release()

    return first_time


def _hold(counts: dict[str, int], key: str) -> Callable[[], None]:
    """Count one more for `key`; the returned function gives it back, once."""
    counts[key] = counts.get(key, 0) + 1

    def give_back() -> None:
        counts[key] -= 1

    return once(give_back)


class StreamCounter:
    """Open publisher streams per key (max_streams_per_key)."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth_enabled
        self.limit = settings.max_streams_per_key
        self._open: dict[str, int] = {}

    def open(self, caller: Caller) -> Callable[[], None]:
        if not self.enabled or caller.role == "admin":
            return _not_counted
        if self._open.get(caller.name, 0) >= self.limit:
            raise rate_limited(f"this key already holds {self.limit} open streams", 5)
        return _hold(self._open, caller.name)


class RegisterRate:
    """`register_rate_per_min` registrations per publisher key, per client address with
    auth off (a moving window, in this process); admin keys are not counted."""

    def __init__(self, settings: Settings) -> None:
        self.per_min = settings.register_rate_per_min
        self.by_key = settings.auth_enabled
        self._item = limits.RateLimitItemPerMinute(self.per_min) if self.per_min > 0 else None
        self._window = strategies.MovingWindowRateLimiter(storage.MemoryStorage())

    def admit(self, caller: Caller, address: str) -> None:
        if self._item is None or (self.by_key and caller.role == "admin"):
            return
        who = f"key:{caller.name}" if self.by_key else f"addr:{address}"
        if self._window.hit(self._item, "register", who):
            return
        reset = self._window.get_window_stats(self._item, "register", who).reset_time
        whose = "this key" if self.by_key else "this address"
        raise rate_limited(f"more than {self.per_min} registrations a minute for {whose}",
                           reset - time.time())
