"""Key revocations pushed to every hub process over Redis pub/sub (docs/protocol.md, Several hub
processes: a revocation reaches every process within a second).

`tether keys revoke` writes the row, then publishes the key's name on `<prefix>:revoked`;
each hub process follows that channel and evicts the name from its KeyCache at once. While
the subscription is up the cache may keep valid keys longer (it is told of revocations); the
moment it is not — Redis gone, or silent for PING_S * 3 — the cache goes back to re-reading
every key from the database after half a second, and it starts empty once the subscription
is back (a revocation published meanwhile was missed).

It is a subscription of its own, beside the bus's (tether.cluster.bus): the cache may trust
pushed revocations only while this subscription is proven alive (a PING answered every
second), and a quiet channel must not pass for a live one.
"""

from __future__ import annotations

import logging
import time

import redis

from tether.cluster import redis_client
from tether.common.runtime import spawn
from tether.http.auth import KeyCache

log = logging.getLogger("tether.revocations")

PING_S = 1.0  # how often the follower checks that Redis still answers
RETRY_S = 1.0


def channel(bus_url: str) -> str:
    return f"{redis_client.prefix_of(bus_url)}:revoked"


def announce(bus_url: str, key_name: str) -> int:
    """Tell every hub process on `bus_url` that `key_name` was revoked; returns how many
    processes heard it. Raises redis.RedisError when Redis does not answer."""
    return int(redis_client.client(bus_url).publish(channel(bus_url), key_name))


def follow(bus_url: str, cache: KeyCache) -> None:
    """Evict revoked keys from `cache` as announced, for as long as the process runs."""
    spawn(_Follower(bus_url, cache).run)


class _Follower:
    def __init__(self, bus_url: str, cache: KeyCache) -> None:
        self.bus_url = bus_url
        self.channel = channel(bus_url)
        self.cache = cache
        self.outage = redis_client.Outage(
            log, "revocations", bus_url, "the revocations channel",
            "keys are re-read from the database every half second until it does")

    def run(self) -> None:
        while True:
            try:
                self._follow(redis_client.subscriber(self.bus_url))
            except Exception as exc:  # noqa: BLE001 - the follower must outlive any failure
                self.outage.failed(exc)
            finally:
                self.cache.pushed = False
            time.sleep(RETRY_S)

    def _follow(self, client: redis.Redis) -> None:
        with client, client.pubsub() as pubsub:
            pubsub.subscribe(self.channel)
            last_heard = time.monotonic()
            next_ping = last_heard + PING_S
            while True:
                message = pubsub.get_message(timeout=PING_S)
                now = time.monotonic()
                if message is not None:
                    last_heard = now
                    kind = message["type"]
                    if kind == "subscribe":
                        self.cache.clear()  # what was revoked while unsubscribed went unheard
                        self.cache.pushed = True
                        self.outage.answered()
                    elif kind == "message":
                        self.cache.evict(message["data"].decode())
                if now - last_heard > 3 * PING_S:
                    raise redis.TimeoutError(f"no answer to PING for {3 * PING_S:g} s")
                if now >= next_ping:
                    pubsub.ping()
                    next_ping = now + PING_S
