"""Idle publisher sessions held open by one process, for `bench.run cluster_sessions`.

One process can hold only as many sockets as its file limit (hard limit 20,000 on this
machine's kind, not raisable without privileges), so the bench splits its sessions over
several of these. Each one, given a hub URL and a range of session numbers:

1. registers each session (`s<i>`, one Llm `m<i>`) and opens its task stream, `concurrency`
   at a time, over keep-alive connections, then prints one JSON line (how long it took, the
   failures). It stops opening after `--deadline-s`, or once no open has succeeded for
   `--stall-s` (a hub that refuses everything), and says so: the figures are then those of
   the sessions it did open;
2. on a line `beat` on stdin sends one heartbeat per session (keep-alive connections, as a
   publisher does) and prints one JSON line (answered, statuses, latencies);
3. on end of input closes every stream and exits.

`python -m bench.session_client --hub URL --first 0 --count 10000`
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after monkey-patching, as in every gevent program
import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.queue  # noqa: E402
from gevent.fileobject import FileObjectThread  # noqa: E402

from bench.client import Conn, post_json  # noqa: E402
from bench.processes import raise_fd_limit  # noqa: E402


class Client:
    def __init__(self, hub: str, first: int, count: int, concurrency: int,
                 deadline_s: float = float("inf"), stall_s: float = float("inf")) -> None:
        self.hub = hub
        self.ids = range(first, first + count)
        self.concurrency = concurrency
        self.deadline_s, self.stall_s = deadline_s, stall_s
        self.stopped: str | None = None  # why opening stopped early
        self.opened_ids: list[int] = []
        self.streams: list[Conn] = []
        # Keep-alive connections for registers and heartbeats, one per greenlet at a time.
        self.conns: gevent.queue.Queue = gevent.queue.Queue()
        for _ in range(concurrency):
            self.conns.put(Conn(hub))

    def call(self, path: str, body: dict[str, Any]) -> int:
        """POST on a pooled keep-alive connection; once more on a fresh one if the hub had
        closed it while idle (both calls are idempotent: same session, same heartbeat)."""
        conn = self.conns.get()
        try:
            for attempt in (1, 2):
                try:
                    return post_json(conn, path, body)[0]
                except (ConnectionError, OSError):
                    conn.close()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")
        finally:
            self.conns.put(conn)

    def open_one(self, i: int) -> str | None:
        status = self.call("/api/v1/llms/_provider-register", {
            "providerSessionId": f"s{i}",
            "providers": [{"name": f"m{i}", "type": "openai", "model": "m"}]})
        if status != 200:
            return f"register s{i}: {status}"
        stream = Conn(self.hub)
        stream.send("GET", "/api/v1/llms/_provider-stream", None,
                    f"X-Provider-Session-Id: s{i}\r\n")
        status = stream.head()[0]
        if status != 200:
            stream.close()
            return f"stream s{i}: {status}"
        self.streams.append(stream)
        self.opened_ids.append(i)
        self.last_open = time.monotonic()
        return None

    def _give_up(self) -> bool:
        now = time.monotonic()
        if now - self.started > self.deadline_s:
            self.stopped = f"deadline: {self.deadline_s:.0f} s"
        elif now - self.last_open > self.stall_s:
            self.stopped = f"stalled: no session opened for {self.stall_s:.0f} s"
        return self.stopped is not None

    def run_all(self, fn: Any, may_give_up: bool = False,
                ids: Any = None) -> list[Any]:
        todo = iter(self.ids if ids is None else ids)
        out: list[Any] = []

        def worker() -> None:
            for i in todo:
                if may_give_up and self._give_up():
                    return
                try:
                    out.append(fn(i))
                except (ConnectionError, OSError) as exc:
                    out.append(exc)

        gevent.joinall([gevent.spawn(worker) for _ in range(self.concurrency)],
                       raise_error=True)
        return out

    def open_all(self) -> dict[str, Any]:
        self.started = self.last_open = time.monotonic()
        failures = [str(x) for x in self.run_all(self.open_one, may_give_up=True)
                    if x is not None]
        return {"opened": len(self.streams), "seconds": round(time.monotonic() - self.started, 2),
                "failures": failures[:20], "failed": len(failures), "stopped": self.stopped}

    def beat_all(self) -> dict[str, Any]:
        def beat(i: int) -> tuple[int, float]:
            started = time.perf_counter()
            status = self.call("/api/v1/llms/_provider-heartbeat", {"providerSessionId": f"s{i}"})
            return status, time.perf_counter() - started

        started = time.perf_counter()
        results = self.run_all(beat, ids=self.opened_ids)  # the sessions with a stream
        seconds = time.perf_counter() - started
        statuses = Counter(r[0] if isinstance(r, tuple) else type(r).__name__ for r in results)
        latencies = sorted(r[1] for r in results if isinstance(r, tuple))
        return {"sent": len(results), "ok": statuses.get(200, 0),
                "statuses": {str(k): v for k, v in statuses.items()},
                "seconds": round(seconds, 2), "latencies_ms": [round(x * 1000, 3)
                                                               for x in latencies]}

    def close(self) -> None:
        for conn in self.streams:
            conn.close()
        while not self.conns.empty():
            self.conns.get().close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hub", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=25)
    parser.add_argument("--deadline-s", type=float, default=float("inf"))
    parser.add_argument("--stall-s", type=float, default=float("inf"))
    args = parser.parse_args()
    raise_fd_limit()
    # A hub that never answers must not hang the bench: every call fails after a minute
    # (an idle stream is not read after its head, so its socket never waits on this).
    socket.setdefaulttimeout(60)
    client = Client(args.hub, args.first, args.count, args.concurrency, args.deadline_s,
                    args.stall_s)
    stdin = FileObjectThread(sys.stdin)  # read without blocking the streams' greenlets
    print(json.dumps(client.open_all()), flush=True)
    for line in stdin:
        if line.strip() == "beat":
            print(json.dumps(client.beat_all()), flush=True)
    client.close()


if __name__ == "__main__":
    main()
