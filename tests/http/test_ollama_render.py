"""The Ollama renderer (tether/http/ollama/render.py): what it writes for each reply event,
with a clock the test moves."""

from __future__ import annotations

import json

import falcon

from tether import errors
from tether.actors import messages as m
from tether.http.ollama.render import NDJSON, OllamaRenderer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000

    def __call__(self) -> int:
        return self.now


def lines(text: str) -> list[dict]:
    assert text.endswith("\n")
    out = [json.loads(line) for line in text.splitlines()]
    for line in out:
        line.pop("created_at", None)
    return out


def chunk(**delta) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": delta, "finish_reason": None}]})


def test_a_chat_stream_line_by_line():
    clock = Clock()
    render = OllamaRenderer("chat", "m", streaming=True, clock=clock)
    resp = falcon.Response()
    render.begin(resp)
    assert (resp.status, resp.content_type) == (falcon.HTTP_200, NDJSON)
    assert resp.get_header("Cache-Control") == "no-cache"
    assert render.idle(waking=True) == "" and render.idle(waking=False) == ""
    clock.now = 1_400  # the first chunk: prompt evaluated
    assert render.part(m.Chunks((chunk(role="assistant", content=""),))) == ""
    assert lines(render.part(m.Chunks((chunk(content="a"), "not json", chunk(content="b"))))) \
        == [{"model": "m", "message": {"role": "assistant", "content": c}, "done": False}
            for c in "ab"]
    render.part(m.Chunks((json.dumps({"choices": [{"delta": {}, "finish_reason": "length"}]}),
                          json.dumps({"choices": [], "usage": {"prompt_tokens": 3,
                                                               "completion_tokens": 2}}))))
    clock.now = 2_000
    assert lines(render.end(m.StreamDone())) == [{
        "model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
        "done_reason": "length", "total_duration": 1_000, "load_duration": 0,
        "prompt_eval_duration": 400, "eval_duration": 600, "prompt_eval_count": 3,
        "eval_count": 2}]


def test_a_stream_ends_with_its_tool_calls_then_done():
    render = OllamaRenderer("chat", "m", streaming=True, clock=Clock())
    render.part(m.Chunks((chunk(tool_calls=[{"index": 0, "function": {
        "name": "f", "arguments": '{"a": 1}'}}]),)))
    called, done = lines(render.end(m.StreamDone()))
    assert called == {"model": "m", "done": False, "message": {
        "role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "f", "arguments": {"a": 1}}}]}}
    assert done["done"] is True and done["done_reason"] == "stop"


def test_failures_after_the_first_line_are_a_last_error_line():
    render = OllamaRenderer("generate", "m", streaming=True, clock=Clock())
    assert lines(render.part(m.Chunks((chunk(content="x"),)))) == [
        {"model": "m", "response": "x", "done": False}]
    assert lines(render.end(m.Failed(errors.PUBLISHER_DISCONNECTED(name="m")))) == [
        {"error": errors.PUBLISHER_DISCONNECTED(name="m").message}]
    assert lines(render.end(m.Completed(502, {"detail": "gone"}))) == [
        {"error": "the backend answered 502: gone"}]


def test_whole_answers():
    body = {"choices": [{"message": {"content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1}}
    resp = falcon.Response()
    OllamaRenderer("chat", "m", streaming=False, clock=Clock()).answer(
        resp, m.Completed(200, body))
    assert resp.status == falcon.HTTP_200 and resp.media["message"]["content"] == "hi"
    assert resp.media["done"] is True and resp.media["eval_count"] == 1

    # Asked to stream, answered whole: one NDJSON line.
    resp = falcon.Response()
    OllamaRenderer("chat", "m", streaming=True, clock=Clock()).answer(
        resp, m.Completed(200, body))
    assert resp.content_type == NDJSON
    (line,) = lines(resp.data.decode())
    assert line["message"]["content"] == "hi" and line["done"] is True

    for status, sent, said in ((404, {"error": "model not found"},
                                "the backend answered 404: model not found"),
                               (200, "text", "the backend's answer is not a JSON object")):
        resp = falcon.Response()
        OllamaRenderer("embed", "m", streaming=False, clock=Clock()).answer(
            resp, m.Completed(status, sent))
        assert (resp.status, resp.media) == (status if status != 200 else 502,
                                             {"error": said})


def test_the_llm_that_served_names_the_answer():
    """When the relay names the Llm that served (X-Tether-Llm: an alias's target), the
    answer carries that name rather than the one the client asked for."""
    render = OllamaRenderer("chat", "alias", streaming=True, clock=Clock())
    resp = falcon.Response()
    resp.set_header("X-Tether-Llm", "target")
    render.begin(resp)
    assert lines(render.part(m.Chunks((chunk(content="a"),))))[0]["model"] == "target"
    assert lines(render.end(m.StreamDone()))[0]["model"] == "target"
