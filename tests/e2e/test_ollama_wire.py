"""Ollama's API on the wire: raw NDJSON (curl), what the publisher is asked (the Ollama fields
as OpenAI's), and how each kind of answer and failure reaches an Ollama client. A real hub;
a hand-driven publisher says exactly what a backend would, chunk by chunk."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket
import subprocess

import ollama
import requests

from tests.e2e.test_ollama import HELLO, client, published  # noqa: F401 - a fixture
from tether.common import sse

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5"
       "ErkJggg==")
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None,
          text: str | None = None) -> dict:
    """One OpenAI stream chunk, as the publisher would upload it."""
    if usage is not None:
        body = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": [],
                "usage": usage}
    elif text is not None:
        body = {"id": "c", "object": "text_completion", "model": "m",
                "choices": [{"index": 0, "text": text, "finish_reason": finish}]}
    else:
        body = {"id": "c", "object": "chat.completion.chunk", "model": "m",
                "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}]}
    return {"data": json.dumps(body)}


def test_ndjson_on_the_wire(hub, published):  # noqa: F811
    done = subprocess.run(
        ["curl", "-sSN", "-i", "--max-time", "30", f"{hub.url}/api/chat",
         "-d", json.dumps({"model": "llama", "messages": HELLO, "options": {"num_predict": 3}})],
        capture_output=True, text=True, timeout=40, check=True)
    head, _, body = done.stdout.replace("\r\n", "\n").partition("\n\n")
    assert head.startswith("HTTP/1.1 200")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in head.splitlines()[1:])}
    assert headers["content-type"] == "application/x-ndjson"
    assert body.endswith("\n")
    lines = [json.loads(line) for line in body.splitlines()]  # one JSON object per line
    assert [line["done"] for line in lines] == [False, False, False, True]
    assert all(line["model"] == "llama" and line["message"]["role"] == "assistant"
               for line in lines)
    assert len("".join(line["message"]["content"] for line in lines).split()) == 3
    last = lines[-1]
    assert (last["done_reason"], last["prompt_eval_count"], last["eval_count"]) == ("stop", 1, 3)
    assert set(last) >= {"created_at", "total_duration", "load_duration",
                         "prompt_eval_duration", "eval_duration"}


def test_nothing_is_sent_while_waiting_then_a_failure_is_a_last_error_line(hub, publisher):
    """NDJSON has no comments: a request that waits sends nothing, not even its headers
    (where /v1 would send `: keepalive` every keepalive_s, here 1 s), nor for a chunk that
    shows nothing; they go out with the first line. A failure after that is the last line,
    `{"error": "…"}`."""
    publisher.register("hand")
    stream = publisher.open()
    body = {"model": "hand", "messages": HELLO}
    with cf.ThreadPoolExecutor(2) as pool:
        pending = pool.submit(requests.post, f"{hub.url}/api/chat", json=body, stream=True,
                              timeout=30)
        task = stream.next_task("infer")
        request = task["request"]
        assert (request["model"], request["stream"], request["stream_options"]) == (
            "hand", True, {"include_usage": True})
        assert request["messages"] == HELLO and task.get("endpoint", "chat/completions") \
            == "chat/completions"
        # A role-only first chunk shows the client nothing: it does not start the answer.
        publisher.result(task["taskId"], {"chunk": chunk({"role": "assistant", "content": ""})})
        # A /v1 stream sent after it shows the time going by: two keepalives, 2 s.
        v1 = pool.submit(requests.post, f"{hub.url}/v1/chat/completions", stream=True,
                         timeout=30, json={**body, "stream": True})
        other = stream.next_task("infer")
        lines = sse.iter_lines(v1.result().iter_content(chunk_size=None))
        assert [next(lines), next(lines), next(lines)] == [": keepalive", "", ": keepalive"]
        assert not pending.done()  # 2 s on: not a byte of the Ollama answer yet

        publisher.result(task["taskId"], {"chunk": chunk({"content": "Hel"})})
        response = pending.result()
        assert response.status_code == 200
        assert response.headers["Content-Type"] == "application/x-ndjson"
        ndjson = response.iter_lines()
        first = json.loads(next(ndjson))
        assert (first["model"], first["message"], first["done"]) == (
            "hand", {"role": "assistant", "content": "Hel"}, False)
        publisher.result(task["taskId"], {"status": 500, "body": {"detail": "boom"}})
        assert [json.loads(line) for line in ndjson] == [
            {"error": "the backend answered 500: boom"}]
        publisher.result(other["taskId"], {"status": 200, "body": {}})


def test_ollama_fields_reach_the_backend_as_openai_fields(hub, publisher):
    publisher.register("hand")
    stream = publisher.open()
    history = [
        {"role": "system", "content": "Be brief"},
        {"role": "user", "content": "What is here, and the weather?", "images": [PNG]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        {"role": "user", "content": "And Rome?"},
    ]
    c = client(hub)
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(lambda: list(c.chat(
            model="hand", messages=history, tools=[WEATHER], format=SCHEMA, stream=True,
            keep_alive="5m", options={"num_predict": 7, "temperature": 0.5, "top_p": 0.9,
                                      "seed": 42, "stop": ["\n"], "num_ctx": 4096,
                                      "top_k": 20})))
        task = stream.next_task("infer")
        request = task["request"]
        assert {k: v for k, v in request.items() if k not in ("messages", "tools")} == {
            "model": "hand", "stream": True, "stream_options": {"include_usage": True},
            "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 42, "stop": ["\n"],
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "response", "schema": SCHEMA}}}
        assert request["tools"] == [WEATHER]
        assert request["messages"] == [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": [
                {"type": "text", "text": "What is here, and the weather?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]},
            {"role": "assistant", "content": "", "tool_calls": [
                {"id": "call_2_0", "type": "function", "function": {
                    "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
            {"role": "tool", "content": "sunny", "tool_call_id": "call_2_0"},
            {"role": "user", "content": "And Rome?"},
        ]
        # The backend calls the tool, its arguments in fragments, then says what it used.
        call = {"index": 0, "id": "call_x", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}
        publisher.result(task["taskId"], {"chunks": [
            chunk({"role": "assistant", "content": None}), chunk({"tool_calls": [call]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "Rome"}'}}]},
                  finish="tool_calls"),
            chunk(usage={"prompt_tokens": 31, "completion_tokens": 9, "total_tokens": 40}),
            {"done": True}]})
        parts = pending.result()
    assert [p.done for p in parts] == [False, True]
    called = parts[0].message.tool_calls
    assert [(t.function.name, dict(t.function.arguments)) for t in called] == [
        ("get_weather", {"city": "Rome"})]
    last = parts[-1]
    assert (last.done_reason, last.prompt_eval_count, last.eval_count) == ("stop", 31, 9)


def test_whole_answers_and_errors_before_the_first_line(hub, publisher):
    publisher.register("hand")
    stream = publisher.open()
    c = client(hub)
    whole = {"id": "x", "object": "chat.completion", "model": "m",
             "choices": [{"index": 0, "finish_reason": "length", "message": {
                 "role": "assistant", "content": "{\"city\": \"Rome\"}",
                 "reasoning_content": "they asked for JSON",
                 "tool_calls": [{"id": "a", "type": "function", "function": {
                     "name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}}]}}],
             "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}}
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(c.generate, model="hand", prompt="JSON please", format="json")
        task = stream.next_task("infer")
        assert task["request"]["response_format"] == {"type": "json_object"}
        assert task["request"]["stream"] is False and "stream_options" not in task["request"]
        publisher.result(task["taskId"], {"status": 200, "body": whole})
        answer = pending.result()
        assert (answer.response, answer.done_reason) == ('{"city": "Rome"}', "length")
        assert (answer.prompt_eval_count, answer.eval_count) == (5, 6)

        pending = pool.submit(c.chat, model="hand", messages=HELLO)
        publisher.result(stream.next_task("infer")["taskId"], {"status": 200, "body": whole})
        message = pending.result().message
        assert message.thinking == "they asked for JSON"
        assert [dict(t.function.arguments) for t in message.tool_calls] == [{"city": "Rome"}]

        # Asked to stream, answered whole (a backend that ignores `stream`): one NDJSON line.
        pending = pool.submit(requests.post, f"{hub.url}/api/chat", timeout=30,
                              json={"model": "hand", "messages": HELLO})
        publisher.result(stream.next_task("infer")["taskId"], {"status": 200, "body": whole})
        r = pending.result()
        assert r.headers["Content-Type"] == "application/x-ndjson"
        (line,) = r.text.splitlines()
        assert json.loads(line)["done"] is True and json.loads(line)["eval_count"] == 6

        # A refusal before the first line is a plain answer with its status.
        pending = pool.submit(lambda: list(c.chat(model="hand", messages=HELLO, stream=True)))
        publisher.result(stream.next_task("infer")["taskId"], {"status": 429, "body": {
            "error": {"message": "slow down", "type": "rate_limit_error", "code": "busy"}}})
        try:
            pending.result()
            raise AssertionError("a 429 was not raised")
        except ollama.ResponseError as refused:
            assert (refused.status_code, refused.error) == (429, "slow down")

        pending = pool.submit(c.embed, model="hand", input="x")
        task = stream.next_task("infer")
        assert (task["endpoint"], task["request"]) == ("embeddings",
                                                      {"model": "hand", "input": "x"})
        publisher.result(task["taskId"], {"error": {"message": "backend down", "status": 503}})
        try:
            pending.result()
            raise AssertionError("a 503 was not raised")
        except ollama.ResponseError as failed:
            assert failed.status_code == 503 and "backend down" in failed.error


def test_a_client_that_leaves_a_silent_wait_has_its_task_cancelled(hub, publisher):
    """Nothing is written while an NDJSON answer waits, so no failed write tells the hub the
    client left: it sees the close from the read side, and cancels the task."""
    publisher.register("hand")
    stream = publisher.open()
    body = json.dumps({"model": "hand", "messages": HELLO}).encode()
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as sock:
        sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        task = stream.next_task("infer")
    assert stream.next_task("cancel")["taskId"] == task["taskId"]
