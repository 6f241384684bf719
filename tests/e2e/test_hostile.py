"""Hostile input against a real hub and a publisher's real stream (issue 27): a client must
not take a publisher offline, and a publisher must not forge a client's stream."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket

import jsonschema
import pytest
import requests

from tests.support.hub import wait_until
from tests.support.publisher import Stream
from tether.common import sse

CLOSE = {"Connection": "close"}


def raw_post(hub, path: str, raw: bytes) -> requests.Response:
    return requests.post(f"{hub.url}{path}", data=raw, timeout=10,
                         headers={**CLOSE, "Content-Type": "application/json"})


def test_a_lone_surrogate_never_reaches_the_publisher_nor_cuts_its_stream(hub, publisher):
    publisher.register("m1", canary=True)
    stream = publisher.open()
    hostile = b'{"model": "m1", "messages": [{"role": "user", "content": "\\ud800"}]}'
    for path in ("/api/v1/llms/m1/infer", "/v1/chat/completions"):
        r = raw_post(hub, path, hostile)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "messages[0].content"
    # Nothing was dispatched, and the stream that would have carried it still serves.
    assert publisher.sent(stream) == []
    with cf.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(hub.infer, "m1", "fine")
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"status": 200, "body": {"ok": 1}})
        assert answer.result().status_code == 200 and answer.result().json() == {"ok": 1}
    assert "Traceback" not in hub.logs()
    # The same character in a register's description or a /v1 model is a 400, not a 500.
    r = raw_post(hub, "/api/v1/llms/_provider-register",
                 b'{"providers": [{"name": "x", "type": "t", "model": "m", '
                 b'"description": "\\udc00"}]}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "providers[0].description"
    r = raw_post(hub, "/v1/chat/completions",
                 b'{"model": "\\ud800", "messages": [{"role": "user"}]}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"


def _streaming(hub):
    return requests.post(f"{hub.url}/api/v1/llms/m1/infer", stream=True, timeout=20,
                         headers=CLOSE, json={"messages": [{"role": "user"}], "stream": True})


def _events(response) -> list[sse.Event]:
    lines = sse.iter_lines(response.iter_content(chunk_size=None))
    return [e for e in sse.parse(lines) if not isinstance(e, str)]


def test_a_publisher_cannot_forge_fields_in_a_clients_stream(hub, publisher):
    publisher.register("m1")
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_streaming, hub)
        task = stream.next_task("infer")
        ok = sse.dumps({"choices": [{"delta": {"content": "a\nb"}}]})  # JSON escapes it
        assert publisher.result(task["taskId"], {"chunk": {"data": ok}}).status_code == 200
        for forged in ('{}\r\nevent: error\r\ndata: {"x": 1}', "{}\nevent: error",
                       "{}\rdata: x"):
            for body in ({"chunk": {"data": forged}}, {"chunks": [{"data": ok},
                                                                   {"data": forged}]}):
                r = publisher.result(task["taskId"], body)
                assert r.status_code == 400, r.text
                assert r.json()["error"]["param"].startswith("chunk"), r.json()
        publisher.result(task["taskId"], {"chunk": {"data": ok, "done": True}})
        events = _events(pending.result())
    # The client got one event per chunk taken (a refused batch is applied in no part):
    # its data, whole, and no forged event.
    assert [(e.event, e.data) for e in events] == [("message", ok)] * 2 + [("message", "[DONE]")]


def test_a_final_status_is_200_to_599(hub, publisher):
    publisher.register("m1")
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(hub.infer, "m1")
        task = stream.next_task("infer")
        for status in (100, 101, 103, 199, 600):
            r = publisher.result(task["taskId"], {"status": status, "body": {"x": 1}})
            assert r.status_code == 400 and r.json()["error"]["param"] == "status", r.text
        # The task still waits for a real answer, which the client gets.
        publisher.result(task["taskId"], {"status": 201, "body": {"made": True}})
        assert answer.result().status_code == 201 and answer.result().json() == {"made": True}


def test_an_oversized_extra_config_is_refused_and_reads_stay_small(hub, publisher):
    big = {"blob": "x" * 16384}
    r = raw_post(hub, "/api/v1/llms/_provider-register", json.dumps(
        {"providers": [{"name": "ok", "type": "t", "model": "m"},
                       {"name": "big", "type": "t", "model": "m", "extraConfig": big}]}).encode())
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "providers[1].extraConfig"
    assert hub.get("/api/v1/llms").json() == {"llms": []}  # all or nothing
    # At the bound it is taken (compact JSON, as stored), one byte over it is not.
    fits = {"b": "x" * (16384 - len('{"b":""}'))}
    publisher.register("edge", extraConfig=fits)
    wait_until(lambda: hub.llm("edge")["extraConfig"] == fits)
    over = {"b": "x" * (16385 - len('{"b":""}'))}
    publisher.register("edge", extraConfig=over, expect=400)


def _items(doc: dict, path: str) -> dict:
    op = doc["paths"][path]["get"]
    return op["responses"]["200"]["content"]["text/event-stream"]["x-itemSchema"]


def _check_frame(items: dict, event: sse.Event) -> None:
    """An SSE event against the document's x-itemSchema: its shape, then its JSON data
    against the contentSchema of the one item it matches."""
    item = {"event": event.event, "data": event.data}
    if event.id is not None:
        item["id"] = event.id
    matching = [b for b in items["oneOf"]
                if jsonschema.Draft202012Validator(b).is_valid(item)]
    assert len(matching) == 1, item
    data_schema = matching[0]["properties"]["data"]
    if "contentSchema" in data_schema:
        jsonschema.validate(json.loads(event.data), data_schema["contentSchema"])


def test_the_task_streams_frames_are_the_documents(hub, publisher):
    doc = hub.get("/openapi.json").json()
    items = _items(doc, "/api/v1/llms/_provider-stream")
    publisher.register("m1")
    stream = Stream(hub.url, publisher.session_id)
    try:
        _check_frame(items, stream.next())  # hello
        with cf.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(hub.infer, "m1")
            task = stream.next()
            _check_frame(items, task)
            assert task.event == "task" and task.id is not None
            publisher.result(task.json()["taskId"], {"status": 200, "body": {}})
            assert answer.result().status_code == 200
    finally:
        stream.close()
    # A frame of another shape would not pass: the check can fail.
    with pytest.raises(jsonschema.ValidationError):
        _check_frame(items, sse.Event("task", json.dumps({"kind": "dance"})))


def test_gunicorns_own_refusals_are_the_error_envelope(hub):
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as conn:
        # Over gunicorn's 4094-byte request line, and small enough to be read whole (a
        # close with unread bytes would be a reset, which may discard the answer).
        conn.sendall(b"GET /" + b"a" * 5_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        raw = b""
        while chunk := conn.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 414 "), head
    assert b"Content-Type: application/json" in head
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_request" and error["type"] == "invalid_request_error"
