"""The OpenAI-compatible front door, driven by the official `openai` SDK, unmodified."""

from __future__ import annotations

import concurrent.futures as cf
import json
import socket

import openai
import pytest
import requests

from tests.conftest import BOTH_DATABASES
from tests.support.hub import Hub, free_port
from tests.support.procs import wait_status
from tether.common import sse


def sdk(hub) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{hub.url}/v1", api_key="unused", max_retries=0,
                         timeout=30)


@pytest.fixture
def published(hub, backend_factory, publish_factory, publisher_factory):
    """`llama` active behind a real publisher, `sleepy` hibernating, `gone` inactive."""
    backend = backend_factory()
    sleeper = backend_factory(start=False)
    publish_factory([
        {"name": "llama", "model": "demo-model", "base_url": backend.base_url},
        {"name": "sleepy", "model": "demo-model", "base_url": sleeper.base_url,
         "wake": {"command": sleeper.command()}, "wake_timeout_s": 30},
    ])
    wait_status(hub, "llama", "active")
    wait_status(hub, "sleepy", "hibernating")
    gone = publisher_factory()
    gone.register("gone")
    gone.open().close()
    wait_status(hub, "gone", "inactive")
    return backend


def test_models_lists_live_llms_only(hub, published):
    client = sdk(hub)
    ids = sorted(m.id for m in client.models.list())
    assert ids == ["llama", "sleepy"]
    model = client.models.retrieve("llama")
    assert (model.id, model.object, model.owned_by) == ("llama", "model", "tether")
    assert model.created > 1_700_000_000
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gone")


@BOTH_DATABASES
def test_chat_both_ways(hub, published):
    client = sdk(hub)
    answer = client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "Hello"}])
    assert answer.choices[0].message.role == "assistant"
    assert len(answer.choices[0].message.content.split()) == 8
    assert answer.model == "llama"  # the Llm's name; the backend's id stays on the publisher

    stream = client.chat.completions.create(
        model="llama", messages=[{"role": "user", "content": "Hello"}], stream=True,
        max_tokens=5)
    chunks = list(stream)
    assert {chunk.model for chunk in chunks} == {"llama"}
    assert len("".join(chunk.choices[0].delta.content for chunk in chunks).split()) == 5


def test_chat_wakes_a_hibernating_model(hub, published):
    answer = sdk(hub).chat.completions.create(
        model="sleepy", messages=[{"role": "user", "content": "wake up"}])
    assert answer.choices[0].message.content
    assert hub.llm("sleepy")["status"] == "active"


def test_legacy_completions_and_embeddings(hub, published):
    client = sdk(hub)
    done = client.completions.create(model="llama", prompt="Once upon", max_tokens=4)
    assert done.object == "text_completion" and len(done.choices[0].text.split()) == 4
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="llama", prompt="Once upon", max_tokens=3, stream=True))
    assert len(streamed.split()) == 3
    vectors = client.embeddings.create(model="llama", input=["a", "b"])
    assert [d.index for d in vectors.data] == [0, 1]
    assert len(vectors.data[0].embedding) == 8
    assert vectors.data[0].embedding != vectors.data[1].embedding
    assert published.stats()["models"][-1] == "demo-model"


def test_responses_api_both_ways(hub, published):
    """POST /v1/responses through a real publisher to the demo backend's /v1/responses."""
    client = sdk(hub)
    answer = client.responses.create(model="llama", input="Hello", max_output_tokens=6)
    assert answer.object == "response" and answer.status == "completed"
    assert len(answer.output_text.split()) == 6
    assert answer.model == "llama"  # the publisher put the Llm's name back in

    events = list(client.responses.create(model="llama", input=[
        {"role": "user", "content": "Hello"}], max_output_tokens=4, stream=True))
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert len(text.split()) == 4
    assert events[-1].response.output_text == text
    assert events[0].response.model == events[-1].response.model == "llama"
    assert published.stats()["streams"] == 1
    with pytest.raises(openai.BadRequestError) as bad:
        client.responses.create(model="llama", input=42)
    assert bad.value.param == "input"


def test_errors_map_to_the_sdk_exceptions(hub, published):
    client = sdk(hub)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[{"role": "user",
                                                                "content": "x"}])
    assert missing.value.code == "llm_not_found"
    with pytest.raises(openai.InternalServerError) as offline:
        client.chat.completions.create(model="gone", messages=[{"role": "user",
                                                                "content": "x"}])
    assert offline.value.status_code == 503 and offline.value.code == "publisher_offline"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="llama", messages=[])
    assert bad.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as no_prompt:
        client.post("/completions", body={"model": "llama"}, cast_to=object)
    assert no_prompt.value.param == "prompt"


# --- public Llms (declared in the hub's config) -----------------------------------------

def _closed_port() -> int:
    port = free_port()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


def _public_config(path, upstream, dead_port: int, extra: str = "") -> None:
    path.write_text(f"""
[[llms]]
name = "cloud"
type = "openai"
model = "demo-model"
base_url = "{upstream.base_url}"
api_key_env = "CLOUD_KEY"
tier = "slow"

[[llms]]
name = "cloud-wrong-key"
type = "openai"
model = "demo-model"
base_url = "{upstream.base_url}"
api_key_env = "WRONG_KEY"

[[llms]]
name = "cloud-down"
type = "openai"
model = "x"
base_url = "http://127.0.0.1:{dead_port}/v1"
{extra}""")


@pytest.fixture
def public_hub(tmp_path, backend_factory):
    upstream = backend_factory(api_key="sk-upstream-secret")
    conf = tmp_path / "public.toml"
    _public_config(conf, upstream, _closed_port())
    hub = Hub(tmp_path, env={"CLOUD_KEY": "sk-upstream-secret", "WRONG_KEY": "sk-nope"},
              config=str(conf)).start()
    yield hub, upstream, conf
    hub.stop()


def test_public_llm_is_proxied_to_its_upstream(public_hub):
    hub, upstream, _ = public_hub
    row = hub.llm("cloud")
    assert (row["kind"], row["status"], row["providerSessionId"]) == ("public", "active", None)
    assert row["tier"] == "slow"
    client = sdk(hub)
    answer = client.chat.completions.create(
        model="cloud", messages=[{"role": "user", "content": "Hello"}])
    assert answer.model == "demo-model"
    pieces = [c.choices[0].delta.content for c in client.chat.completions.create(
        model="cloud", messages=[{"role": "user", "content": "Hello"}], stream=True,
        max_tokens=6)]
    assert len("".join(pieces).split()) == 6
    assert len(client.embeddings.create(model="cloud", input="x").data) == 1
    assert len(client.responses.create(model="cloud", input="x",
                                       max_output_tokens=3).output_text.split()) == 3
    assert upstream.stats()["requests"] == 4


def test_public_upstream_errors_keep_their_status(public_hub):
    hub, _, _ = public_hub
    client = sdk(hub)
    with pytest.raises(openai.AuthenticationError) as denied:
        client.chat.completions.create(
            model="cloud-wrong-key", messages=[{"role": "user", "content": "x"}])
    assert denied.value.status_code == 401 and denied.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        list(client.chat.completions.create(
            model="cloud-wrong-key", messages=[{"role": "user", "content": "x"}], stream=True))
    with pytest.raises(openai.InternalServerError) as down:
        client.chat.completions.create(
            model="cloud-down", messages=[{"role": "user", "content": "x"}])
    assert down.value.status_code == 502 and down.value.code == "upstream_unreachable"


def test_publishing_over_a_public_llm_is_a_conflict(public_hub):
    hub, _, _ = public_hub
    from tests.support.publisher import TestPublisher

    r = TestPublisher(hub.url).register("brand-new", "cloud", expect=409)
    assert r["error"]["code"] == "public_llm_conflict"
    assert hub.get("/api/v1/llms/brand-new").status_code == 404  # nothing applied
    assert hub.llm("cloud")["kind"] == "public"


def test_config_changes_to_public_llms_apply_on_restart(public_hub):
    hub, upstream, conf = public_hub
    first_id = hub.llm("cloud")["id"]
    text = conf.read_text()
    text = text.replace('tier = "slow"', 'tier = "fast"')
    text = text[: text.index('[[llms]]\nname = "cloud-down"')]  # removed from config
    text += '[[llms]]\nname = "cloud-2"\ntype = "openai"\nmodel = "demo-model"\n' \
            f'base_url = "{upstream.base_url}"\napi_key_env = "CLOUD_KEY"\n'
    conf.write_text(text)
    hub.restart()
    names = [row["name"] for row in hub.get("/api/v1/llms").json()["llms"]]
    assert names == ["cloud", "cloud-2", "cloud-wrong-key"]
    assert hub.llm("cloud")["tier"] == "fast" and hub.llm("cloud")["id"] == first_id
    answer = sdk(hub).chat.completions.create(
        model="cloud-2", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content


# --- a streamed request's failures and plain answers (hand-driven publisher) ------------

CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "hand",
         "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
ENVELOPE = {"error": {"message": "context too long", "type": "invalid_request_error",
                      "code": "context_length_exceeded", "param": "messages"}}


@pytest.mark.parametrize("status, body, message, code", [
    (400, ENVELOPE, "context too long", "context_length_exceeded"),  # passed as is
    (500, {"detail": "boom"}, "the backend answered 500: boom", "publisher_error"),
    (500, {"error": "model not loaded"}, "the backend answered 500: model not loaded",
     "publisher_error"),
    (418, {"teapot": ["short", "stout"]}, "the backend answered 418", "publisher_error"),
    (503, "upstream overloaded", "the backend answered 503: upstream overloaded",
     "publisher_error"),
])
def test_an_error_after_chunks_is_an_openai_envelope(hub, publisher, status, body, message,
                                                     code):
    publisher.register("hand")
    stream = publisher.open()
    client = sdk(hub)
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(client.chat.completions.create, model="hand", stream=True,
                              messages=[{"role": "user", "content": "x"}])
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"chunk": {"data": json.dumps(CHUNK)}})
        chunks = iter(pending.result())  # the 200 went out with the first chunk
        assert next(chunks).choices[0].delta.content == "hi"
        publisher.result(task["taskId"], {"status": status, "body": body})
        with pytest.raises(openai.APIError) as failed:
            next(chunks)
    assert failed.value.message == message
    assert failed.value.body["code"] == code
    if body is ENVELOPE:
        assert failed.value.body == ENVELOPE["error"]
    else:
        assert failed.value.body["type"] == ("invalid_request_error" if status < 500
                                             else "server_error")


def test_the_error_event_on_the_wire(hub, publisher):
    publisher.register("hand")
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, f"{hub.url}/v1/chat/completions", stream=True,
                              timeout=20, json={"model": "hand", "stream": True,
                                                "messages": [{"role": "user", "content": "x"}]})
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"chunk": {"data": json.dumps(CHUNK)}})
        response = pending.result()
        publisher.result(task["taskId"], {"status": 502, "body": {"oops": 1}})
        items = [i for i in sse.parse(sse.iter_lines(response.iter_content(chunk_size=None)))
                 if not isinstance(i, str)]
    assert [i.event for i in items] == ["message", "error"]  # "message": SSE default
    assert items[-1].json() == {"error": {"message": "the backend answered 502",
                                          "type": "server_error", "code": "publisher_error",
                                          "param": None}}


def test_a_streamed_request_answered_with_one_json_body(hub, publisher):
    """A backend that ignores `stream` answers one JSON body: before any byte went out the
    client gets it as plain JSON (status and body verbatim); once the stream began (here a
    keepalive comment, keepalive_s = 1), as one `data:` event, then [DONE]."""
    publisher.register("hand")
    stream = publisher.open()
    answer = {"id": "x", "object": "chat.completion",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole"}}]}
    body = {"model": "hand", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, f"{hub.url}/v1/chat/completions", json=body,
                              timeout=20)
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"status": 200, "body": answer})
        plain = pending.result()
        assert plain.status_code == 200
        assert plain.headers["Content-Type"].startswith("application/json")
        assert plain.json() == answer

        pending = pool.submit(requests.post, f"{hub.url}/v1/chat/completions", json=body,
                              timeout=20, stream=True)
        task = stream.next_task("infer")
        response = pending.result()  # headers out after keepalive_s with a comment
        assert response.headers["Content-Type"].startswith("text/event-stream")
        publisher.result(task["taskId"], {"status": 200, "body": answer})
        items = list(sse.parse(sse.iter_lines(response.iter_content(chunk_size=None))))
    assert items[0] == "keepalive"
    assert [i.data for i in items[1:]] == [json.dumps(answer, separators=(",", ":")),
                                           "[DONE]"]


def test_cors_headers_reach_a_browser_on_a_real_stream(hub_factory):
    from tests.support.publisher import TestPublisher

    app = "https://app.example"
    hub = hub_factory(cors_origins=f"{app},http://localhost:3000")
    publisher = TestPublisher(hub.url)
    try:
        _cors_on_a_stream(hub, publisher, app)
    finally:
        publisher.close()


def _cors_on_a_stream(hub, publisher, app: str) -> None:
    publisher.register("hand")
    stream = publisher.open()
    preflight = requests.options(f"{hub.url}/v1/chat/completions", timeout=10, headers={
        "Origin": app, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == app
    body = {"model": "hand", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(requests.post, f"{hub.url}/v1/chat/completions", json=body,
                              timeout=20, stream=True, headers={"Origin": app})
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"chunk": {"data": json.dumps(CHUNK), "done": True}})
        response = pending.result()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Access-Control-Allow-Origin"] == app
        assert response.text.endswith("data: [DONE]\n\n")
