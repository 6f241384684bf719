"""A live process that stalls (a long full garbage collection of a worker holding many
sessions stops it as SIGSTOP does) is not taken for dead while the stall is shorter than
`liveness_ttl_s`; a longer one is, as a kill would be."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cluster.test_routing import in_background, online, result_of
from tests.support.hub import Hub, wait_until

pytestmark = pytest.mark.timeout(120)

STALL_S = 7.0  # longer than the default liveness_ttl_s (5 s)


def _workers(hub: Hub) -> list[int]:
    assert hub.proc is not None
    pid = hub.proc.pid
    return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _stall(hub: Hub, seconds: float) -> None:
    """The worker stops for `seconds` (the stall under test lasts that long), then goes on."""
    workers = _workers(hub)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)


def test_a_stall_shorter_than_the_liveness_ttl_loses_nothing(
        cluster: Callable[..., Hub]) -> None:
    a, b = cluster(liveness_ttl_s=15), cluster(liveness_ttl_s=15)
    pa, sa = online(a, "on-a")
    wait_until(lambda: b.llm("on-a")["status"] == "active", timeout=10)
    workers = _workers(a)
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(STALL_S)
        row = b.llm("on-a")  # b, asked during the stall: a is still alive to it
        assert (row["status"], row["inactiveSince"]) == ("active", None), row
    finally:
        for pid in workers:
            os.kill(pid, signal.SIGCONT)
    call = in_background(lambda: b.infer("on-a", "after the stall"))
    task = sa.next_task("infer", timeout=10)  # a's stream lived through it
    assert task["request"]["messages"][0]["content"] == "after the stall"
    assert pa.result(task["taskId"], {"status": 200, "body": "a"}).status_code == 200
    assert result_of(call).json() == "a"
    assert b.llm("on-a")["status"] == "active"


def test_a_stall_longer_than_the_liveness_ttl_is_a_death(cluster: Callable[..., Hub]) -> None:
    a, b = cluster(), cluster()  # liveness_ttl_s = 5
    online(a, "on-a")
    wait_until(lambda: b.llm("on-a")["status"] == "active", timeout=10)
    stall = in_background(lambda: _stall(a, STALL_S))
    wait_until(lambda: b.llm("on-a")["status"] == "inactive", timeout=STALL_S + 5)
    result_of(stall)
