"""A dead process loses only what it held (docs/protocol.md, Several hub processes): `kill -9`
of one of two hub processes on one PostgreSQL and one Redis."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.test_routing import in_background, online, result_of
from tests.support.hub import Hub, wait_until
from tests.support.publisher import TestPublisher

pytestmark = pytest.mark.timeout(120)


def kill_9(hub: Hub) -> None:
    """`kill -9` of the worker that serves (gunicorn's master alone would let its worker
    drain gracefully), then of the master."""
    assert hub.proc is not None
    pid = hub.proc.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert children, "tether serve has no worker process"
    for child in children:
        os.kill(int(child), signal.SIGKILL)
    hub.stop(signal.SIGKILL)


def test_kill_9_loses_only_its_own_streams_and_its_names_move(
        cluster: Callable[..., Hub]) -> None:
    a, b = cluster(), cluster()
    pa, sa = online(a, "on-a")
    pb, sb = online(b, "on-b")
    # "owned-by-a": its publisher is homed on b, but a took the name first (an infer on a
    # found no owner), so b's member is served through a.
    pc = TestPublisher(b.url)
    pc.register("owned-by-a")
    assert a.infer("owned-by-a").status_code == 503  # no stream yet; a owns the name now
    sc = pc.open()
    call = in_background(lambda: b.infer("owned-by-a", "via a"))
    task = sc.next_task("infer", timeout=10)
    assert pc.result(task["taskId"], {"status": 200, "body": "ok"}).status_code == 200
    assert result_of(call).json() == "ok"

    # A request from b waits on a's publisher when a dies.
    waiting = in_background(lambda: b.infer("on-a", "lost"))
    sa.next_task("infer", timeout=10)
    kill_9(a)
    killed = time.monotonic()
    answer = result_of(waiting, timeout=30)
    assert answer.status_code == 503, answer.text
    assert answer.json()["error"]["code"] == "publisher_disconnected"
    assert time.monotonic() - killed < 10  # the liveness TTL, not infer_timeout_s
    # a's rows go inactive, written by b; b's own stream lives on.
    wait_until(lambda: b.llm("on-a")["status"] == "inactive", timeout=10)
    assert b.llm("on-b")["status"] == "active"
    call = in_background(lambda: b.infer("on-b", "still here"))
    task = sb.next_task("infer", timeout=10)
    pb.result(task["taskId"], {"status": 200, "body": "b"})
    assert result_of(call).json() == "b"
    # The name a owned moves to b within a few seconds; its member (homed on b) serves.

    def served() -> bool:
        call = in_background(lambda: b.infer("owned-by-a", "moved"))
        try:
            task = sc.next_task("infer", timeout=1)
        except Exception:  # noqa: BLE001 - not moved yet: the request gets its 503
            result_of(call)
            return False
        pc.result(task["taskId"], {"status": 200, "body": "moved"})
        return result_of(call).json() == "moved"
    wait_until(served, timeout=15, interval=0.2)
    # a's publisher reconnects to b and takes its name back.
    pa2 = TestPublisher(b.url, pa.session_id)
    pa2.register("on-a")
    sa2 = pa2.open()
    call = in_background(lambda: b.infer("on-a", "back"))
    task = sa2.next_task("infer", timeout=10)
    pa2.result(task["taskId"], {"status": 200, "body": "back"})
    assert result_of(call).json() == "back"
    for pub in (pa, pb, pc, pa2):
        pub.close()
