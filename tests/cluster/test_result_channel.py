"""The result channel in a cluster (docs/protocol.md, `_provider-results`): it lands on
whatever process the publisher reaches, and a line for a task homed on another process
reaches that home over the bus, as a per-task result POST does. A bus hiccup on the way
stops the upload with 503 and what it confirmed; the line sent again is applied once."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.cluster.test_reconciliation import CLIENT_TIMEOUT_S, LIVENESS_TTL_S, drop, split
from tests.cluster.test_routing import in_background, result_of
from tests.support.hub import Hub

pytestmark = pytest.mark.timeout(120)

CHANNEL = "/api/v1/llms/_provider-results"


@pytest.fixture
def pair(cluster: Callable[..., Hub]) -> tuple[Hub, Hub]:
    return (cluster(fault_injection=1, liveness_ttl_s=LIVENESS_TTL_S),
            cluster(fault_injection=1, liveness_ttl_s=LIVENESS_TTL_S))


def upload(hub: Hub, session_id: str, channel: str,
           lines: list[dict[str, Any]]) -> requests.Response:
    body = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    return requests.post(f"{hub.url}{CHANNEL}", data=iter([body]), timeout=20, headers={
        "Connection": "close", "Content-Type": "application/x-ndjson",
        "X-Provider-Session-Id": session_id, "X-Result-Channel": channel})


def test_lines_for_tasks_homed_elsewhere_reach_their_home(pair: tuple[Hub, Hub]) -> None:
    a, b = pair
    pub, stream = split(a, b, {"name": "m1", "type": "openai", "model": "m",
                               "maxConcurrency": 2})  # tasks homed on b
    calls = [in_background(lambda: a.infer("m1", "x", timeout=CLIENT_TIMEOUT_S))
             for _ in range(2)]
    tasks = [stream.next_task("infer", timeout=10)["taskId"] for _ in calls]
    channel = str(uuid.uuid4())
    assert pub.session_id is not None
    # The channel on a, the session's home b: each line goes to b over the bus.
    r = upload(a, pub.session_id, channel, [
        {"seq": 1, "taskId": tasks[0], "status": 200, "body": "one"}])
    assert r.json() == {"ok": True, "applied": 1, "duplicates": 0, "refused": []}, r.text
    # The call to the home gets no answer (a bus hiccup): the upload stops there, 503,
    # confirming seq 1 only; the rest of its body is not applied.
    drop(a, "call:submit_result", heard=False)
    r = upload(a, pub.session_id, channel, [
        {"seq": 1, "taskId": tasks[0], "status": 200, "body": "copy"},
        {"seq": 2, "taskId": tasks[1], "status": 200, "body": "two"}])
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "hub_busy" and r.json()["applied"] == 1
    assert r.headers["Retry-After"] == "1"
    # Sent again (what the 503 left unconfirmed, on a new upload): applied once.
    r = upload(a, pub.session_id, channel, [
        {"seq": 2, "taskId": tasks[1], "status": 200, "body": "two"}])
    assert r.json() == {"ok": True, "applied": 2, "duplicates": 0, "refused": []}, r.text
    assert sorted(result_of(call).json() for call in calls) == ["one", "two"]
    pub.close()


def test_a_channel_on_a_process_that_never_saw_it_refuses_a_copy_by_its_task(
        pair: tuple[Hub, Hub]) -> None:
    """A publisher that lost an answer may send its lines again to another process (the
    next hub URL, another worker): that process takes them as new, and the task, which has
    its answer already, refuses the copy: the client is answered once."""
    a, b = pair
    pub, stream = split(a, b)
    call = in_background(lambda: a.infer("m1", "x", timeout=CLIENT_TIMEOUT_S))
    task = stream.next_task("infer", timeout=10)["taskId"]
    channel = str(uuid.uuid4())
    assert pub.session_id is not None
    line = {"seq": 1, "taskId": task, "status": 200, "body": "once"}
    assert upload(b, pub.session_id, channel, [line]).json()["applied"] == 1
    assert result_of(call).json() == "once"
    r = upload(a, pub.session_id, channel, [{**line, "body": "twice"}])
    assert r.json() == {"ok": True, "applied": 1, "duplicates": 0,
                        "refused": [{"seq": 1, "taskId": task, "code": "task_not_found"}]}
    pub.close()


def test_a_streams_lines_sent_again_to_a_process_that_never_saw_them_show_once(
        pair: tuple[Hub, Hub]) -> None:
    """A stream's lines sent again to another process are new to it; that process passes
    them over the bus to the task's home, whose count of the chunks applied (`index`)
    shows each one once."""
    a, b = pair
    pub, stream = split(a, b)  # tasks homed on b
    call = in_background(lambda: a.infer("m1", "x", body={"stream": True},
                                         timeout=CLIENT_TIMEOUT_S))
    task = stream.next_task("infer", timeout=10)["taskId"]
    channel = str(uuid.uuid4())
    assert pub.session_id is not None
    first = {"seq": 1, "taskId": task, "index": 0,
             "chunks": [{"data": '"one"'}, {"data": '"two"'}]}
    assert upload(b, pub.session_id, channel, [first]).json()["applied"] == 1
    # Its answer lost, the publisher (now at a) sends it again with the next line.
    r = upload(a, pub.session_id, channel, [
        first, {"seq": 2, "taskId": task, "index": 2,
                "chunks": [{"data": '"three"'}, {"done": True}]}])
    assert r.json() == {"ok": True, "applied": 2, "duplicates": 0, "refused": []}, r.text
    answer = result_of(call)
    assert answer.status_code == 200, answer.text
    data = [line[len("data: "):] for line in answer.text.splitlines()
            if line.startswith("data: ")]
    assert data == ['"one"', '"two"', '"three"', "[DONE]"]
    pub.close()
