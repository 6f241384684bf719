"""Hostile request bodies (issue 27), on every route that reads one: text that is not valid
Unicode, nesting too deep, NaN and Infinity, and more values than a body may parse into
are each a 400 `invalid_request` naming the field, never a 500 or a dispatched task."""

from __future__ import annotations

import json

import pytest
from falcon import testing
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tether.http import body as body_module
from tether.http.app import create_app


@pytest.fixture
def client(system_factory):
    system = system_factory(auth="off")
    return testing.TestClient(create_app(system.settings, system))


def post(client, path: str, raw: bytes, ndjson: bool = False):
    kind = "application/x-ndjson" if ndjson else "application/json"
    return client.simulate_post(path, body=raw, headers={"Content-Type": kind})


def refused(r, param: str, words: str) -> None:
    assert r.status_code == 400, (r.status_code, r.text)
    error = r.json["error"]
    if isinstance(error, str):  # the Ollama routes' own shape names the field first
        assert error.startswith(f"{param}:") and words in error, error
        return
    assert error["code"] == "invalid_request", error
    assert error["param"] == param and words in error["message"], error


LONE = '"\\ud800"'  # valid JSON, not valid text
REGISTER = "/api/v1/llms/_provider-register"


@pytest.mark.parametrize("path, raw, param", [
    ("/api/v1/llms/m1/infer",
     f'{{"messages": [{{"role": "user", "content": {LONE}}}]}}', "messages[0].content"),
    ("/v1/chat/completions",
     f'{{"model": {LONE}, "messages": [{{"role": "user"}}]}}', "model"),
    ("/v1/completions", f'{{"model": "m", "prompt": ["ok", {LONE}]}}', "prompt[1]"),
    ("/v1/embeddings", f'{{"model": "m", "input": {LONE}}}', "input"),
    ("/v1/responses", f'{{"model": "m", "input": {LONE}}}', "input"),
    ("/api/chat", f'{{"model": {LONE}, "messages": []}}', "model"),
    ("/api/generate", f'{{"model": "m", "prompt": {LONE}}}', "prompt"),
    ("/api/embed", f'{{"model": "m", "input": {LONE}}}', "input"),
    ("/api/embeddings", f'{{"model": "m", "prompt": {LONE}}}', "prompt"),
    ("/api/show", f'{{"model": {LONE}}}', "model"),
    (REGISTER, f'{{"providers": [{{"name": "a", "type": "t", "model": "m", '
               f'"description": {LONE}}}]}}', "providers[0].description"),
    (REGISTER, f'{{"providers": [{{"name": "a", "type": "t", "model": "m", '
               f'"extraConfig": {{{LONE}: 1}}}}]}}', "providers[0].extraConfig"),
    ("/api/v1/llms/_provider-task/1-x/result",
     f'{{"chunk": {{"data": {LONE}}}}}', "chunk.data"),
    ("/api/v1/llms/_provider-heartbeat", '{"providerSessionId": "\\udfff"}',
     "providerSessionId"),
])
def test_a_lone_surrogate_is_refused_at_the_door_naming_its_field(client, path, raw, param):
    refused(post(client, path, raw.encode()), param, "not valid Unicode")


def test_a_surrogate_encoded_raw_is_refused_and_a_pair_is_text(client):
    raw = b'{"messages": [{"role": "user", "content": "' + b"\xed\xa0\x80" + b'"}]}'
    refused(post(client, "/api/v1/llms/m1/infer", raw), "messages[0].content",
            "not valid Unicode")
    # An escaped pair is one character: valid, the body goes on (to a 404: no such Llm).
    pair = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}'
    r = post(client, "/api/v1/llms/m1/infer", pair)
    assert r.status_code == 404 and r.json["error"]["code"] == "llm_not_found", r.text


def test_a_lone_surrogate_in_an_ndjson_result_line_is_refused(client):
    line = f'{{"chunk": {{"data": {LONE}}}}}\n'.encode()
    r = post(client, "/api/v1/llms/_provider-task/1-x/result", line, ndjson=True)
    refused(r, "chunk.data", "not valid Unicode")


@pytest.mark.parametrize("raw", [
    b"[" * 60_000,  # the probe was 100,000: over max_json_values, refused too
    b"[" * 5_000 + b"]" * 5_000,
    b'{"messages": [{"role": "user", "content": ' + b"[" * 5000 + b"]" * 5000 + b"}]}",
    b'{"a": ' * 65 + b"1" + b"}" * 65,
])
@pytest.mark.parametrize("path", ["/api/v1/llms/m1/infer", "/v1/chat/completions",
                                  "/api/chat", REGISTER])
def test_nesting_deeper_than_the_bound_is_a_400(client, path, raw):
    refused(post(client, path, raw), "body", "max_json_depth")


def test_nesting_within_the_bound_and_brackets_in_text_are_fine(client):
    text = "[" * 10_000 + "{,}" * 100_000  # brackets and commas inside a string are text
    body = {"messages": [{"role": "user", "content": text, "x": json.loads("[" * 60 + "]" * 60)}]}
    r = post(client, "/api/v1/llms/m1/infer", json.dumps(body).encode())
    assert r.status_code == 404 and r.json["error"]["code"] == "llm_not_found", r.text


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_are_not_json(client, constant):
    raw = ('{"providers": [{"name": "a", "type": "t", "model": "m", "extraConfig": {"x": '
           + constant + "}}]}").encode()
    refused(post(client, REGISTER, raw), "body", "strict JSON")
    # Nothing was stored: the read shows no row a strict parser would refuse.
    listed = client.simulate_get("/api/v1/llms")
    assert listed.status_code == 200 and listed.json == {"llms": []}
    infer = f'{{"messages": [{{"role": "user"}}], "temperature": {constant}}}'.encode()
    refused(post(client, "/v1/chat/completions", infer), "body", "strict JSON")


def test_more_values_than_the_bound_is_refused_before_parsing(client, monkeypatch):
    parsed: list[bytes] = []
    loads = json.loads
    monkeypatch.setattr(body_module.json, "loads",
                        lambda raw, **kw: (isinstance(raw, bytes) and parsed.append(raw))
                        or loads(raw, **kw))  # the hub parses bytes; a test reads text
    many = b'{"model": "m", "prompt": [' + b",".join([b"{}"] * 200_000) + b"]}"
    refused(post(client, "/v1/completions", many), "body", "max_json_values")
    assert parsed == []  # refused from the bytes: no object was built
    # Within the bound, and commas in text do not count: the body goes on.
    fine = {"messages": [{"role": "user", "x": [",,,," * 5 for _ in range(60_000)]}]}
    r = post(client, "/api/v1/llms/m1/infer", json.dumps(fine).encode())
    assert r.status_code == 404 and r.json["error"]["code"] == "llm_not_found", r.text


def test_the_bounds_are_settings(system_factory):
    system = system_factory(auth="off", max_json_depth=4, max_json_values=40)
    client = testing.TestClient(create_app(system.settings, system))
    at_the_bound = b'{"messages": [{"role": "user", "x": [1]}]}'
    assert post(client, "/api/v1/llms/m1/infer", at_the_bound).status_code == 404
    deep = b'{"messages": [{"role": "user", "x": [[1]]}]}'
    refused(post(client, "/api/v1/llms/m1/infer", deep), "body", "deeper than 4 levels")
    wide = {"messages": [{"role": "user", "x": list(range(40))}]}
    refused(post(client, "/api/v1/llms/m1/infer", json.dumps(wide).encode()), "body",
            "more than 40 values")


JSON_TEXT = st.text(alphabet=st.sampled_from('\\"[]{},: aé\n'), max_size=8)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | JSON_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(JSON_TEXT, inner, max_size=4),
    max_leaves=40)


def depth_and_values(value) -> tuple[int, int]:
    if isinstance(value, list):
        inner = [depth_and_values(v) for v in value]
    elif isinstance(value, dict):
        inner = [depth_and_values(v) for v in value.values()]
    else:
        return 0, 1
    return 1 + max((d for d, _ in inner), default=0), 1 + sum(n for _, n in inner)


@settings(max_examples=400, deadline=None)
@given(value=JSON_VALUES, ascii_only=st.booleans(), depth=st.integers(2, 6),
       values=st.integers(16, 60))
# 17 values whose lists each hold one scalar: the scan once took `[1]` for an empty list.
@example(value=[[1]] * 8, ascii_only=True, depth=2, values=16)
def test_the_byte_scan_counts_what_the_parser_builds(value, ascii_only, depth, values):
    """The bounds judged from the bytes are the parsed value's own depth and value count,
    whatever the strings hold (quotes, backslashes, brackets, commas)."""
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    real_depth, real_values = depth_and_values(value)
    verdict = body_module._shape(raw, body_module.BodyLimits(len(raw), depth, values))
    assert (verdict is None) == (real_depth <= depth and real_values <= values), verdict


def test_a_refusal_does_not_send_a_huge_value_back(client):
    huge = {"model": "m", "prompt": ["x" * 1000] * 3000}  # over maxItems: quoted by the error
    r = post(client, "/v1/completions", json.dumps(huge).encode())
    assert r.status_code == 400 and r.json["error"]["param"] == "prompt"
    assert len(r.text) < 1000, len(r.text)
