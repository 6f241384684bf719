"""A PostgreSQL outage never takes the hub down (docs/protocol.md, Faults the hub survives):
a real hub on a real PostgreSQL reached through a TCP proxy that is cut (every connection
reset, new ones refused) or goes silent (a black hole: bytes dropped, nothing reset)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import pathlib
import signal
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
import requests

from tests.support import postgres
from tests.support.chaos import ChaosProxy
from tests.support.hub import wait_until
from tests.support.procs import wait_status
from tests.support.publisher import TestPublisher
from tether.http.probes import CACHE_S

CUT, BLACKHOLE = "cut", "blackhole"


class ProxiedDatabase:
    """A fresh PostgreSQL database, reached through a ChaosProxy that can be cut or silenced
    and brought back on the same port."""

    def __init__(self) -> None:
        self.db = postgres.create()
        parts = urlsplit(self.db.url)
        self.server_port = parts.port or 5432
        self.proxy = ChaosProxy(self.server_port)
        self.url = urlunsplit(parts._replace(
            netloc=f"{parts.username or 'postgres'}@127.0.0.1:{self.proxy.port}"))

    def fail(self, how: str) -> None:
        if how == CUT:
            self.proxy.close()  # resets every connection; new ones are refused
        else:
            self.proxy.blackhole.set()

    def recover(self, how: str) -> None:
        if how == CUT:
            self.proxy = ChaosProxy(self.server_port, port=self.proxy.port)
        else:
            self.proxy.blackhole.clear()

    def close(self) -> None:
        self.proxy.close()
        self.db.drop()


@pytest.fixture
def proxied() -> Iterator[ProxiedDatabase]:
    made = ProxiedDatabase()
    yield made
    made.close()


def chat(url: str) -> requests.Response:
    return requests.post(f"{url}/api/v1/llms/llama/infer", timeout=30,
                         json={"messages": [{"role": "user", "content": "Hello"}]},
                         headers={"Connection": "close"})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", [CUT, BLACKHOLE])
def test_a_postgres_outage_leaves_the_hub_serving_and_every_write_converges(
        how, proxied, hub_factory, backend_factory, publish_factory):
    hub = hub_factory(database_url=proxied.url, gc_interval_s=0.5)
    backend = backend_factory()
    publish_factory([{"name": "llama", "model": "demo-model", "base_url": backend.base_url}],
                    hub_url=hub.url)
    wait_status(hub, "llama", "active")
    other = TestPublisher(hub.url)
    other.register("other")
    stream = other.open()
    wait_status(hub, "other", "active")
    assert chat(hub.url).status_code == 200

    proxied.fail(how)
    try:
        # Names already known are served, several at once (none waits on the database).
        with cf.ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(lambda _: chat(hub.url), range(3)))
        assert [r.status_code for r in answers] == [200] * 3, [r.text for r in answers]
        beat = other.heartbeat()
        assert beat.status_code == 200, beat.text  # kept, written later: never a 500
        # A stream lost meanwhile: its row's `inactive` is kept and written later.
        stream.close()
        refused = TestPublisher(hub.url).register("newcomer", expect=503)
        assert refused["error"]["code"] == "database_unavailable"
        # /healthz reuses its answer for CACHE_S (a flood of probes is not a flood of
        # queries): the outage shows within that, not necessarily at once.
        wait_until(lambda: hub.get("/healthz").status_code == 503, timeout=CACHE_S + 4)
        assert chat(hub.url).status_code == 200
        assert hub.proc is not None and hub.proc.poll() is None
    finally:
        proxied.recover(how)

    # Everything written meanwhile lands: the lost stream's row says inactive, the rest
    # is as it was, and registrations work again.
    wait_until(lambda: _status(hub, "other") == "inactive", timeout=15)
    assert _status(hub, "llama") == "active"
    TestPublisher(hub.url).register("newcomer")
    wait_until(lambda: hub.get("/healthz").status_code == 200, timeout=10)
    assert chat(hub.url).status_code == 200
    assert hub.proc.poll() is None
    assert "Traceback" not in hub.logs(), hub.logs()


def _status(hub, name: str) -> str | None:
    r = hub.get(f"/api/v1/llms/{name}")
    return r.json()["status"] if r.status_code == 200 else None


@pytest.mark.timeout(90)
def test_a_worker_replaced_during_an_outage_waits_for_the_database(proxied, hub_factory):
    """A worker that fails to boot makes gunicorn's master exit with it: a replacement that
    cannot open its database must wait for it instead, and then serve."""
    hub = hub_factory(database_url=proxied.url)
    TestPublisher(hub.url).register("kept")
    [worker] = wait_until(lambda: _children(hub.proc.pid), timeout=10)
    proxied.fail(CUT)
    try:
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: "trying again" in hub.logs(), timeout=20)
        assert hub.proc.poll() is None  # the master lives on
    finally:
        proxied.recover(CUT)
    wait_until(lambda: _status(hub, "kept") == "inactive", timeout=20)  # a new worker's start
    assert hub.proc.poll() is None
    TestPublisher(hub.url).register("kept")
    assert "Traceback" not in hub.logs(), hub.logs()


def _children(pid: int) -> list[int]:
    return [int(x) for x in
            pathlib.Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
