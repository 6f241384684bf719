"""What a hub process sends on the bus goes through its outbox (tether.cluster.outbox): senders
queue, one greenlet (here a thread) publishes a pipeline per turn. Against a real Redis,
through a TCP proxy that delays or swallows bytes: every destination hears what it is sent in
the order it was sent; a sender that posts never waits for Redis, and a send does not wait
behind a batch Redis left unanswered; a send learns its message's fate as a PUBLISH told it
before (heard, nobody listening, Redis refusing or silent); and the drainer outlives every
failure."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis

from tests.support.chaos import ChaosProxy
from tests.support.hub import wait_until
from tests.support.redisdb import Database
from tether.cluster.outbox import BATCH, Outbox
from tether.cluster.redis_client import Outage, pooled, prefix_of

pytestmark = pytest.mark.timeout(120)

SILENT_S = 3  # the sender's socket timeout here: how long a swallowed batch waits


class Listener:
    """Processes' channels, subscribed on Redis directly, and what each heard, in order."""

    def __init__(self, url: str, processes: list[str], channel: Any) -> None:
        self._pubsub = redis.Redis.from_url(url, decode_responses=True).pubsub(
            ignore_subscribe_messages=True)
        self._by_channel = {channel(p): p for p in processes}
        self._pubsub.subscribe(*self._by_channel)
        self.heard: dict[str, list[Any]] = {p: [] for p in processes}
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._running = True
        self._thread.start()

    def _read(self) -> None:
        while self._running:
            message = self._pubsub.get_message(timeout=0.2)
            if message is not None and message["type"] == "message":
                self.heard[self._by_channel[message["channel"]]].append(
                    json.loads(message["data"])["n"])

    def close(self) -> None:
        self._running = False
        self._thread.join(5)
        self._pubsub.close()


@pytest.fixture
def proxy(redis_db: Database) -> Iterator[ChaosProxy]:
    made = ChaosProxy(urlsplit(redis_db.url).port or 6379)
    yield made
    made.close()


def via(proxy: ChaosProxy, url: str) -> str:
    return url.replace(f":{urlsplit(url).port}/", f":{proxy.port}/")


def outbox_to(url: str) -> tuple[Outbox, Any]:
    """An outbox on `url` with its own channel names (pub/sub ignores database numbers), as
    the bus makes its own: a client of the bus's kind, with a short socket timeout."""
    names = f"{prefix_of(url)}:outbox-test:{secrets.token_hex(4)}"

    def channel(process: str) -> str:
        return f"{names}:{process}"

    client = pooled(url, 5, decode_responses=True, socket_timeout=SILENT_S,
                    socket_connect_timeout=SILENT_S)
    sending = Outage(logging.getLogger("tether.bus"), "bus", url, "sends", "dropping")
    return Outbox(client, channel, sending), channel


@contextlib.contextmanager
def running(url: str, listen_url: str,
            processes: list[str]) -> Iterator[tuple[Outbox, Listener]]:
    """An outbox on `url` draining, and a Listener on `listen_url` to `processes`' channels;
    both stopped after."""
    outbox, channel = outbox_to(url)
    listener = Listener(listen_url, processes, channel)
    outbox.start()
    try:
        yield outbox, listener
    finally:
        outbox.stop()
        listener.close()


def test_every_destination_hears_what_it_was_sent_in_order(
        redis_db: Database, proxy: ChaosProxy) -> None:
    proxy.latency_s = (0.001, 0.005)  # each turn's round trip is slow: the queue fills
    with running(via(proxy, redis_db.url), redis_db.url, ["a", "b"]) as (outbox, listener):
        sent: dict[str, list[int]] = {"a": [], "b": []}
        heard = []
        for n in range(3 * BATCH):  # more than a pipeline holds: several turns
            process = "a" if n % 3 else "b"
            sent[process].append(n)
            if n % 50 == 0:  # a send among the posts waits for its own fate, in its turn
                heard.append(outbox.send(process, {"n": n}))
            else:
                outbox.post(process, {"n": n})
        assert heard == [True] * len(heard)
        wait_until(lambda: listener.heard == sent, timeout=30)


def test_nothing_waits_behind_a_batch_redis_left_unanswered(
        redis_db: Database, proxy: ChaosProxy) -> None:
    with running(via(proxy, redis_db.url), redis_db.url, ["a"]) as (outbox, listener):
        assert outbox.send("a", {"n": 1}) is True  # connected through the proxy: heard
        assert outbox.send("nobody", {"n": 0}) is False  # published, nobody listens there

        # Redis goes silent: a send's batch is swallowed, and that send waits its fate.
        proxy.blackhole.set()
        fate: list[bool] = []
        waiting = threading.Thread(target=lambda: fate.append(outbox.send("a", {"n": 2})))
        waiting.start()
        # Taken (its batch is on the wire), and dropped by the silent network (not read by
        # the proxy only after the network is back, as a busy machine can make it).
        wait_until(lambda: outbox.in_flight == 1 and proxy.dropped > 0)
        # Posted behind it, in the same queue: a post that waited for Redis would return
        # only after that batch was settled, at the earliest.
        outbox.post("a", {"n": 3})
        assert not fate
        proxy.blackhole.clear()  # the network is back; the swallowed batch still waits
        # A send queued behind the stalled batch does not wait for it: it publishes by
        # itself, and is heard (ahead of the post queued before it, which waits in order).
        assert outbox.send("a", {"n": 4}) is True
        assert not fate
        waiting.join(30)
        # Not heard (the silence outlasted the socket timeout); what was queued behind it
        # goes out after it, on a new connection.
        assert fate == [False]
        outbox.post("a", {"n": 5})
        assert outbox.send("a", {"n": 6}) is True
        wait_until(lambda: listener.heard["a"] == [1, 4, 3, 5, 6], timeout=30)


def test_a_redis_that_refuses_is_not_heard_and_the_outbox_recovers(
        redis_db: Database, proxy: ChaosProxy) -> None:
    port = proxy.port
    again = None
    try:
        with running(via(proxy, redis_db.url), redis_db.url, ["a"]) as (outbox, listener):
            assert outbox.send("a", {"n": 1}) is True
            proxy.close()  # connections reset, and new ones refused
            outbox.post("a", {"n": 2})  # lost, as a PUBLISH to a Redis that refuses is
            assert outbox.send("a", {"n": 3}) is False
            again = ChaosProxy(proxy.target[1], port=port)  # Redis is back
            assert outbox.send("a", {"n": 4}) is True
            wait_until(lambda: listener.heard["a"][-1:] == [4], timeout=30)
            assert 3 not in listener.heard["a"]
    finally:
        if again is not None:
            again.close()


def test_once_stopped_a_sender_publishes_itself(redis_db: Database) -> None:
    with running(redis_db.url, redis_db.url, ["a"]) as (outbox, listener):
        outbox.post("a", {"n": 1})
        outbox.stop()  # what was queued goes out first
        assert outbox.send("a", {"n": 2}) is True
        outbox.post("a", {"n": 3})
        wait_until(lambda: listener.heard["a"] == [1, 2, 3], timeout=30)
