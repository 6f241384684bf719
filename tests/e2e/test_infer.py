"""Infer relayed over a real stream (docs/protocol.md, Infer and Task result)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import threading
import time

import pytest
import requests

from tests.support.hub import Hub, wait_until
from tether.common import sse


@pytest.fixture
def stream(publisher):
    """Llm m1 of `publisher`, with its stream open."""
    publisher.register("m1")
    return publisher.open()


def _client_stream(hub, name: str, body: dict | None = None, timeout: float = 20):
    """POST a streaming infer; return (response, list of SSE items as they came)."""
    payload = {"messages": [{"role": "user", "content": "hi"}], "stream": True, **(body or {})}
    r = requests.post(f"{hub.url}/api/v1/llms/{name}/infer", json=payload, stream=True,
                      timeout=timeout, headers={"Connection": "close"})
    return r


def _read_sse(response) -> list:
    lines = sse.iter_lines(response.iter_content(chunk_size=None))
    return list(sse.parse(lines))


def test_non_streaming_infer_relays_status_and_body_verbatim(hub, publisher, stream):
    with cf.ThreadPoolExecutor(2) as pool:
        ok = pool.submit(hub.infer, "m1", "first", body={"temperature": 0.2})
        task = stream.next_task("infer")
        assert task["llmName"] == "m1" and task["streaming"] is False
        assert "endpoint" not in task  # chat/completions is the default
        # The client's body is forwarded unchanged; `model` stays the Llm name for the publisher.
        assert task["request"] == {"messages": [{"role": "user", "content": "first"}],
                                   "temperature": 0.2}
        answer = {"id": "x", "choices": [{"message": {"role": "assistant", "content": "yo"}}]}
        assert publisher.result(task["taskId"], {"status": 200, "body": answer}).json() == {
            "ok": True}
        assert ok.result().status_code == 200 and ok.result().json() == answer

        odd = pool.submit(hub.infer, "m1")
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"status": 418, "body": {"teapot": ["short", "stout"]}})
        assert odd.result().status_code == 418
        assert odd.result().json() == {"teapot": ["short", "stout"]}
    # The task is over: a late result is unknown.
    late = publisher.result(task["taskId"], {"status": 200, "body": {}})
    assert late.status_code == 404 and late.json()["error"]["code"] == "task_not_found"


def test_streaming_infer_relays_chunks_in_order_then_done(hub, publisher, stream):
    with cf.ThreadPoolExecutor(2) as pool:
        pending = pool.submit(_client_stream, hub, "m1")
        task = stream.next_task("infer")
        assert task["streaming"] is True
        chunks = [sse.dumps({"choices": [{"delta": {"content": f"w{i}"}}]}) for i in range(5)]
        publisher.result(task["taskId"], {"chunk": {"data": chunks[0], "done": False}})
        response = pending.result()
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        publisher.result(task["taskId"], {"chunks": [{"data": c} for c in chunks[1:4]]})
        publisher.result(task["taskId"], {"chunk": {"data": chunks[4], "done": True}})
        items = [i for i in _read_sse(response) if not isinstance(i, str)]
    assert [i.data for i in items] == [*chunks, "[DONE]"]


def test_streaming_failure_before_the_first_chunk_is_plain_json(hub, publisher, stream):
    with cf.ThreadPoolExecutor(2) as pool:
        pending = pool.submit(_client_stream, hub, "m1")
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"status": 401, "body": {"error": {"message": "key"}}})
        response = pending.result()
    assert response.status_code == 401
    assert response.json() == {"error": {"message": "key"}}


def test_streaming_error_after_chunks_ends_with_an_error_event(hub, publisher, stream):
    with cf.ThreadPoolExecutor(2) as pool:
        pending = pool.submit(_client_stream, hub, "m1")
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"chunk": {"data": "{\"a\":1}"}})
        response = pending.result()
        publisher.result(task["taskId"], {"error": {"message": "backend died", "status": 502}})
        items = [i for i in _read_sse(response) if not isinstance(i, str)]
    assert items[0].data == "{\"a\":1}"
    assert items[-1].event == "error"
    assert items[-1].json()["error"]["code"] == "publisher_error"
    assert "backend died" in items[-1].json()["error"]["message"]


def test_error_result_is_502_by_default(hub, publisher, stream):
    with cf.ThreadPoolExecutor(2) as pool:
        pending = pool.submit(hub.infer, "m1")
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"error": {"message": "connection refused"}})
        r = pending.result()
    assert r.status_code == 502
    assert r.json()["error"] == {"message": "connection refused", "type": "server_error",
                                 "code": "publisher_error", "param": None}


def test_chunk_for_a_non_streaming_task_is_409(hub, publisher, stream):
    with cf.ThreadPoolExecutor(2) as pool:
        pending = pool.submit(hub.infer, "m1")
        task = stream.next_task("infer")
        r = publisher.result(task["taskId"], {"chunk": {"data": "x", "done": False}})
        assert r.status_code == 409 and r.json()["error"]["code"] == "not_streaming"
        publisher.result(task["taskId"], {"status": 200, "body": {"still": "fine"}})
        assert pending.result().json() == {"still": "fine"}


def test_result_checks_body_then_task_then_owner(hub, publisher_factory):
    owner = publisher_factory()
    owner.register("m1")
    other = publisher_factory()
    other.register("m2")
    stream = owner.open()
    assert owner.result("0-nope", {"weird": True}).status_code == 400
    r = owner.result("0-nope", {"status": 200, "body": {}})
    assert r.status_code == 404 and r.json()["error"]["code"] == "task_not_found"
    assert owner.result("garbage", {"status": 200}).status_code == 404
    with cf.ThreadPoolExecutor(2) as pool:
        pending = pool.submit(hub.infer, "m1")
        task = stream.next_task("infer")
        r = owner.result(task["taskId"], {"status": 200, "body": {}}, session=other.session_id)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        owner.result(task["taskId"], {"status": 200, "body": {"ok": 1}}, session=owner.session_id)
        assert pending.result().json() == {"ok": 1}


def test_infer_errors(hub, publisher):
    r = hub.infer("nobody")
    assert r.status_code == 404 and r.json()["error"]["code"] == "llm_not_found"
    publisher.register("m1", canary=True)
    # Registered but no stream open yet: offline, and no task is queued for later.
    r = hub.infer("m1")
    assert r.status_code == 503 and r.json()["error"]["code"] == "publisher_offline"
    stream = publisher.open()
    assert publisher.sent(stream) == []
    for body, field in (({"messages": []}, "messages"), ({}, "messages"),
                        ({"messages": [{"role": "user"}], "stream": "yes"}, "stream")):
        r = hub.post("/api/v1/llms/m1/infer", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_infer_timeout_answers_504_and_cancels(hub_factory, publisher_factory):
    hub = hub_factory(infer_timeout_s=0.5)
    publisher = publisher_factory(url=hub.url)
    publisher.register("m1")
    stream = publisher.open()
    started = time.monotonic()
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(hub.infer, "m1")
        task = stream.next_task("infer")
        cancel = stream.next_task("cancel")
        r = pending.result()
    assert cancel["taskId"] == task["taskId"]
    assert r.status_code == 504 and r.json()["error"]["code"] == "infer_timeout"
    assert time.monotonic() - started < 5
    late = publisher.result(task["taskId"], {"status": 200, "body": {}})
    assert late.status_code == 404


def test_reads(hub, publisher):
    publisher.register("b-model", "a-model")
    assert [r["name"] for r in hub.get("/api/v1/llms").json()["llms"]] == ["a-model", "b-model"]
    row = hub.llm("a-model")
    assert set(row) == {"id", "name", "type", "model", "tier", "description", "extraConfig",
                        "kind", "providerSessionId", "status", "lastHeartbeatAt",
                        "inactiveSince", "createdAt", "updatedAt", "members"}
    assert row["members"] == [{
        "providerSessionId": publisher.session_id, "model": "m", "status": "active",
        "lastHeartbeatAt": row["lastHeartbeatAt"], "inactiveSince": None,
        "maxConcurrency": None, "inFlight": 0}]
    r = hub.get("/api/v1/llms/zzz")
    assert r.status_code == 404 and r.json()["error"]["code"] == "llm_not_found"
    assert hub.get("/healthz").json() == {"status": "ok", "database": "ok", "bus": "off"}
    r = hub.get("/no/such/route")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = requests.delete(f"{hub.url}/api/v1/llms", timeout=5, headers={"Connection": "close"})
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    assert json.loads(r.text)["error"]["type"] == "invalid_request_error"


def test_oversized_bodies_are_413_with_or_without_a_length(hub_factory):
    hub = hub_factory(max_body_bytes=1024)
    big = b'{"messages": [' + b" " * 4096 + b"]}"
    r = hub.post("/api/v1/llms/m/infer", data=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunked():  # no Content-Length: the hub must stop at the limit, not read it all
        yield big[:1000]
        yield big[1000:]

    r = hub.post("/api/v1/llms/m/infer", data=chunked(),
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def small():  # a chunked body within the limit is read whole
        yield b'{"messages": [{"role": '
        yield b'"user"}]}'

    r = hub.post("/api/v1/llms/m/infer", data=small(),
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "llm_not_found"


def test_ndjson_upload_applies_each_line_as_it_arrives(hub, publisher):

    publisher.register("m1")
    stream = publisher.open()
    second_line_may_go = threading.Event()

    def pad(line: bytes) -> bytes:  # as the publisher does: gunicorn reads 1 KiB at a time
        return line + b" " * (1023 - len(line)) + b"\n"

    def body(task_id: str):
        yield pad(b'{"chunk": {"data": "{\\"n\\": 1}"}}\n')
        assert second_line_may_go.wait(10)
        yield b'{"chunk": {"data": "{\\"n\\": 2}"}}\n{"chunk": {"done": true}}\n'

    with cf.ThreadPoolExecutor(2) as pool:
        pending = pool.submit(_client_stream, hub, "m1")
        task = stream.next_task("infer")
        upload = pool.submit(requests.post,
                             f"{hub.url}/api/v1/llms/_provider-task/{task['taskId']}/result",
                             data=body(task["taskId"]), timeout=30,
                             headers={"Content-Type": "application/x-ndjson",
                                      "Connection": "close"})
        response = pending.result()  # headers and the first chunk came while uploading
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith(b"data:"))
        assert first == b'data: {"n": 1}'
        second_line_may_go.set()
        rest = [line for line in lines if line.startswith(b"data:")]
        assert rest == [b'data: {"n": 2}', b"data: [DONE]"]
        assert upload.result().json() == {"ok": True}


def test_ndjson_lines_are_checked_like_single_results(hub_factory, publisher_factory):
    hub = hub_factory(max_body_bytes=2048)
    publisher = publisher_factory(url=hub.url)
    publisher.register("m1")
    stream = publisher.open()
    url = f"{hub.url}/api/v1/llms/_provider-task/{{}}/result"
    headers = {"Content-Type": "application/x-ndjson", "Connection": "close"}
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_client_stream, hub, "m1")
        task = stream.next_task("infer")
        bad = requests.post(url.format(task["taskId"]), data=b'{"chunk": {"data": 5}}\n',
                            headers=headers, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "chunk.data"
        huge = b'{"chunk": {"data": "' + b"x" * 4096 + b'"}}\n'
        assert requests.post(url.format(task["taskId"]), data=huge, headers=headers,
                             timeout=10).status_code == 413
        ok = requests.post(url.format(task["taskId"]), headers=headers, timeout=10,
                           data=b'{"chunk": {"data": "{}"}}\n\n{"chunk": {"done": true}}\n')
        assert ok.json() == {"ok": True}
        assert pending.result().status_code == 200


def _garbled(server, peer) -> None:
    """An OpenAI-compatible upstream that answers with an SSE body that is not UTF-8: the
    hub's relay meets an error it has no case for."""
    server.next_request(peer)
    body = b"data: \xff\xfe garbled\n\n"
    peer.send(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
              b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
    peer.sock.close()


def test_an_unexpected_upstream_failure_answers_at_once_and_is_logged(tmp_path, serve):
    """Issue 10.6: an exception inside the public-Llm relay killed its greenlet silently and
    the client waited for the relay's 10-minute safety net."""
    upstream = serve(_garbled)
    conf = tmp_path / "garbled.toml"
    conf.write_text(f'[[llms]]\nname = "cloud"\ntype = "openai"\nmodel = "m"\n'
                    f'base_url = "{upstream.url}/v1"\n')
    hub = Hub(tmp_path, config=str(conf), keepalive_s=5).start()
    try:
        started = time.monotonic()
        r = _client_stream(hub, "cloud")
        assert r.status_code == 502, r.text
        assert r.json()["error"]["code"] == "upstream_error"
        assert time.monotonic() - started < 5
        task = r.json()["error"]["message"].rsplit("task ", 1)[1].rstrip(")")
        wait_until(lambda: f"task {task} llm=cloud" in hub.logs())
    finally:
        hub.stop()
