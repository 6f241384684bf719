"""Ollama's own API on the hub (docs/protocol.md, Ollama-compatible), driven by the official
`ollama` Python client, unmodified, against a real hub, real `tether publish` processes and
the demo backend (an OpenAI-compatible server: the routes translate, whatever serves)."""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import textwrap

import ollama
import pytest
import requests

from tests.e2e.test_security import make_key
from tests.support.hub import Hub, free_port, wait_until
from tests.support.procs import TETHER, demo_ready, wait_status

HELLO = [{"role": "user", "content": "Hello"}]


def client(hub, **kw) -> ollama.Client:
    return ollama.Client(host=hub.url, timeout=30, **kw)


def v1(hub, endpoint: str, body: dict, **kw) -> dict:
    r = hub.post(f"/v1/{endpoint}", body, **kw)
    assert r.status_code == 200, r.text
    return r.json()


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


def test_list_ps_show_and_version(hub, published, publisher):
    details = {"format": "gguf", "family": "llama", "families": ["llama"],
               "parameter_size": "8.0B", "quantization_level": "Q4_K_M", "extra": "kept out"}
    publisher.register({"name": "described", "type": "openai", "model": "llama3.1:8b",
                        "extraConfig": {"ollama": {"details": details}}})
    publisher.open()
    wait_status(hub, "described", "active")
    c = client(hub)

    before = hub.llm("llama")["updatedAt"]
    listed = c.list().models
    after = hub.llm("llama")["updatedAt"]  # a heartbeat may land in between
    v1_names = sorted(m["id"] for m in hub.get("/v1/models").json()["data"])
    assert sorted(m.model for m in listed) == v1_names == ["described", "llama", "sleepy"]
    by_name = {m.model: m for m in listed}
    assert by_name["llama"].modified_at in {dt.datetime.fromisoformat(t) for t in (before,
                                                                                 after)}
    assert (by_name["llama"].size, by_name["llama"].digest) == (0, "")
    assert by_name["llama"].details.family == ""  # nothing known of it
    got = by_name["described"].details
    assert (got.format, got.family, got.families, got.parameter_size,
            got.quantization_level) == ("gguf", "llama", ["llama"], "8.0B", "Q4_K_M")
    raw = hub.get("/api/tags").json()["models"]
    assert {m["name"] for m in raw} == set(v1_names)
    assert "extra" not in next(m for m in raw if m["name"] == "described")["details"]

    running = c.ps().models
    assert sorted(m.model for m in running) == ["described", "llama"]  # sleepy hibernates
    assert all(m.expires_at.year == 9999 for m in running)

    shown = c.show("described")
    assert shown.details.parameter_size == "8.0B"
    assert shown.capabilities == ["completion"] and shown.modelinfo == {}
    for name in ("gone", "nope"):
        with pytest.raises(ollama.ResponseError) as missing:
            c.show(name)
        assert missing.value.status_code == 404
        assert missing.value.error == f"no Llm named {name!r}"

    assert hub.get("/api/version").json() == {"version": "0.12.0"}
    root = hub.get("/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert requests.head(hub.url, timeout=10).status_code == 200


def test_chat_not_streamed_and_streamed(hub, published):
    c = client(hub)
    answer = c.chat(model="llama", messages=HELLO, stream=False)
    expected = v1(hub, "chat/completions", {"model": "llama", "messages": HELLO})
    assert answer.message.role == "assistant"
    assert answer.message.content == expected["choices"][0]["message"]["content"]
    assert (answer.model, answer.done, answer.done_reason) == ("llama", True, "stop")
    assert (answer.prompt_eval_count, answer.eval_count) == (1, 8)
    assert answer.total_duration > 0 and answer.eval_duration > 0
    dt.datetime.fromisoformat(answer.created_at)

    parts = list(c.chat(model="llama", messages=HELLO, stream=True,
                        options={"num_predict": 5, "temperature": 0.2}))
    assert [p.done for p in parts] == [False] * 5 + [True]
    text = "".join(p.message.content for p in parts)
    assert text == " ".join(expected["choices"][0]["message"]["content"].split()[:5])
    last = parts[-1]
    assert (last.model, last.done_reason, last.message.content) == ("llama", "stop", "")
    assert (last.prompt_eval_count, last.eval_count) == (1, 5)  # the hub asked for usage
    assert last.prompt_eval_duration >= 0 and last.eval_duration >= 0
    assert published.stats()["streams"] == 1


def test_generate_as_a_chat_and_raw_as_a_completion(hub, published):
    c = client(hub)
    answer = c.generate(model="llama", prompt="Once upon", system="Be brief", stream=False)
    as_chat = v1(hub, "chat/completions", {"model": "llama", "messages": [
        {"role": "system", "content": "Be brief"}, {"role": "user", "content": "Once upon"}]})
    assert answer.response == as_chat["choices"][0]["message"]["content"]
    assert (answer.done, answer.done_reason, answer.eval_count) == (True, "stop", 8)

    raw = c.generate(model="llama", prompt="[INST] Once upon [/INST]", raw=True,
                     options={"num_predict": 3}, stream=False)
    as_completion = v1(hub, "completions", {"model": "llama", "max_tokens": 3,
                                            "prompt": "[INST] Once upon [/INST]"})
    assert raw.response == as_completion["choices"][0]["text"]
    assert raw.eval_count == 3

    parts = list(c.generate(model="llama", prompt="Once upon", stream=True))
    assert "".join(p.response for p in parts) == c.generate(model="llama",
                                                            prompt="Once upon").response
    assert parts[-1].done and parts[-1].eval_count == 8


def test_embed_and_embeddings(hub, published):
    c = client(hub)
    both = c.embed(model="llama", input=["a", "b"])
    expected = v1(hub, "embeddings", {"model": "llama", "input": ["a", "b"]})["data"]
    assert both.model == "llama"
    assert [list(v) for v in both.embeddings] == [d["embedding"] for d in expected]
    assert both.prompt_eval_count == 2
    assert list(c.embed(model="llama", input="a").embeddings[0]) == expected[0]["embedding"]
    assert list(c.embeddings(model="llama", prompt="b").embedding) == expected[1]["embedding"]


def test_a_request_with_nothing_to_generate_loads(hub, published):
    """As Ollama: no messages (or no prompt, no input) answers at once; `ollama run` sends
    one to load the model before the first prompt."""
    c = client(hub)
    loaded = c.chat(model="llama")
    assert (loaded.done, loaded.done_reason, loaded.message.content) == (True, "load", "")
    assert c.generate(model="llama", keep_alive=0).done_reason == "unload"
    assert list(c.embed(model="llama", input=[]).embeddings) == []
    assert published.stats()["requests"] == 0  # nothing reached the backend
    with pytest.raises(ollama.ResponseError) as missing:
        c.chat(model="gone")
    assert missing.value.status_code == 404


def test_errors_in_ollamas_shape_with_the_v1_status(hub, published):
    c = client(hub)
    with pytest.raises(ollama.ResponseError) as missing:
        c.chat(model="nope", messages=HELLO)
    assert (missing.value.status_code, missing.value.error) == (404, "no Llm named 'nope'")
    with pytest.raises(ollama.ResponseError) as streamed:  # before the first line: plain
        list(c.chat(model="nope", messages=HELLO, stream=True))
    assert streamed.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as offline:
        c.generate(model="gone", prompt="x")
    assert offline.value.status_code == 503
    assert offline.value.error == "the publisher of 'gone' is offline"

    # A wrong type is a 400 naming the field; a field the hub does not know is ignored.
    for body, field in (({"messages": "hi"}, "messages"),
                        ({"messages": HELLO, "options": {"temperature": "hot"}},
                         "options.temperature"),
                        ({"messages": HELLO, "format": "xml"}, "format"),
                        ({"messages": [{"content": "no role"}]}, "messages[0].role"),
                        ({}, None)):
        r = hub.post("/api/chat", {"model": "llama", **body} if field else body)
        assert r.status_code == 400, r.text
        assert set(r.json()) == {"error"}
        assert r.json()["error"].startswith(f"{field or 'model'}:"), r.json()
    ok = hub.post("/api/chat", {"model": "llama", "messages": HELLO, "stream": False,
                                "bogus": {"any": 1}, "options": {"mirostat": 2}})
    assert ok.status_code == 200 and ok.json()["done"] is True

    for method, path in (("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/create"),
                         ("DELETE", "/api/delete"), ("POST", "/api/copy")):
        r = requests.request(method, hub.url + path, json={"model": "llama"}, timeout=10)
        assert r.status_code == 404 and r.json() == {"error": f"no route for {method} {path}"}
    wrong = requests.get(f"{hub.url}/api/chat", timeout=10)
    assert wrong.status_code == 405 and set(wrong.json()) == {"error"}
    # The hub's own API keeps the OpenAI envelope.
    assert hub.get("/api/v1/llms/nope").json()["error"]["code"] == "llm_not_found"


def test_keys_as_on_v1(hub_factory, backend_factory, publish_factory, monkeypatch):
    hub = hub_factory(auth="on")
    keys = {role: make_key(hub, role, role) for role in ("publisher", "client")}
    monkeypatch.setenv("TETHER_TEST_PUBLISH_KEY", keys["publisher"])
    backend = backend_factory()
    publish_factory([{"name": "llama", "model": "demo-model", "base_url": backend.base_url}],
                    hub_url=hub.url, key_env="TETHER_TEST_PUBLISH_KEY")
    keyed = client(hub, headers={"Authorization": f"Bearer {keys['client']}"})
    wait_until(lambda: [m.model for m in keyed.ps().models] == ["llama"], timeout=15)
    wait_until(lambda: _stream_open(hub, keys["client"], "llama"), timeout=15)
    assert keyed.chat(model="llama", messages=HELLO).message.content
    assert keyed.show("llama").capabilities == ["completion"]

    for key, status in ((None, 401), ("nonsense", 401), (keys["publisher"], 403)):
        c = client(hub, headers={"Authorization": f"Bearer {key}"} if key else {})
        for call in (c.list, c.ps, lambda c=c: c.chat(model="llama", messages=HELLO),
                     lambda c=c: c.embed(model="llama", input="x")):
            with pytest.raises(ollama.ResponseError) as refused:
                call()
            assert refused.value.status_code == status
            assert isinstance(refused.value.error, str)
    # /api/version and / need no key, like /healthz.
    assert hub.get("/api/version").status_code == 200 and hub.get("/").status_code == 200


def _stream_open(hub: Hub, key: str, name: str) -> bool:
    r = hub.get("/status/state", headers={"Authorization": f"Bearer {key}"})
    return any(row["name"] == name and row["streamOpen"] for row in r.json()["llms"])


# --- every kind of Llm ----------------------------------------------------------------------

def _serves(hub, name: str) -> None:
    """`name` answers every generation route, streamed or not, and is listed and running."""
    c = client(hub)
    assert name in [m.model for m in c.list().models]
    assert name in [m.model for m in c.ps().models]
    answer = c.chat(model=name, messages=HELLO)
    assert answer.model == name and len(answer.message.content.split()) == 8
    parts = list(c.chat(model=name, messages=HELLO, stream=True, options={"num_predict": 4}))
    assert len("".join(p.message.content for p in parts).split()) == 4
    assert parts[-1].done and parts[-1].eval_count == 4 and parts[-1].model == name
    assert len(c.generate(model=name, prompt="x", options={"num_predict": 2}).response
               .split()) == 2
    assert len(c.embed(model=name, input=["x", "y"]).embeddings) == 2


def test_a_virtual_llm_and_a_hibernating_one(hub, published):
    _serves(hub, "llama")
    c = client(hub)
    woken = list(c.chat(model="sleepy", messages=HELLO, stream=True))  # waits for the wake
    assert woken[-1].done and len("".join(p.message.content for p in woken).split()) == 8
    assert hub.llm("sleepy")["status"] == "active"
    assert "sleepy" in [m.model for m in c.ps().models]


def test_a_pool(hub, backend_factory, publish_factory):
    for _ in range(2):
        backend = backend_factory()
        publish_factory([{"name": "pooled", "model": "demo-model",
                          "base_url": backend.base_url, "pool": True}])

    def both_joined() -> bool:
        r = hub.get("/api/v1/llms/pooled")
        return r.status_code == 200 and len(r.json().get("members", [])) == 2

    wait_until(both_joined, timeout=15)
    wait_status(hub, "pooled", "active")
    _serves(hub, "pooled")


def test_a_public_llm(tmp_path, backend_factory):
    upstream = backend_factory()
    conf = tmp_path / "public.toml"
    conf.write_text(f'[[llms]]\nname = "cloud"\ntype = "openai"\nmodel = "demo-model"\n'
                    f'base_url = "{upstream.base_url}"\n')
    hub = Hub(tmp_path, config=str(conf)).start()
    try:
        _serves(hub, "cloud")
    finally:
        hub.stop()


def test_the_demo_prints_an_ollama_example_that_works():
    port = free_port()
    proc = subprocess.Popen([*TETHER, "demo", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        text = demo_ready(proc)
        hub = f"http://127.0.0.1:{port}"
        assert f"OLLAMA_HOST={hub}" in text and f"curl -s {hub}/api/chat" in text
        start = text.index("  from ollama import Client")
        snippet = textwrap.dedent(text[start:text.index("\n\n", start)])
        ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                             timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert len(ran.stdout.split()) == 8  # the demo backend's eight words, streamed
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
