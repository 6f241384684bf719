"""/metrics from prometheus_client: after a scripted sequence against a real hub, every value
scraped is exactly what happened (docs/protocol.md, Operations)."""

from __future__ import annotations

import concurrent.futures as cf
import time

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.support.hub import wait_until
from tether.actors.restarts import MAX_RESTARTS
from tether.common import sse

INFER = "/api/v1/llms/{name}/infer"
CHAT = "chat/completions"


def scrape(hub) -> dict[tuple[str, frozenset], float]:
    r = hub.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """A sample's value; a series never touched is absent, which reads as 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def series(samples: dict, name: str) -> dict[frozenset, float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def test_scraped_values_are_exactly_what_happened(hub, publisher):
    publisher.register("alpha")
    publisher.register({"name": "sleepy", "type": "openai", "model": "m",
                        "initialStatus": "hibernating"})
    stream = publisher.open()
    before = scrape(hub)
    assert value(before, "tether_publisher_sessions") == 1
    assert value(before, "tether_streams_open") == 1
    assert value(before, "tether_llms", kind="virtual", status="active") == 1
    assert value(before, "tether_llms", kind="virtual", status="hibernating") == 1
    assert series(before, "tether_requests_total") == {}

    with cf.ThreadPoolExecutor(2) as pool:
        # Two plain infers.
        for _ in range(2):
            pending = pool.submit(hub.infer, "alpha")
            task = stream.next_task("infer")
            publisher.result(task["taskId"], {"status": 200, "body": {"ok": True}})
            assert pending.result().status_code == 200

        # A wake: while it runs the Llm shows as waking with one request queued.
        pending = pool.submit(hub.infer, "sleepy")
        wake = stream.next_task("wake")
        during = wait_until(lambda: (s := scrape(hub)) and value(
            s, "tether_queued", llm="sleepy") == 1 and s)
        assert value(during, "tether_llms", kind="virtual", status="waking") == 1
        assert value(during, "tether_wakes_total", llm="sleepy", outcome="started") == 1
        time.sleep(0.3)  # a wake that visibly takes time: the queue wait must include it
        publisher.result(wake["taskId"], {"status": 200, "body": None})
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"status": 200, "body": {"ok": True}})
        assert pending.result().status_code == 200

        # A failure reported by the publisher (502 publisher_error by default).
        pending = pool.submit(hub.infer, "alpha")
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"error": {"message": "backend down"}})
        assert pending.result().status_code == 502

        # A cancel: a streaming client leaves after its first chunk.
        body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
        pending = pool.submit(requests.post, hub.url + INFER.format(name="alpha"), json=body,
                              stream=True, timeout=20, headers={"Connection": "close"})
        task = stream.next_task("infer")
        chunk = sse.dumps({"choices": [{"delta": {"content": "w"}}]})
        publisher.result(task["taskId"], {"chunk": {"data": chunk}})
        response = pending.result()
        assert response.status_code == 200
        next(response.iter_content(chunk_size=None))
        response.close()
        cancel = stream.next_task("cancel", timeout=10)
        assert cancel["taskId"] == task["taskId"]

    after = wait_until(lambda: (s := scrape(hub)) and value(
        s, "tether_requests_total", llm="alpha", endpoint=CHAT, code="499") == 1 and s)
    assert series(after, "tether_requests_total") == {
        frozenset({"llm": "alpha", "endpoint": CHAT, "code": "200"}.items()): 2,
        frozenset({"llm": "sleepy", "endpoint": CHAT, "code": "200"}.items()): 1,
        frozenset({"llm": "alpha", "endpoint": CHAT, "code": "502"}.items()): 1,
        frozenset({"llm": "alpha", "endpoint": CHAT, "code": "499"}.items()): 1,
    }
    assert series(after, "tether_request_errors_total") == {
        frozenset({"llm": "alpha", "code": "publisher_error"}.items()): 1}
    assert value(after, "tether_request_seconds_count", llm="alpha") == 4
    assert value(after, "tether_request_seconds_count", llm="sleepy") == 1
    assert value(after, "tether_queue_wait_seconds_count", llm="alpha") == 4
    assert value(after, "tether_queue_wait_seconds_count", llm="sleepy") == 1
    assert value(after, "tether_queue_wait_seconds_sum", llm="sleepy") >= 0.3
    assert value(after, "tether_first_chunk_seconds_count", llm="alpha") == 1
    assert value(after, "tether_first_chunk_seconds_count", llm="sleepy") == 0

    assert series(after, "tether_wakes_total") == {
        frozenset({"llm": "sleepy", "outcome": "started"}.items()): 1,
        frozenset({"llm": "sleepy", "outcome": "succeeded"}.items()): 1,
    }
    assert value(after, "tether_wake_seconds_count", llm="sleepy", outcome="succeeded") == 1
    assert value(after, "tether_wake_seconds_sum", llm="sleepy", outcome="succeeded") >= 0.3
    assert series(after, "tether_tasks_cancelled_total") == {
        frozenset({"llm": "alpha", "reason": "client_gone"}.items()): 1}
    assert series(after, "tether_tasks_timed_out_total") == {}
    assert series(after, "tether_actor_restarts_total") == {}

    for llm in ("alpha", "sleepy"):
        assert value(after, "tether_in_flight", llm=llm) == 0
        assert value(after, "tether_queued", llm=llm) == 0
    assert value(after, "tether_llms", kind="virtual", status="active") == 2
    assert value(after, "tether_publisher_sessions") == 1
    assert value(after, "tether_streams_open") == 1
    route = "/api/v1/llms/{name}/infer"
    assert value(after, "tether_http_responses_total", route=route, method="POST",
                 status="200") == 4  # the streamed one's head was a 200
    assert value(after, "tether_http_responses_total", route=route, method="POST",
                 status="502") == 1

    publisher.close()
    gone = wait_until(lambda: (s := scrape(hub)) and value(s, "tether_streams_open") == 0
                      and s)
    assert value(gone, "tether_llms", kind="virtual", status="inactive") == 2


def test_labels_never_hold_task_ids_or_client_text(hub, publisher):
    publisher.register("alpha")
    stream = publisher.open()
    canary = "canary-7f3e9b"
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(hub.infer, "alpha", canary)
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"status": 200, "body": {"ok": canary}})
        assert pending.result().status_code == 200
    assert hub.infer("no-such-llm", canary).status_code == 404
    text = hub.get("/metrics").text
    assert canary not in text and task["taskId"] not in text and "no-such-llm" not in text
    assert publisher.session_id not in text


def test_actor_restarts_are_counted_and_a_child_left_down_shows_inactive(hub_factory,
                                                                         publisher_factory):
    hub = hub_factory(fault_injection=1)
    publisher = publisher_factory(url=hub.url)
    publisher.register("alpha")
    publisher.open()

    def restarts(outcome: str, kind: str = "llm") -> float:
        return value(scrape(hub), "tether_actor_restarts_total", kind=kind, outcome=outcome)

    for n in range(1, MAX_RESTARTS + 1):
        assert hub.post("/_faults/crash", {"kind": "llm", "key": "alpha"}).json() == {
            "crashed": True}
        wait_until(lambda n=n: restarts("restarted") == n)
        # The restarted actor reported itself: the gauges still show alpha, active.
        wait_until(lambda: hub.get("/status/state").json()["llms"][0]["status"] == "active")
    assert hub.post("/_faults/crash", {"kind": "llm", "key": "alpha"}).json() == {
        "crashed": True}
    wait_until(lambda: restarts("gave_up") == 1)
    assert restarts("restarted") == MAX_RESTARTS
    state = hub.get("/status/state").json()
    assert [(r["name"], r["status"]) for r in state["llms"]] == [("alpha", "inactive")]
    assert value(scrape(hub), "tether_llms", kind="virtual", status="inactive") == 1

    assert hub.post("/_faults/crash", {"kind": "sweeper", "key": ""}).json() == {
        "crashed": True}
    wait_until(lambda: restarts("restarted", kind="sweeper") == 1)


def test_the_sweep_reports_its_counts(hub_factory, publisher_factory):
    hub = hub_factory(gc_interval_s=0.2, heartbeat_timeout_s=0.6, inactive_retention_s=0.6)
    publisher = publisher_factory(url=hub.url)
    publisher.register("alpha", "beta")  # and never a heartbeat
    swept = wait_until(lambda: (s := scrape(hub)) and value(
        s, "tether_sweep_rows_total", action="deleted") == 2 and s, timeout=15)
    assert value(swept, "tether_sweep_rows_total", action="inactive") == 2
    # Deleted rows leave the board, so the gauges and the status page forget them.
    assert series(swept, "tether_in_flight") == {}
    assert hub.get("/status/state").json()["llms"] == []
