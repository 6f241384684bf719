"""Redis clients for what hub processes count and announce to each other besides routing:
per-key limits, key revocations, /healthz (tether.http.shared_limits, .revocations, .health).

Names follow the bus's rule (tether.cluster.bus.prefix_of): every key and channel starts with
a prefix derived from the bus URL, database number included.

redis-py is pure Python: under gunicorn's gevent worker its sockets are gevent's, so a
Redis call waits on the event loop like any other I/O.
"""

from __future__ import annotations

import functools

import redis

# A Redis that stops answering must cost a request at most this long before the caller
# falls back (limits count in-process, /healthz says unreachable).
TIMEOUT_S = 1.0


@functools.cache
def client(url: str) -> redis.Redis:
    """This process's client for `url` (a pool of connections, made on first use: after
    gunicorn forked the worker, never inherited from the master)."""
    return redis.Redis.from_url(url, socket_timeout=TIMEOUT_S,
                                socket_connect_timeout=TIMEOUT_S, health_check_interval=10)


def subscriber(url: str) -> redis.Redis:
    """A client for one long-lived subscription: no read timeout (a quiet channel is not an
    error); the subscriber pings to notice a Redis that went away."""
    return redis.Redis.from_url(url, socket_connect_timeout=TIMEOUT_S, socket_keepalive=True)
