"""Events on their way back to a forwarding process, lost when its subscription breaks
(docs/protocol.md, Several hub processes: at-most-once bus, a message lost in flight ends in a
deadline's answer, never a hang).

Redis drops what is published to a subscriber only while that subscriber's connection is
broken; the forwarding process notices its subscription break, and cannot know which events
it missed: every request it forwarded and still waits on is answered 503 `hub_busy` (a
stream that began ends with an error event, never with a gap), and its task is cancelled
at the publisher. Here Redis cuts off that one connection, as it does a subscriber whose
output buffer passes `client-output-buffer-limit pubsub` (a large message published to that
process's channel alone; see test_lost_messages.py), with a dispatched plain request and a
stream that already sent a chunk held at the publisher, and a third request waiting in the
owner's queue behind them.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import requests

from tests.cluster.test_reads import shows
from tests.cluster.test_routing import in_background, online, result_of
from tests.support.hub import Hub, wait_until
from tests.support.publisher import TestPublisher
from tests.support.redisdb import Server

pytestmark = pytest.mark.timeout(120)

TICK_S = 1.0  # tether.cluster.bus.TICK_S: the reader waits this long before resubscribing
SLACK_S = 4.0  # a busy machine's scheduling, two HTTP hops
# The relay's own deadline (wake + infer timeouts + 30 s: 750 s by default) is how long
# such a client waited before; far below it.
CLIENT_TIMEOUT_S = 60


def chunk(text: str) -> dict[str, Any]:
    data = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m1",
            "choices": [{"index": 0, "delta": {"content": text}}]}
    return {"chunk": {"data": json.dumps(data)}}


class SseClient:
    """A streamed infer read line by line on a thread (None once the stream ends)."""

    def __init__(self, hub: Hub, name: str, content: str) -> None:
        self.lines: queue.Queue = queue.Queue()
        body = {"messages": [{"role": "user", "content": content}], "stream": True}
        self._thread = threading.Thread(target=self._read, args=(hub, name, body),
                                        daemon=True)
        self._thread.start()

    def _read(self, hub: Hub, name: str, body: dict[str, Any]) -> None:
        try:
            with requests.post(f"{hub.url}/api/v1/llms/{name}/infer", json=body, stream=True,
                               timeout=CLIENT_TIMEOUT_S) as resp:
                self.lines.put(f"HTTP {resp.status_code}")
                for line in resp.iter_lines(decode_unicode=True):
                    if line:
                        self.lines.put(line)
        finally:
            self.lines.put(None)

    def next(self, timeout: float) -> str | None:
        return self.lines.get(timeout=timeout)

    def until_end(self, timeout: float) -> list[str]:
        """Every line up to the end of the stream, which must come within `timeout`."""
        deadline = time.monotonic() + timeout
        out = []
        while (line := self.next(max(deadline - time.monotonic(), 0.01))) is not None:
            out.append(line)
        return out


def process_of(hub: Hub) -> str:
    """The hub's id on the bus, as its log says at start."""
    found = re.search(r"bus: process ([0-9a-f]+) on ", hub.logs())
    assert found, hub.logs()
    return found.group(1)


def channel_of(server: Server, process: str) -> str:
    with redis.Redis.from_url(server.url, decode_responses=True) as admin:
        channels = [c for c in admin.pubsub_channels() if c.endswith(f":proc:{process}")]
    assert len(channels) == 1, channels
    return channels[0]


def cut_subscription(server: Server, channel: str) -> None:
    """Redis closes the connection subscribed to `channel` (one process's), and only that
    one: its one subscriber gets more than its output buffer may hold."""
    with redis.Redis.from_url(server.url, decode_responses=True) as admin:
        admin.config_set("client-output-buffer-limit", "pubsub 256kb 0 0")
        assert admin.publish(channel, "x" * (1 << 20)) == 1


def subscribed(server: Server, channel: str) -> Callable[[], bool]:
    def check() -> bool:
        with redis.Redis.from_url(server.url, decode_responses=True) as admin:
            return admin.pubsub_numsub(channel) == [(channel, 1)]
    return check


def test_requests_waiting_on_the_owner_are_answered_when_the_forwarders_subscription_breaks(
        redis_server: Server, cluster: Callable[..., Hub]) -> None:
    a = cluster(bus_url=redis_server.url)
    b = cluster(bus_url=redis_server.url)
    # a owns m1 and is the tasks' home; b forwards to it.
    pub, stream = online(a, {"name": "m1", "type": "openai", "model": "m",
                             "maxConcurrency": 2})

    plain = in_background(lambda: b.infer("m1", "plain", timeout=CLIENT_TIMEOUT_S))
    plain_task = stream.next_task("infer", timeout=10)
    streamed = SseClient(b, "m1", "streamed")
    streamed_task = stream.next_task("infer", timeout=10)
    assert streamed_task["streaming"] is True
    assert pub.result(streamed_task["taskId"], chunk("w0")).status_code == 200
    assert streamed.next(timeout=10) == "HTTP 200"
    assert json.loads(streamed.next(timeout=10).removeprefix("data: "))[
        "choices"][0]["delta"]["content"] == "w0"
    # Both dispatched events reached b by now: a published them before that chunk.
    waiting = in_background(lambda: b.infer("m1", "waits", timeout=CLIENT_TIMEOUT_S))
    wait_until(shows(a, "m1", queued=1), timeout=10)

    channel = channel_of(redis_server, process_of(b))
    cut_subscription(redis_server, channel)
    cut_at = time.monotonic()
    # Whether this chunk is lost with the subscription or comes after it is back, it must
    # not reach the client: the stream has a gap.
    late = TestPublisher(a.url).result(streamed_task["taskId"], chunk("w1"))
    assert late.status_code in (200, 404), late.text  # 404: the task was cancelled first

    rest = streamed.until_end(timeout=TICK_S + SLACK_S)
    events = [line for line in rest if not line.startswith(":")]  # keepalive comments
    assert events[0] == "event: error", rest
    assert json.loads(events[1].removeprefix("data: "))["error"]["code"] == "hub_busy", rest
    assert len(events) == 2, rest
    answer = result_of(plain, timeout=max(cut_at + TICK_S + SLACK_S - time.monotonic(), 0.1))
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "hub_busy"
    answer = result_of(waiting, timeout=max(cut_at + TICK_S + SLACK_S - time.monotonic(), 0.1))
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "hub_busy"
    assert time.monotonic() - cut_at < TICK_S + SLACK_S

    # Nothing keeps running for clients that were answered: both tasks are cancelled at
    # the publisher, the waiting request left the owner's queue, and the owner counts
    # none in flight.
    cancelled = {stream.next_task("cancel", timeout=10)["taskId"] for _ in range(2)}
    assert cancelled == {plain_task["taskId"], streamed_task["taskId"]}
    wait_until(shows(a, "m1", queued=0, inFlight=0), timeout=10)

    # Once b has resubscribed (what it sent before that is given up too, as its answers may
    # have been lost meanwhile), a request through it is served, and is the first task
    # since: the waiting one never went out.
    wait_until(subscribed(redis_server, channel), timeout=10)
    again = in_background(lambda: b.infer("m1", "again", timeout=CLIENT_TIMEOUT_S))
    task = stream.next_task("infer", timeout=10)
    assert task["request"]["messages"][0]["content"] == "again"
    assert pub.result(task["taskId"], {"status": 200, "body": "again"}).status_code == 200
    assert result_of(again).json() == "again"
    pub.close()
