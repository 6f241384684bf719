"""The sweep, restarts and shutdown (docs/protocol.md, Lifecycle)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.conftest import DATABASES
from tests.support.hub import Hub, wait_until


@pytest.mark.parametrize("database", DATABASES)
def test_sweep_marks_stale_rows_inactive_then_deletes_them(hub_factory, publisher_factory,
                                                           database):
    hub = hub_factory(heartbeat_timeout_s=0.6, gc_interval_s=0.2, inactive_retention_s=1.0,
                      database=database)
    quiet = publisher_factory(url=hub.url)
    quiet.register("quiet")
    alive = publisher_factory(url=hub.url)
    alive.register("alive")
    alive.open()
    wait_until(lambda: hub.llm("quiet")["status"] == "inactive", timeout=3)
    assert hub.llm("quiet")["inactiveSince"] is not None
    # A heartbeating publisher keeps its row through the sweeps that retire the quiet one.
    deadline = time.monotonic() + 4
    while hub.get("/api/v1/llms/quiet").status_code != 404:
        assert time.monotonic() < deadline, "the quiet row was never retired"
        assert alive.heartbeat().status_code == 200
        assert hub.llm("alive")["status"] == "active"
        time.sleep(0.15)  # a publisher's heartbeat interval, well within heartbeat_timeout_s
    assert quiet.heartbeat().status_code == 404  # its session owns nothing any more
    assert [r["name"] for r in hub.get("/api/v1/llms").json()["llms"]] == ["alive"]


def test_sweep_leaves_hibernating_rows_alone_while_heartbeats_arrive(hub_factory,
                                                                    publisher_factory):
    hub = hub_factory(heartbeat_timeout_s=0.5, gc_interval_s=0.1)
    pub = publisher_factory(url=hub.url)
    pub.register({"name": "sleepy", "type": "o", "model": "m", "initialStatus": "hibernating"})
    for _ in range(10):
        pub.heartbeat()
        time.sleep(0.1)
    assert hub.llm("sleepy")["status"] == "hibernating"
    wait_until(lambda: hub.llm("sleepy")["status"] == "inactive", timeout=3)


@pytest.mark.parametrize("database", DATABASES)
def test_rows_survive_a_restart_inactive_until_their_publisher_comes_back(
    hub_factory, publisher_factory, database
):
    hub = hub_factory(database=database)
    pub = publisher_factory("sticky-session", url=hub.url)
    row = pub.register("m1")["llms"][0]
    pub.open()
    hub.restart()
    after = hub.llm("m1")
    assert after["id"] == row["id"] and after["status"] == "inactive"
    assert after["createdAt"] == row["createdAt"]
    again = pub.register("m1")["llms"][0]
    assert again["id"] == row["id"] and again["status"] == "active"
    stream = pub.open()
    import concurrent.futures as cf

    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(hub.infer, "m1")
        task = stream.next_task("infer")
        pub.result(task["taskId"], {"status": 200, "body": {"after": "restart"}})
        assert pending.result().json() == {"after": "restart"}


def test_sigterm_ends_publisher_streams_with_retry_and_exits_cleanly(tmp_path, publisher_factory):
    hub = Hub(tmp_path).start()
    pub = publisher_factory(url=hub.url)
    pub.register("m1")
    stream = pub.open()
    started = time.monotonic()
    assert hub.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    stream.wait_closed()
    assert stream.retry == ["1000"]


def test_a_config_file_and_the_environment_set_the_hub(tmp_path, publisher_factory):
    conf = tmp_path / "hub.toml"
    conf.write_text('[hub]\nwake_timeout_s = 0.4\nkeepalive_s = 30\n')
    hub = Hub(tmp_path, config=str(conf), keepalive_s=0.2).start()  # TETHER_CONFIG
    try:
        pub = publisher_factory(url=hub.url)
        pub.register({"name": "s", "type": "o", "model": "m", "initialStatus": "hibernating"})
        stream = pub.open()
        wait_until(lambda: "keepalive" in stream.comments, timeout=3)  # env beat the file
        r = hub.infer("s")
        assert r.status_code == 504 and r.json()["error"]["code"] == "wake_timeout"
    finally:
        hub.stop()


def test_normal_events_log_one_line_each_without_a_traceback(hub, publisher_factory):
    """A 409 on register, a client leaving mid-stream and the late result that follows are
    everyday events: one INFO line for the 409 and one for the client that left, nothing
    at that level for the late result (DEBUG), never a traceback."""
    import json
    import socket

    owner = publisher_factory()
    owner.register("m1")
    stream = owner.open()
    rival = publisher_factory()
    rival.register("m1", expect=409)

    body = json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": True})
    client = socket.create_connection(("127.0.0.1", hub.port), timeout=10)
    client.sendall(f"POST /api/v1/llms/m1/infer HTTP/1.1\r\nHost: hub\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                   f"{body}".encode())
    task = stream.next_task("infer")
    owner.result(task["taskId"], {"chunk": {"data": "{}"}})
    seen = b""
    while b"data: {}" not in seen:
        seen += client.recv(4096)
    client.close()  # the client leaves mid-stream
    cancel = stream.next_task("cancel")
    assert cancel["taskId"] == task["taskId"]
    late = owner.result(task["taskId"], {"chunk": {"data": "{}"}})
    assert late.status_code == 404

    def lines(needle: str) -> list[str]:
        return [line for line in hub.logs().splitlines() if needle in line]

    # The late result's 404 is a routine answer: DEBUG, so not at the default level.
    wait_until(lambda: lines("499 client_gone"))
    assert "Traceback" not in hub.logs()
    assert "task_not_found" not in hub.logs()
    for needle in ("409 llm_owned_by_other_session", "499 client_gone"):
        assert len(lines(needle)) == 1, (needle, hub.logs())
        assert " INFO " in lines(needle)[0]
