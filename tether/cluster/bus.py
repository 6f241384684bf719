"""This process on the bus: one Redis client, one pub/sub connection read by one greenlet,
a channel of its own and a liveness key.

Names: every key and channel starts with a prefix derived from the bus URL *including its
database number*, because Redis pub/sub ignores database numbers: two clusters on one Redis
server (tests use a fresh db each) must not hear each other. A process is known by a random
id drawn at start (`<prefix>:proc:<id>` is its channel, `<prefix>:alive:<id>` its liveness
key, set with a TTL and renewed every second).

Delivery is at-most-once (pub/sub): whoever waits on a message has a deadline. Redis drops
what is published to a subscriber only while its connection is broken (cut off, or Redis
restarted), and nobody can tell what was lost: the reader says so (`on_loss`) when it finds
its subscription broken, and again once it has resubscribed (what was sent in between is
lost too), naming the instant since which nothing was lost.

What this process sends goes out through its outbox (outbox.py): senders queue, one greenlet
publishes, a pipeline per turn, in the order queued.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tether.cluster.outbox import Outbox
from tether.cluster.redis_client import Outage, pooled, prefix_of
from tether.common.runtime import spawn

log = logging.getLogger("tether.bus")

ALIVE_TTL_MS = 5000  # a process that stops renewing is dead after this (liveness_ttl_s)
TICK_S = 1.0  # liveness key, leases and the monitor run this often
PING_S = 2.0  # the subscription's own ping, while nothing else comes
UNANSWERED = 3  # pings in a row without a pong or a message: the subscription broke


class Bus:
    def __init__(self, url: str, on_message: Callable[[dict[str, Any]], None],
                 ttl_ms: int = ALIVE_TTL_MS,
                 on_loss: Callable[[float], None] | None = None) -> None:
        self.url = url
        # How long after its last renewal a process counts as dead: longer than any pause
        # of a live one (a full garbage collection of a worker holding many sessions can
        # stall it for seconds), and the same on every process of a cluster.
        self.ttl_ms = ttl_ms
        self.prefix = prefix_of(url)
        self.process = secrets.token_hex(4)
        self.channel = self.channel_of(self.process)
        # A burst of requests (heartbeats routed to another process, each a lookup and a
        # publish) waits for a connection rather than failing (see redis_client.pooled).
        self.redis = pooled(url, 5, decode_responses=True, socket_timeout=5,
                            socket_connect_timeout=3, health_check_interval=10)
        # The subscription's own client, without redis-py's retries: their failure handler
        # reconnects a broken pubsub and resubscribes it (even when the error is raised
        # anyway), so the connection _read is about to drop would take, and lose, what is
        # published meanwhile, counted as heard. With none, a break reaches _read as is, and
        # until it resubscribes a sender sees that nobody listens.
        self._subscriber = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=5, socket_connect_timeout=3,
            health_check_interval=10, retry=Retry(NoBackoff(), 0, supported_errors=()))
        self._on_message = on_message
        self._on_loss = on_loss
        self._pubsub: Any = None
        self._running = False
        # Each periodic task logs its own failures, once per outage (tether.cluster.redis_client).
        self._ticks: list[tuple[Callable[[], None], Outage]] = []
        self.every_tick(self._renew, "the liveness renewal")
        self.keys_lost = False  # set by a beat that finds our liveness key gone
        self._sending = self.outage("sends", "dropping what is sent until it does")
        self.outbox = Outbox(self.redis, self.channel_of, self._sending)

    # --- names ---------------------------------------------------------------------------

    def channel_of(self, process: str) -> str:
        return f"{self.prefix}:proc:{process}"

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def alive_key(self, process: str) -> str:
        return self.key("alive", process)

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> Bus:
        """Subscribe, then say we are alive: nobody sends to us before we can hear it."""
        self._pubsub = self._subscriber.pubsub()  # its pongs too: see _messages
        self._pubsub.subscribe(self.channel)
        self._running = True
        self._beat()
        self.keys_lost = False  # a new process: nothing of ours was there to lose
        self.redis.sadd(self.key("procs"), self.process)
        self.outbox.start()
        spawn(self._read)
        spawn(self._tick_loop)
        log.info("bus: process %s on %s (%s)", self.process, self.prefix, self.url)
        return self

    def every_tick(self, fn: Callable[[], None], task: str) -> None:
        """Run `fn` every TICK_S in the bus's loop (it must not block for long); `task`
        names it in the log."""
        self._ticks.append((fn, self.outage(task, f"retrying every {TICK_S:g} s")))

    def outage(self, task: str, retry: str) -> Outage:
        """What `task`, which uses this bus's Redis, logs when it fails (once per outage)."""
        return Outage(log, "bus", self.url, task, retry)

    def stop(self) -> None:
        self.outbox.stop()  # what is queued goes out first (an answer, a handed-over infer)
        self._running = False
        with contextlib.suppress(redis.RedisError):
            self.redis.srem(self.key("procs"), self.process)
            self.redis.delete(self.alive_key(self.process))
        if self._pubsub is not None:
            # closing a broken connection is best effort
            with contextlib.suppress(Exception):
                self._pubsub.close()
        with contextlib.suppress(Exception):
            self._subscriber.close()

    # --- sending -------------------------------------------------------------------------

    def send(self, process: str, payload: dict[str, Any], wait: bool = True) -> bool:
        """Publish to `process`, after what this process sent before; False if Redis is
        unreachable or nobody listens there. With `wait` off, for a sender that does not act
        on that: queued, and True at once (the sender waits on nothing, Redis included)."""
        if not wait:
            self.outbox.post(process, payload)
            return True
        return self.outbox.send(process, payload)

    def alive(self, processes: list[str]) -> set[str]:
        """Those of `processes` whose liveness key is there now."""
        if not processes:
            return set()
        keys = [self.alive_key(p) for p in processes]
        values = self.redis.mget(keys)
        return {p for p, v in zip(processes, values, strict=True) if v is not None}

    # --- loops ---------------------------------------------------------------------------

    def _renew(self) -> None:
        self._beat()
        self.redis.sadd(self.key("procs"), self.process)

    def _beat(self) -> None:
        # GET: the key we renewed a second ago is gone when Redis restarted empty (or we were
        # cut off for longer than its TTL); whatever else we keep there is gone with it.
        if self.redis.set(self.alive_key(self.process), "1", px=self.ttl_ms, get=True) is None:
            self.keys_lost = True

    def take_keys_lost(self) -> bool:
        """Whether our keys were lost since the last call (see _beat)."""
        lost, self.keys_lost = self.keys_lost, False
        return lost

    def _read(self) -> None:
        outage = self.outage("the subscription", f"resubscribing every {TICK_S:g} s")
        while self._running:
            try:
                for message in self._messages():
                    if not self._running:
                        return
                    try:
                        payload = json.loads(message["data"])
                    except ValueError:
                        log.warning("bus: dropped a message that is not JSON")
                        continue
                    try:
                        self._on_message(payload)
                    except Exception:  # noqa: BLE001 - one bad message must not stop the reader
                        log.exception("bus: handling a message failed")
            # Any failure: redis-py raises ValueError too, when stop() closes the connection
            # under listen(); while running, the reader must outlive whatever it was.
            except Exception as exc:  # noqa: BLE001 - see above
                if not self._running:
                    return
                outage.failed(exc)
                self._lost(time.monotonic())
            # Here on an error, and also when listen() ended at once: a subscribe that failed
            # (Redis still down) leaves a pubsub with no subscription, whose listen() returns
            # without reading, and looping on it straight away would never yield to the loop.
            time.sleep(TICK_S)
            try:
                with contextlib.suppress(Exception):  # the broken one: best effort
                    self._pubsub.close()
                self._pubsub = self._subscriber.pubsub()  # its pongs too: see _messages
                # Whatever is published after Redis reads this SUBSCRIBE reaches us, and so
                # does every answer to what this process sends from now on.
                subscribing = time.monotonic()
                self._pubsub.subscribe(self.channel)
            except Exception as exc:  # noqa: BLE001 - as above: the reader goes on
                outage.failed(exc)
                continue
            outage.answered()
            # Before reading on: nothing the new subscription brings is handled before what
            # was lost since the break is accounted for.
            self._lost(subscribing)

    def _messages(self) -> Iterator[dict[str, Any]]:
        """What the subscription brings, until it breaks. redis-py's listen() blocks in a
        read without a deadline: a connection that goes silent without a reset (a cut
        network, a frozen path) would leave the reader waiting forever while whatever is
        published to this process is lost. So while nothing comes the reader pings on its
        own connection every PING_S, and UNANSWERED pings in a row are a break. Counting
        pings rather than seconds: a stalled event loop sends none, so a pause of this
        process is not taken for a silence of Redis."""
        pinged, unanswered = time.monotonic(), 0
        while self._running:
            message = self._pubsub.get_message(timeout=TICK_S)
            if message is not None:
                unanswered = 0  # anything at all, a pong included, proves the connection
                if message.get("type") == "message":
                    yield message
                continue
            if time.monotonic() - pinged >= PING_S:
                if unanswered >= UNANSWERED:
                    raise redis.ConnectionError(
                        f"the subscription answered none of {unanswered} pings, "
                        f"{PING_S:g} s apart")
                self._pubsub.ping()
                pinged, unanswered = time.monotonic(), unanswered + 1

    def _lost(self, before: float) -> None:
        """Messages may have been lost that answer what this process sent before `before`
        (time.monotonic())."""
        if self._on_loss is not None:
            try:
                self._on_loss(before)
            except Exception:  # noqa: BLE001 - the reader must outlive it
                log.exception("bus: handling lost messages failed")

    def _tick_loop(self) -> None:
        while self._running:
            started = time.monotonic()
            for fn, outage in self._ticks:
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - the loop must outlive any one failure
                    outage.failed(exc)
                else:
                    outage.answered()
            time.sleep(max(TICK_S - (time.monotonic() - started), 0.05))
