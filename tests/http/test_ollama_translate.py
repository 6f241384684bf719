"""Ollama requests as OpenAI tasks, and OpenAI answers as Ollama's (tether/http/ollama:
translate.py and answers.py, pure functions)."""

from __future__ import annotations

import json

import pytest

from tether.http.ollama import answers, translate
from tether.http.ollama.translate import Load, Task


@pytest.mark.parametrize("options, fields", [
    (None, {}),
    ({}, {}),
    ({"num_predict": 5}, {"max_tokens": 5}),
    ({"num_predict": -1}, {}),  # no limit
    ({"num_predict": -2}, {}),  # fill the context
    ({"num_predict": 0}, {}),
    ({"stop": "\n"}, {"stop": ["\n"]}),
    ({"stop": ["a", "b"]}, {"stop": ["a", "b"]}),
    ({"temperature": 0, "top_p": 0.5, "seed": 7, "presence_penalty": 1.0,
      "frequency_penalty": None}, {"temperature": 0, "top_p": 0.5, "seed": 7,
                                   "presence_penalty": 1.0}),
    ({"num_ctx": 4096, "top_k": 40, "mirostat": 2, "repeat_penalty": 1.1}, {}),  # no OpenAI field
])
def test_options_as_openai_fields(options, fields):
    assert translate.sampling(options) == fields


def test_format_as_response_format():
    assert translate.response_format("json") == {"type": "json_object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert translate.response_format(schema) == {
        "type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    for free in ("", None, {}):
        assert translate.response_format(free) is None


@pytest.mark.parametrize("image, url", [
    ("iVBORw0KGgoAAA", "data:image/png;base64,iVBORw0KGgoAAA"),
    ("/9j/4AAQ", "data:image/jpeg;base64,/9j/4AAQ"),
    ("R0lGODlh", "data:image/gif;base64,R0lGODlh"),
    ("UklGRhYA", "data:image/webp;base64,UklGRhYA"),
    ("AAAA", "data:image/jpeg;base64,AAAA"),  # unknown: the commonest photo format
    ("data:image/png;base64,xyz", "data:image/png;base64,xyz"),
])
def test_images_become_data_urls(image, url):
    assert translate.image_part(image) == {"type": "image_url", "image_url": {"url": url}}


def test_messages_with_images_and_tool_calls():
    history = [
        {"role": "user", "content": "look", "images": ["iVBORw0KGgo1"]},
        {"role": "user", "images": ["/9j/2"]},  # no text: only the image part
        {"role": "assistant", "content": None, "thinking": "hmm", "tool_calls": [
            {"function": {"name": "a", "arguments": {"x": 1}}},
            {"id": "given", "function": {"name": "b", "arguments": '{"y": 2}'}}]},
        # Results out of order: matched by tool_name, else the oldest pending call.
        {"role": "tool", "content": "B", "tool_name": "b"},
        {"role": "tool", "content": "A"},
        {"role": "tool", "content": "?"},  # no call left
        {"role": "tool", "content": "!", "tool_call_id": "explicit"},
    ]
    assert translate.messages(history) == [
        {"role": "user", "content": [
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo1"}}]},
        {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/2"}}]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_2_0", "type": "function",
             "function": {"name": "a", "arguments": '{"x": 1}'}},
            {"id": "given", "type": "function",
             "function": {"name": "b", "arguments": '{"y": 2}'}}]},
        {"role": "tool", "content": "B", "tool_call_id": "given"},
        {"role": "tool", "content": "A", "tool_call_id": "call_2_0"},
        {"role": "tool", "content": "?", "tool_call_id": "call_5"},
        {"role": "tool", "content": "!", "tool_call_id": "explicit"},
    ]


def test_chat():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "format": "json",
            "options": {"num_predict": 3}, "keep_alive": "5m", "think": True,
            "tools": [{"function": {"name": "f"}}], "unknown": 1}
    assert translate.chat(body) == Task("chat", "chat/completions", {
        "model": "m", "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f"}}]}, True)
    quiet = translate.chat({**body, "stream": False, "tools": [], "format": ""})
    assert quiet.streaming is False and quiet.request == {
        "model": "m", "stream": False, "max_tokens": 3,
        "messages": [{"role": "user", "content": "hi"}]}
    assert translate.chat({**body, "stream": None}).streaming is True  # null: the default
    assert translate.chat({"model": "m"}) == Load("chat", unload=False)
    assert translate.chat({"model": "m", "messages": [], "keep_alive": 0}) == Load("chat", True)


def test_generate():
    task = translate.generate({"model": "m", "prompt": "p", "system": "s", "stream": False,
                               "images": ["R0lGOD"], "template": "{{ .Prompt }}",
                               "context": [1, 2]})
    assert task == Task("generate", "chat/completions", {"model": "m", "stream": False,
                        "messages": [
                            {"role": "system", "content": "s"},
                            {"role": "user", "content": [
                                {"type": "text", "text": "p"},
                                {"type": "image_url",
                                 "image_url": {"url": "data:image/gif;base64,R0lGOD"}}]}]},
                        False)
    raw = translate.generate({"model": "m", "prompt": "[INST] p [/INST]", "raw": True,
                              "suffix": "end", "system": "ignored", "format": "json"})
    assert raw == Task("raw", "completions", {
        "model": "m", "stream": True, "stream_options": {"include_usage": True},
        "prompt": "[INST] p [/INST]", "suffix": "end"}, True)
    assert translate.generate({"model": "m", "prompt": ""}) == Load("generate", False)
    assert translate.generate({"model": "m", "keep_alive": "0"}) == Load("generate", True)


def test_embed_and_embeddings():
    assert translate.embed({"model": "m", "input": ["a", "b"], "truncate": True,
                            "dimensions": 4}) == Task(
        "embed", "embeddings", {"model": "m", "input": ["a", "b"], "dimensions": 4}, False)
    assert translate.embed({"model": "m", "input": "a"}).request["input"] == "a"
    assert translate.embed({"model": "m", "input": []}) == Load("embed", False)
    assert translate.embeddings({"model": "m", "prompt": "a", "options": {"seed": 1}}) == Task(
        "embeddings", "embeddings", {"model": "m", "input": "a"}, False)
    assert translate.embeddings({"model": "m"}) == Load("embeddings", False)


# --- answers ---------------------------------------------------------------------------------

TIMING = answers.Timing(total=30, prompt_eval=10, eval=20)
DURATIONS = {"total_duration": 30, "load_duration": 0, "prompt_eval_duration": 10,
             "eval_duration": 20}


@pytest.mark.parametrize("finish, reason", [
    ("stop", "stop"), (None, "stop"), ("tool_calls", "stop"), ("function_call", "stop"),
    ("length", "length"), ("content_filter", "content_filter")])
def test_done_reason(finish, reason):
    assert answers.done_reason(finish) == reason


def test_counts_from_usage():
    assert answers.counts({"prompt_tokens": 3, "completion_tokens": 4}) == {
        "prompt_eval_count": 3, "eval_count": 4}
    for usage in (None, "x", {}, {"prompt_tokens": "3", "completion_tokens": True}):
        assert answers.counts(usage) == {"prompt_eval_count": 0, "eval_count": 0}


@pytest.mark.parametrize("text, parsed", [
    ('{"a": 1}', {"a": 1}), ("", {}), ("  ", {}), (None, {}), ({"a": 1}, {"a": 1}),
    ("[1]", "[1]"), ("{broken", "{broken")])  # not an object: as the model wrote it
def test_tool_call_arguments(text, parsed):
    assert answers.arguments(text) == parsed


def _stamped(line: dict) -> dict:
    assert line.pop("created_at").endswith("Z")
    return line


def test_whole_chat_answer():
    body = {"choices": [{"finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": [{"type": "text", "text": "a"}, {"text": "b"}],
        "reasoning": "why", "tool_calls": [
            {"id": "x", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 5}}
    assert _stamped(answers.whole("chat", "m", body, TIMING)) == {
        "model": "m", "message": {"role": "assistant", "content": "ab", "thinking": "why",
                                  "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
        "done": True, "done_reason": "stop", **DURATIONS, "prompt_eval_count": 2,
        "eval_count": 5}
    empty = _stamped(answers.whole("chat", "m", {"weird": True}, TIMING))
    assert empty["message"] == {"role": "assistant", "content": ""} and empty["done"]
    for kind in ("chat", "generate", "raw"):  # malformed answers: empty, never a crash
        for body in ({"choices": ["x"]}, {"choices": [{"message": "x", "text": 3}]}):
            assert _stamped(answers.whole(kind, "m", body, TIMING))["done"] is True


def test_whole_generate_raw_and_embeddings():
    chat = {"choices": [{"finish_reason": "length", "message": {"content": "hi"}}]}
    line = _stamped(answers.whole("generate", "m", chat, TIMING))
    assert (line["response"], line["done_reason"], line["eval_count"]) == ("hi", "length", 0)
    assert "message" not in line
    completion = {"choices": [{"text": "raw text", "finish_reason": "stop"}]}
    assert _stamped(answers.whole("raw", "m", completion, TIMING))["response"] == "raw text"
    vectors = {"data": [{"index": 1, "embedding": [2.0]}, {"index": 0, "embedding": [1.0]}],
               "usage": {"prompt_tokens": 2}}
    assert answers.whole("embed", "m", vectors, TIMING) == {
        "model": "m", "embeddings": [[1.0], [2.0]], "total_duration": 30,
        "load_duration": 0, "prompt_eval_count": 2}
    assert answers.whole("embeddings", "m", vectors, TIMING) == {"embedding": [1.0]}
    assert answers.whole("embeddings", "m", {}, TIMING) == {"embedding": []}


def test_loaded():
    assert _stamped(answers.loaded("chat", "m", unload=False)) == {
        "model": "m", "message": {"role": "assistant", "content": ""}, "done": True,
        "done_reason": "load"}
    assert _stamped(answers.loaded("generate", "m", unload=True)) == {
        "model": "m", "response": "", "done": True, "done_reason": "unload"}
    assert answers.loaded("embed", "m", False) == {"model": "m", "embeddings": []}
    assert answers.loaded("embeddings", "m", False) == {"embedding": []}


def test_error_messages():
    envelope = {"error": {"message": "too long", "type": "invalid_request_error"}}
    assert answers.error_message(400, envelope) == "too long"
    assert answers.error_message(500, {"error": "model not loaded"}) == \
        "the backend answered 500: model not loaded"
    assert answers.error_message(418, ["?"]) == "the backend answered 418"


def _chunk(delta: dict | None = None, finish: str | None = None, **extra) -> dict:
    return {"choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


def test_a_chat_stream_folded():
    fold = answers.Fold("chat")
    assert fold.piece(_chunk({"role": "assistant", "content": ""})) is None
    assert fold.piece(_chunk({"content": "Hel"})) == {"role": "assistant", "content": "Hel"}
    assert fold.piece(_chunk({"reasoning_content": "hm"})) == {
        "role": "assistant", "content": "", "thinking": "hm"}
    # Two calls, interleaved fragments, by index.
    assert fold.piece(_chunk({"tool_calls": [
        {"index": 0, "id": "a", "function": {"name": "f", "arguments": '{"x"'}},
        {"index": 1, "id": "b", "function": {"name": "g", "arguments": ""}}]})) is None
    fold.piece(_chunk({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}},
                                      {"index": 0, "function": {"arguments": ": 1}"}}]},
                      finish="tool_calls"))
    fold.piece({"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 6}})
    for junk in ("text", None, {"choices": "no"}, {"choices": [{"delta": "no"}]}):
        assert fold.piece(junk) is None
    assert (fold.finish, fold.usage) == ("tool_calls", {"prompt_tokens": 4,
                                                        "completion_tokens": 6})
    assert fold.called() == {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": {"x": 1}}},
        {"function": {"name": "g", "arguments": {}}}]}
    assert fold.called() is None  # once


def test_generate_and_raw_streams_folded():
    generate = answers.Fold("generate")
    assert generate.piece(_chunk({"content": "a"})) == "a"
    assert generate.piece(_chunk({"role": "assistant"})) is None
    assert generate.called() is None
    raw = answers.Fold("raw")
    assert raw.piece({"choices": [{"text": "b", "finish_reason": "length"}]}) == "b"
    assert raw.piece({"choices": [{"text": ""}]}) is None
    assert raw.finish == "length"


def test_final_line():
    line = _stamped(answers.final("chat", "m", "length", {"prompt_tokens": 1,
                                                           "completion_tokens": 2}, TIMING))
    assert line == {"model": "m", "message": {"role": "assistant", "content": ""},
                    "done": True, "done_reason": "length", **DURATIONS,
                    "prompt_eval_count": 1, "eval_count": 2}
    json.dumps(line)
