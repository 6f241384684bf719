"""GET /status/events, the status page's live feed, read as a plain SSE client: a whole
state first, another on every change, and a hub shutdown that is not held up by it."""

from __future__ import annotations

import queue
import threading
import time

import requests

from tether.common import sse


class Feed:
    def __init__(self, url: str, headers: dict | None = None) -> None:
        self.response = requests.get(url + "/status/events", stream=True, timeout=30,
                                     headers={"Connection": "close", **(headers or {})})
        self.events: queue.Queue = queue.Queue()
        self.ended = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for item in sse.parse(sse.iter_lines(self.response.iter_content(chunk_size=None))):
                if not isinstance(item, str):
                    self.events.put(item)
        except requests.RequestException:
            pass
        self.ended.set()

    def until(self, predicate, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(deadline - time.monotonic(), 0.01))
            assert event.event == "state"
            state = event.json()
            if predicate(state):
                return state


def rows(state: dict) -> dict[str, dict]:
    return {row["name"]: row for row in state["llms"]}


def test_the_feed_sends_the_state_then_every_change(hub, publisher):
    feed = Feed(hub.url)
    first = feed.until(lambda s: True)
    assert feed.response.headers["Content-Type"].startswith("text/event-stream")
    assert first["llms"] == [] and first["totals"]["feeds"] == 1
    publisher.register("alpha")
    state = feed.until(lambda s: "alpha" in rows(s))
    alpha = rows(state)["alpha"]
    assert (alpha["status"], alpha["kind"], alpha["session"]) == (
        "active", "virtual", publisher.session_id)
    registered_at = alpha["lastHeartbeatAt"]
    assert registered_at is not None
    publisher.open()
    state = feed.until(lambda s: rows(s)["alpha"]["streamOpen"])
    assert state["totals"]["streamsOpen"] == 1
    assert publisher.heartbeat().status_code == 200
    feed.until(lambda s: rows(s)["alpha"]["lastHeartbeatAt"] > registered_at)
    assert hub.get("/status/state").json()["totals"]["feeds"] == 1


def test_a_shutdown_ends_open_feeds_at_once(hub, publisher):
    publisher.register("alpha")
    feed = Feed(hub.url)
    feed.until(lambda s: "alpha" in rows(s))
    started = time.monotonic()
    assert hub.stop() == 0
    # gunicorn waits graceful_timeout (15 s) for open responses; the feed must not be one.
    assert time.monotonic() - started < 8
    assert feed.ended.wait(5)
