"""What the publisher changes in a backend's answer (docs/protocol.md, Stream): the Llm's name
as the model, error bodies in the OpenAI envelope, and whether a stream reached its end."""

from __future__ import annotations

import json

from tether.publisher import answers

PATH = "/home/me/models/model.gguf"  # llama.cpp names its model by the file's path


def test_the_backend_model_id_becomes_the_llm_name_in_bodies_and_chunks():
    body = {"id": "c1", "model": PATH, "choices": [{"message": {"content": "hi"}}]}
    assert answers.relabel_body(body, "llama")["model"] == "llama"
    chunk = json.dumps({"id": "c1", "model": PATH, "choices": [{"delta": {"content": "é"}}]})
    data, final = answers.relabel_chunk(chunk, "llama")
    assert json.loads(data) == {**json.loads(chunk), "model": "llama"} and not final
    assert PATH not in data
    # A Responses stream names it inside the response its events carry.
    event = json.dumps({"type": "response.created", "response": {"id": "r", "model": PATH}})
    data, final = answers.relabel_chunk(event, "llama")
    assert json.loads(data)["response"]["model"] == "llama" and not final
    # Nothing to rename: the chunk goes on as it came, byte for byte.
    assert answers.relabel_chunk('{"choices": []}', "llama") == ('{"choices": []}', False)
    assert answers.relabel_chunk("not json", "llama") == ("not json", False)


def test_a_chunk_ends_the_answer_with_a_finish_reason_or_a_responses_last_event():
    assert answers.relabel_chunk(json.dumps(
        {"choices": [{"delta": {}, "finish_reason": "stop"}]}), "x")[1]
    assert not answers.relabel_chunk(json.dumps(
        {"choices": [{"delta": {"content": "a"}, "finish_reason": None}]}), "x")[1]
    for last in ("response.completed", "response.incomplete", "response.failed"):
        assert answers.relabel_chunk(json.dumps({"type": last, "response": {}}), "x")[1]


def test_error_bodies_come_in_the_openai_envelope():
    envelope = {"error": {"message": "bad", "type": "invalid_request_error", "code": "x",
                          "param": None}}
    assert answers.openai_error(400, envelope) is envelope
    assert answers.openai_error(404, {"detail": "Not Found"}) == {"error": {
        "message": "Not Found", "type": "invalid_request_error", "code": None, "param": None}}
    assert answers.openai_error(500, {"error": "model not loaded"})["error"] == {
        "message": "model not loaded", "type": "server_error", "code": None, "param": None}
    odd = answers.openai_error(422, {"detail": [{"loc": ["body", "messages"]}]})
    assert json.loads(odd["error"]["message"]) == {"detail": [{"loc": ["body", "messages"]}]}
    assert answers.openai_error(503, None)["error"]["message"] == \
        "the backend answered 503 without a body"


def test_a_chunk_over_several_lines_is_sent_on_one():
    pretty = json.dumps({"choices": [{"delta": {"content": "a\nb"}}]}, indent=2)
    assert "\n" in pretty
    data, _ = answers.relabel_chunk(pretty, "llama")
    assert "\n" not in data and "\r" not in data
    assert json.loads(data) == json.loads(pretty)  # the text's own newline, escaped
