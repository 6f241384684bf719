"""`tether serve --workers 2`: two gevent workers on one port, each a process of the cluster
(its own actor system on the bus). Whichever worker the kernel hands a connection to, the
request reaches the publisher, whose stream is held by one of them; /metrics counts both."""

from __future__ import annotations

import http.client
import json
import threading
import time

import pytest

from tests.support.hub import wait_until
from tests.support.procfs import children, holder
from tests.support.publisher import TestPublisher

pytestmark = pytest.mark.timeout(90)


class Call:
    """A request on a connection of its own, answered on a thread; its local port is
    known before it is sent (to find the worker that holds it)."""

    def __init__(self, port: int, body: dict) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.connect()
        self.port = self.conn.sock.getsockname()[1]
        self.conn.request("POST", "/api/v1/llms/m1/infer", json.dumps(body),
                          {"Content-Type": "application/json"})
        self.answer: tuple[int, dict] | None = None
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        r = self.conn.getresponse()
        self.answer = (r.status, json.loads(r.read()))
        self.conn.close()


def test_workers_2_serve_requests_through_every_worker(cluster, redis_db):
    hub = cluster(workers=2)
    workers = wait_until(lambda: len(w := children(hub.proc.pid)) == 2 and w, timeout=20)
    with redis_db.client() as r:  # both joined the bus, each as a process of its own
        wait_until(lambda: len(r.keys("tether:*:alive:*")) == 2, timeout=20)
    pub = TestPublisher(hub.url)
    pub.register("m1")
    stream = pub.open()
    calls: list[Call] = []
    served_by: dict[int, int] = {}
    deadline = time.monotonic() + 30
    while len(set(served_by.values())) < 2:  # until each worker holds a client's request
        assert time.monotonic() < deadline, f"every request went to one worker: {served_by}"
        call = Call(hub.port, {"messages": [{"role": "user", "content": str(len(calls))}]})
        calls.append(call)
        served_by[call.port] = wait_until(lambda c=call: holder(workers, hub.port, c.port))
        task = stream.next_task("infer", timeout=10)
        n = task["request"]["messages"][0]["content"]
        r = TestPublisher(hub.url).result(task["taskId"], {"status": 200, "body": {"n": n}})
        assert r.status_code == 200, r.text
        call.thread.join(10)
        assert call.answer == (200, {"n": n}), call.answer
    assert set(served_by.values()) == set(workers)
    # /metrics is the host's: one scrape counts the requests both workers answered.
    metrics = hub.get("/metrics").text
    answered = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith('tether_requests_total{') and 'llm="m1"' in line
                   and 'code="200"' in line)
    assert answered == len(calls)
    # Gauges are summed over the live workers: one stream is open on the host, on one of them.
    wait_until(lambda: "tether_streams_open 1.0" in hub.get("/metrics").text, timeout=10)
    pub.close()
    wait_until(lambda: "tether_streams_open 0.0" in hub.get("/metrics").text, timeout=10)


def test_metrics_directories_of_killed_hubs_are_removed_by_the_next_one(tmp_path, monkeypatch):
    """SIGKILL skips `tether serve`'s cleanup; the next `tether serve --workers` removes the
    directories whose hub is gone, and only those."""
    import os
    import subprocess
    import sys
    import tempfile

    from tether.observability import multiproc_metrics

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.delenv(multiproc_metrics.ENV, raising=False)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f"{multiproc_metrics.PREFIX}{gone}-x"
    live = tmp_path / f"{multiproc_metrics.PREFIX}{os.getppid()}-y"
    for path in (stale, live):
        path.mkdir()
    # As in `tether serve`, before anything imported prometheus_client (put back after).
    monkeypatch.delitem(sys.modules, "prometheus_client", raising=False)
    with multiproc_metrics.directory(2):
        made = os.environ[multiproc_metrics.ENV]
        assert os.path.isdir(made)
    assert not stale.exists() and live.exists() and not os.path.exists(made)
