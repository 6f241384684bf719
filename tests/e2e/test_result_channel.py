"""The result channel against a real hub (docs/protocol.md, `_provider-results`): numbered
lines, each applied once per channel, the answer as the confirmation, refusals listed, and
the upload stopped with what it confirmed when a line cannot be read."""

from __future__ import annotations

import concurrent.futures as cf
import json
import uuid
from typing import Any

import requests

from tests.support.hub import wait_until

CHANNEL = "/api/v1/llms/_provider-results"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def upload(hub, session_id: str, lines: list[dict[str, Any]], channel: str,
           raw: bytes | None = None) -> requests.Response:
    """One upload of `lines` (NDJSON, chunked: a generator body), its answer."""
    body = raw if raw is not None else b"".join(json.dumps(x).encode() + b"\n" for x in lines)
    return requests.post(f"{hub.url}{CHANNEL}", data=iter([body]), timeout=20, headers={
        "Connection": "close", "Content-Type": "application/x-ndjson",
        "X-Provider-Session-Id": session_id, "X-Result-Channel": channel})


def infers(hub, pool: cf.ThreadPoolExecutor, name: str, n: int) -> list[cf.Future]:
    return [pool.submit(requests.post, f"{hub.url}/api/v1/llms/{name}/infer", json=CHAT,
                        timeout=20, headers={"Connection": "close"}) for _ in range(n)]


def test_lines_answer_their_tasks_and_a_resent_line_is_applied_once(hub, publisher):
    publisher.register("m1")
    stream = publisher.open()
    channel = str(uuid.uuid4())
    with cf.ThreadPoolExecutor(3) as pool:
        calls = infers(hub, pool, "m1", 3)
        tasks = [stream.next_task("infer")["taskId"] for _ in calls]
        first = upload(hub, publisher.session_id, [
            {"seq": 1, "taskId": tasks[0], "status": 200, "body": {"n": 0}}], channel)
        assert first.status_code == 200, first.text
        assert first.json() == {"ok": True, "applied": 1, "duplicates": 0, "refused": []}
        # The publisher saw no answer (a cut): it sends every unconfirmed line again, with
        # the ones made since. The hub skips seq 1, which it handled.
        again = upload(hub, publisher.session_id, [
            {"seq": 1, "taskId": tasks[0], "status": 200, "body": {"n": "copy"}},
            {"seq": 2, "taskId": tasks[1], "status": 201, "body": {"n": 1}},
            {"seq": 3, "taskId": tasks[2], "error": {"message": "backend down",
                                                    "status": 502}}], channel)
        assert again.status_code == 200, again.text
        assert again.json() == {"ok": True, "applied": 3, "duplicates": 1, "refused": []}
        answers = [call.result(timeout=10) for call in calls]
    # Each client got exactly its line's answer (which client got which task is the hub's
    # choice): the copy of seq 1 changed nothing.
    assert sorted(r.status_code for r in answers) == [200, 201, 502]
    by_status = {r.status_code: r for r in answers}
    assert by_status[200].json() == {"n": 0} and by_status[201].json() == {"n": 1}
    assert by_status[502].json()["error"]["code"] == "publisher_error"


def test_another_channel_of_the_session_is_numbered_apart(hub, publisher):
    """A restarted publisher numbers from 1 again, on a channel id of its own."""
    publisher.register("m1")
    stream = publisher.open()
    with cf.ThreadPoolExecutor(2) as pool:
        calls = infers(hub, pool, "m1", 2)
        tasks = [stream.next_task("infer")["taskId"] for _ in calls]
        for task in tasks:
            r = upload(hub, publisher.session_id, [{"seq": 1, "taskId": task, "status": 200,
                                                    "body": task}], str(uuid.uuid4()))
            assert r.json() == {"ok": True, "applied": 1, "duplicates": 0, "refused": []}
        assert sorted(call.result(timeout=10).json() for call in calls) == sorted(tasks)


def test_lines_refused_for_good_are_listed_and_the_upload_goes_on(hub, publisher_factory):
    mine, other = publisher_factory(), publisher_factory()
    mine.register("m1")
    other.register("m2")
    stream, other_stream = mine.open(), other.open()
    with cf.ThreadPoolExecutor(2) as pool:
        call = infers(hub, pool, "m1", 1)[0]
        theirs = infers(hub, pool, "m2", 1)[0]
        task = stream.next_task("infer")["taskId"]
        their_task = other_stream.next_task("infer")["taskId"]
        r = upload(hub, mine.session_id, [
            {"seq": 1, "taskId": "1.0-no-such-task", "status": 200, "body": "x"},
            {"seq": 2, "taskId": their_task, "status": 200, "body": "not mine"},
            {"seq": 3, "taskId": task, "chunk": {"data": "{}"}},  # a chunk line needs `index`
            {"seq": 4, "taskId": task, "index": 0, "chunk": {"data": "{}"}},  # not streamed
            {"seq": 5, "taskId": task, "status": 999},  # breaks the result schema
            {"seq": 6, "taskId": task, "status": 200, "body": "answer"}], str(uuid.uuid4()))
        assert r.status_code == 200, r.text
        assert r.json()["applied"] == 6
        assert [(x["seq"], x["code"]) for x in r.json()["refused"]] == [
            (1, "task_not_found"), (2, "forbidden"), (3, "invalid_request"),
            (4, "not_streaming"), (5, "invalid_request")]
        assert call.result(timeout=10).json() == "answer"
        # The other session's task was not touched: its own publisher answers it.
        assert other.result(their_task, {"status": 200, "body": "theirs"}).status_code == 200
        assert theirs.result(timeout=10).json() == "theirs"


def test_a_line_without_a_number_stops_the_upload_with_what_it_confirmed(hub, publisher):
    publisher.register("m1")
    stream = publisher.open()
    channel = str(uuid.uuid4())
    with cf.ThreadPoolExecutor(2) as pool:
        calls = infers(hub, pool, "m1", 2)
        tasks = [stream.next_task("infer")["taskId"] for _ in calls]
        r = upload(hub, publisher.session_id, [
            {"seq": 1, "taskId": tasks[0], "status": 200, "body": "one"},
            {"seq": "two", "taskId": tasks[1], "status": 200, "body": "lost"},
            {"seq": 3, "taskId": tasks[1], "status": 200, "body": "never read"}], channel)
        assert r.status_code == 400, r.text
        assert r.json()["applied"] == 1 and r.json()["error"]["param"] == "seq"
        wait_until(lambda: any(call.done() for call in calls))
        assert [call.result().json() for call in calls if call.done()] == ["one"]
        # Not applied: the next upload (or a per-task POST) answers it.
        r = upload(hub, publisher.session_id, [
            {"seq": 2, "taskId": tasks[1], "status": 200, "body": "two"}], channel)
        assert r.json()["applied"] == 2 and r.json()["duplicates"] == 0
        assert sorted(call.result(timeout=10).json() for call in calls) == ["one", "two"]


def test_the_channel_needs_its_headers_and_takes_one_plain_json_line(hub, publisher):
    publisher.register("m1")
    stream = publisher.open()
    for headers, param in (({}, "X-Provider-Session-Id"),
                           ({"X-Provider-Session-Id": publisher.session_id},
                            "X-Result-Channel"),
                           ({"X-Provider-Session-Id": publisher.session_id,
                             "X-Result-Channel": "has space"}, "X-Result-Channel")):
        r = requests.post(f"{hub.url}{CHANNEL}", json={"seq": 1, "taskId": "t", "status": 200},
                          headers={"Connection": "close", **headers}, timeout=10)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    with cf.ThreadPoolExecutor(1) as pool:
        call = infers(hub, pool, "m1", 1)[0]
        task = stream.next_task("infer")["taskId"]
        r = requests.post(f"{hub.url}{CHANNEL}", timeout=10,
                          json={"seq": 1, "taskId": task, "status": 200, "body": "curl"},
                          headers={"Connection": "close",
                                   "X-Provider-Session-Id": publisher.session_id,
                                   "X-Result-Channel": "curl-1"})
        assert r.json() == {"ok": True, "applied": 1, "duplicates": 0, "refused": []}
        assert call.result(timeout=10).json() == "curl"


def streamed(hub, pool: cf.ThreadPoolExecutor, name: str) -> cf.Future:
    return pool.submit(requests.post, f"{hub.url}/api/v1/llms/{name}/infer",
                       json={**CHAT, "stream": True}, timeout=20,
                       headers={"Connection": "close"})


def events(answer: requests.Response) -> list[tuple[str, str]]:
    """An SSE answer's events, as (event, data), comments left out."""
    found = []
    for block in answer.text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines()
                      if line and not line.startswith(":"))
        if "data" in fields:
            found.append((fields.get("event", "message"), fields["data"]))
    return found


def chunks(index: int, *texts: str, done: bool = False) -> dict[str, Any]:
    return {"index": index, "chunks": [{"data": json.dumps(t)} for t in texts] +
            ([{"done": True}] if done else [])}


def test_a_streams_lines_sent_again_anywhere_show_each_chunk_once(hub, publisher):
    """`seq` skips a copy on the channel that handled it; `index` skips it wherever it comes
    again: on another channel (a process that never saw the first: a new channel id is one
    to this hub), or by the per-task route (a line refused 503 goes by its own POST)."""
    publisher.register("m1")
    stream = publisher.open()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    with cf.ThreadPoolExecutor(1) as pool:
        call = streamed(hub, pool, "m1")
        task = stream.next_task("infer")["taskId"]
        r = upload(hub, publisher.session_id, [
            {"seq": 1, "taskId": task, **chunks(0, "one", "two")}], first)
        assert r.json() == {"ok": True, "applied": 1, "duplicates": 0, "refused": []}, r.text
        r = upload(hub, publisher.session_id, [
            {"seq": 1, "taskId": task, **chunks(0, "one", "two")},
            {"seq": 2, "taskId": task, **chunks(2, "three")}], first)
        assert r.json() == {"ok": True, "applied": 2, "duplicates": 1, "refused": []}, r.text
        # The same lines on a channel this process never read: new to it, old to the task.
        r = upload(hub, publisher.session_id, [
            {"seq": 1, "taskId": task, **chunks(0, "one", "two")},
            {"seq": 2, "taskId": task, **chunks(2, "three")},
            {"seq": 3, "taskId": task, **chunks(1, "two", "three", "four")}], second)
        assert r.json() == {"ok": True, "applied": 3, "duplicates": 0, "refused": []}, r.text
        # By the per-task route: a copy, then one that overlaps (only its end is new).
        assert publisher.result(task, chunks(2, "three", "four")).status_code == 200
        assert publisher.result(task, chunks(3, "four", done=True)).status_code == 200
        answer = call.result(timeout=10)
    assert answer.status_code == 200, answer.text
    assert events(answer) == [("message", json.dumps(t)) for t in ("one", "two", "three",
                                                                   "four")] + \
        [("message", "[DONE]")]


def test_a_chunk_past_a_lost_one_ends_the_stream_with_an_error_not_a_hole(hub, publisher):
    publisher.register("m1")
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        call = streamed(hub, pool, "m1")
        task = stream.next_task("infer")["taskId"]
        r = upload(hub, publisher.session_id, [
            {"seq": 1, "taskId": task, **chunks(0, "one")},
            {"seq": 2, "taskId": task, **chunks(3, "four", done=True)}], str(uuid.uuid4()))
        assert r.json()["applied"] == 2, r.text
        answer = call.result(timeout=10)
    got = events(answer)
    assert got[0] == ("message", json.dumps("one")) and len(got) == 2, got
    kind, data = got[1]
    assert kind == "error" and json.loads(data)["error"]["code"] == "publisher_error", got
    assert "lost chunks 1 to 2" in json.loads(data)["error"]["message"]
    # The task ended: a late copy of the missing chunks is refused by it.
    assert publisher.result(task, chunks(1, "two")).status_code == 404
