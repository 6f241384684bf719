"""While Redis does not answer, the hub logs each task's outage once, not every second: one
WARNING (no traceback) when a task first fails, naming the task, the URL and the error;
nothing while it keeps failing; one INFO line, with how long it was out, when it answers
again. A failure that is not Redis going away (a bug) logs its traceback, once per distinct
error (tether.cluster.redis_client.Outage)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time

import pytest
import redis

from tests.support.hub import wait_until
from tether.cluster import bus as bus_module
from tether.cluster.bus import Bus
from tether.cluster.redis_client import Outage

pytestmark = pytest.mark.timeout(120)

WARNED = re.compile(r"Redis at (\S+) does not answer \((\w+): .*\) to (.+?); ")
BACK = re.compile(r"Redis at \S+ answers (.+) again, after ([\d.]+) s$")
TICKS = ("the liveness renewal", "the router's tick (leases, peers' liveness, owners)")
HOLD_S = 4.0  # each outage lasts this long: several ticks of every periodic task


def _lines(hub) -> list[dict]:
    return [json.loads(line) for line in hub.logs().splitlines() if line.strip()]


def _outage(lines: list[dict]) -> tuple[dict[str, int], dict[str, list[float]]]:
    """Per task: how many warnings, and the durations its recovery lines gave."""
    warned: dict[str, int] = {}
    back: dict[str, list[float]] = {}
    for line in lines:
        if (found := WARNED.search(line["event"])) is not None:
            assert line["level"] == "warning", line
            warned[found[3]] = warned.get(found[3], 0) + 1
        elif (found := BACK.search(line["event"])) is not None:
            assert line["level"] == "info", line
            back.setdefault(found[1], []).append(float(found[2]))
    return warned, back


def test_each_task_warns_once_per_redis_outage_and_says_when_it_is_back(cluster,
                                                                        redis_server):
    # auth on: the revocations follower (a subscription of its own) runs too.
    hub = cluster(bus_url=redis_server.url, log_format="json", auth="on")
    for _ in range(2):  # the second outage is warned about again, once
        mark = len(_lines(hub))
        redis_server.stop()
        down = time.monotonic()
        wait_until(lambda mark=mark: set(TICKS) <= set(_outage(_lines(hub)[mark:])[0]),
                   timeout=10)
        # The outage's length is what is under test (silence while the ticks keep
        # failing), not an event to wait for; the recovery lines below prove its span.
        time.sleep(max(HOLD_S - (time.monotonic() - down), 0))
        redis_server.start()

        def recovered(mark: int = mark) -> bool:
            warned, back = _outage(_lines(hub)[mark:])
            return set(back) >= set(warned)

        wait_until(recovered, timeout=10)
        warned, back = _outage(_lines(hub)[mark:])
        assert set(warned) >= set(TICKS), warned
        assert all(count == 1 for count in warned.values()), warned
        assert set(back) == set(warned), (warned, back)
        assert all(len(each) == 1 for each in back.values()), back
        for task in TICKS:  # they failed for several ticks, and said so once
            assert back[task][0] >= HOLD_S - 1.5, back
    logs = hub.logs()
    assert "Traceback" not in logs
    lines = _lines(hub)
    assert not [line for line in lines if "exception" in line], logs
    assert not [line for line in lines if line["level"] in ("error", "critical")], logs
    warnings = [line["event"] for line in lines if WARNED.search(line["event"])]
    assert all(f"redis://127.0.0.1:{redis_server.port}/0" in w and "ConnectionError" in w
               for w in warnings), warnings


def test_a_periodic_task_that_fails_for_another_reason_logs_each_traceback_once(
        redis_db, caplog, monkeypatch):
    monkeypatch.setattr(bus_module, "TICK_S", 0.05)  # many ticks in little time
    calls = 0
    done = threading.Event()

    def buggy() -> None:
        nonlocal calls
        calls += 1
        if calls <= 4:
            raise RuntimeError(f"bug number {calls}")  # one error, whatever its message
        if calls <= 8:
            raise KeyError("another")
        done.set()

    bus = Bus(redis_db.url, lambda payload: None)
    bus.every_tick(buggy, "a buggy task")
    with caplog.at_level(logging.INFO, logger="tether.bus"):
        bus.start()
        try:
            assert done.wait(30)
        finally:
            bus.stop()
    mine = [r for r in caplog.records if "a buggy task" in r.getMessage()]
    assert [(r.levelname, r.exc_info[0] if r.exc_info else None) for r in mine] == [
        ("ERROR", RuntimeError), ("ERROR", KeyError)]
    assert "bug number 1" in mine[0].getMessage()


def _raised(exc: Exception) -> Exception:
    try:
        raise exc
    except Exception as caught:  # noqa: BLE001 - to give it a traceback
        return caught


def test_outage_tells_redis_going_away_from_a_bug(caplog):
    log = logging.getLogger("tether.test_outage")
    outage = Outage(log, "bus", "redis://:secret@127.0.0.1:1/2", "the liveness renewal",
                    "retrying every 1 s")
    with caplog.at_level(logging.INFO, logger="tether.test_outage"):
        for exc in (redis.ConnectionError("refused"), redis.TimeoutError("slow"),
                    ConnectionResetError("reset")):
            outage.failed(_raised(exc))
        assert outage.down
        outage.answered()
        outage.answered()  # not down: nothing more
        outage.failed(_raised(redis.ResponseError("NOSCRIPT no such script")))
    messages = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert messages[0] == (
        "WARNING", "bus: Redis at redis://:***@127.0.0.1:1/2 does not answer "
        "(ConnectionError: refused) to the liveness renewal; retrying every 1 s", False)
    assert messages[1][0] == "INFO" and not messages[1][2]
    assert BACK.search(messages[1][1])[1] == "the liveness renewal"
    assert messages[2][:1] == ("ERROR",) and messages[2][2]  # Redis answered with an error
    assert len(messages) == 3


def test_outage_repeats_a_bugs_traceback_only_after_a_while(caplog, monkeypatch):
    log = logging.getLogger("tether.test_outage")
    outage = Outage(log, "bus", "redis://127.0.0.1:1/0", "a task", "retrying every 1 s")
    with caplog.at_level(logging.INFO, logger="tether.test_outage"):
        for _ in range(3):
            outage.failed(_raised(ValueError("x")))
        monkeypatch.setattr(Outage, "REPEAT_S", 0.0)
        outage.failed(_raised(ValueError("x")))
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert messages[1].endswith("3 times since its traceback was last logged"), messages
