"""A test publisher that drives the wire protocol by hand (no backend behind it)."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import itertools
import queue
import socket
import threading
from typing import Any

import requests
import urllib3

from tests.support.hub import wait_until
from tether.common import sse
from tether.publisher.hub_client import body_chunks, socket_of

CLOSED = "<stream closed>"
CLOSE = {"Connection": "close"}  # no idle keep-alive left to hold up the hub's SIGTERM
_canaries = itertools.count(1)


class Stream:
    """An open `_provider-stream`, read on a thread into a queue of events and comments."""

    def __init__(self, url: str, session_id: str, last_event_id: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        # Connection: close, so the ended stream leaves no idle keep-alive to hold up the
        # hub's SIGTERM (gunicorn honours it on requests, and ignores it on responses).
        headers = {"X-Provider-Session-Id": session_id, "Connection": "close", **(headers or {})}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        self._http = urllib3.PoolManager()
        self.response = self._http.request(
            "GET", f"{url}/api/v1/llms/_provider-stream", headers=headers,
            preload_content=False, timeout=urllib3.Timeout(connect=5, read=30), retries=False,
        )
        self.status = self.response.status
        self.items: queue.Queue = queue.Queue()
        self.comments: list[str] = []
        self.retry: list[str] = []
        if self.status == 200:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            lines = sse.iter_lines(body_chunks(self.response))
            for item in sse.parse(_watch_retry(lines, self.retry)):
                if isinstance(item, str):
                    self.comments.append(item)
                else:
                    self.items.put(item)
        except Exception:  # noqa: BLE001 - the connection was cut: that is the signal
            pass
        self.items.put(CLOSED)

    def next(self, timeout: float = 5.0) -> Any:
        return self.items.get(timeout=timeout)

    def next_task(self, kind: str | None = None, timeout: float = 5.0) -> dict:
        while True:
            item = self.next(timeout)
            if item == CLOSED:
                raise AssertionError("the stream closed while waiting for a task")
            if item.event == "task" and (kind is None or item.json()["kind"] == kind):
                return item.json()

    def wait_closed(self, timeout: float = 5.0) -> list[Any]:
        """Everything up to the end of the stream; fails if it does not end in time."""
        seen = []
        while True:
            item = self.next(timeout)
            if item == CLOSED:
                return seen
            seen.append(item)

    def received(self) -> list[Any]:
        """What arrived and was not read yet, without waiting: after `TestPublisher.sent`,
        or to poll several streams at once."""
        out = []
        while True:
            try:
                out.append(self.items.get_nowait())
            except queue.Empty:
                return out

    def close(self) -> None:
        # Shut the socket itself: the hub must notice from the read side.
        sock = socket_of(self.response)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.response.release_conn()
        self._http.clear()


def next_task_of(streams: dict[Any, Stream], kind: str | None = None,
                 timeout: float = 5.0) -> tuple[Any, dict]:
    """Which of `streams` (by key) the hub gave the next task to, and the task: exactly one
    gets one. Tasks of another `kind` are passed over."""
    found: list[tuple[Any, dict]] = []

    def polled() -> list[tuple[Any, dict]]:
        for key, stream in streams.items():
            found.extend((key, item.json()) for item in stream.received()
                         if getattr(item, "event", "") == "task"
                         and kind in (None, item.json()["kind"]))
        return found

    wait_until(polled, timeout, interval=0.01)
    assert len(found) == 1, found
    return found[0]


def _watch_retry(lines: Any, retry: list[str]) -> Any:
    for line in lines:
        if line.startswith("retry:"):
            retry.append(line.split(":", 1)[1].strip())
        yield line


class TestPublisher:
    __test__ = False  # not a test class for pytest

    def __init__(self, hub_url: str, session_id: str | None = None) -> None:
        self.url = hub_url
        self.session_id = session_id
        self.streams: list[Stream] = []
        self.canary: str | None = None  # an Llm of this session that `sent` dispatches to

    def register(self, *providers: dict | str, expect: int = 200, canary: bool = False,
                 **spec: Any) -> Any:
        """`canary=True` adds an active Llm for `sent`; every later registration keeps it."""
        specs = [
            {"name": p, "type": "openai", "model": "m", **spec} if isinstance(p, str) else p
            for p in providers
        ]
        if canary and self.canary is None:
            self.canary = f"canary-{next(_canaries)}"
        if self.canary is not None:
            specs.append({"name": self.canary, "type": "openai", "model": "m"})
        r = requests.post(
            f"{self.url}/api/v1/llms/_provider-register",
            json={"providerSessionId": self.session_id, "providers": specs}, timeout=10,
            headers=CLOSE,
        )
        assert r.status_code == expect, r.text
        if r.status_code == 200:
            self.session_id = r.json()["providerSessionId"]
        return r.json()

    def open(self, last_event_id: str | None = None) -> Stream:
        assert self.session_id is not None
        stream = Stream(self.url, self.session_id, last_event_id)
        assert stream.status == 200, stream.response.data
        hello = stream.next()
        assert hello.event == "hello", hello
        self.streams.append(stream)
        return stream

    def heartbeat(self) -> requests.Response:
        return requests.post(
            f"{self.url}/api/v1/llms/_provider-heartbeat",
            json={"providerSessionId": self.session_id}, timeout=10, headers=CLOSE,
        )

    def status(self, **statuses: str) -> requests.Response:
        return requests.post(
            f"{self.url}/api/v1/llms/_provider-status",
            json={
                "providerSessionId": self.session_id,
                "llms": [{"name": n, "status": s} for n, s in statuses.items()],
            },
            timeout=10, headers=CLOSE,
        )

    def result(self, task_id: str, body: Any, session: str | None = None) -> requests.Response:
        headers = {**CLOSE, "X-Provider-Session-Id": session} if session else CLOSE
        return requests.post(
            f"{self.url}/api/v1/llms/_provider-task/{task_id}/result",
            json=body, headers=headers, timeout=10,
        )

    def sent(self, stream: Stream) -> list[dict]:
        """Every task the hub had sent on `stream` by now that the test has not read: to
        assert that one did not come without waiting a window in which it might be late.

        Each LlmActor of the session answers the heartbeat only after the messages it got
        before, and by then has passed whatever it dispatched to the session's actor. The
        canary's task goes that same way after them, and the session writes its stream in
        order: the tasks before the canary's are all there were. (The heartbeat counts as
        one: it bumps lastHeartbeatAt and revives the session's inactive rows.)"""
        assert self.canary is not None, "register(..., canary=True) first"
        beat = self.heartbeat()
        assert beat.status_code == 200, beat.text
        with cf.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(requests.post, f"{self.url}/api/v1/llms/{self.canary}/infer",
                                 json={"messages": [{"role": "user", "content": "canary"}]},
                                 timeout=10, headers=CLOSE)
            tasks = []
            while (task := stream.next_task()).get("llmName") != self.canary:
                tasks.append(task)
            self.result(task["taskId"], {"status": 200, "body": {"canary": True}})
            assert answer.result().json() == {"canary": True}
        return tasks

    def close(self) -> None:
        for stream in self.streams:
            stream.close()
