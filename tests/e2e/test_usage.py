"""Usage per client key and Llm (docs/protocol.md, Usage), against a real hub, a real
`tether publish` and the demo backend: counted from each answer's `usage` (streamed or not,
OpenAI's routes and Ollama's), flushed in batches and at shutdown, read with
GET /api/v1/usage, `tether usage` and the `tether_tokens_total` counter."""

from __future__ import annotations

import concurrent.futures as cf
import datetime as dt
import json
import subprocess

import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.test_security import call, make_key
from tests.support.hub import wait_until
from tests.support.procs import TETHER
from tests.support.publisher import TestPublisher

HELLO = [{"role": "user", "content": "Hello"}]


def usage_rows(hub, key: str, since: str | None = None) -> list[dict]:
    r = call(hub, "GET", "/api/v1/usage", key, params={"since": since} if since else None)
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def wait_usage(hub, key: str, expected: list[dict], timeout: float = 10) -> None:
    """The API shows `expected` (it trails the live counts by one flush)."""
    wait_until(lambda: usage_rows(hub, key) == expected, timeout=timeout)


def row(key, llm, requests, prompt, completion) -> dict:
    return {"key": key, "llm": llm, "alias": None, "requests": requests,
            "promptTokens": prompt, "completionTokens": completion}


@pytest.fixture
def served(hub_factory, backend_factory, publishing, monkeypatch):
    """A hub with auth on and usage flushed every 0.2 s, serving `llama` (real publisher,
    demo backend); keys: admin `root`, clients `alice` and `bob`."""
    hub = hub_factory(auth="on", usage_flush_s=0.2)
    keys = {name: make_key(hub, role, name) for name, role in (
        ("root", "admin"), ("pub", "publisher"), ("alice", "client"), ("bob", "client"))}
    monkeypatch.setenv("TETHER_TEST_PUBLISH_KEY", keys["pub"])
    backend = backend_factory()
    publishing(hub.url, [{"name": "llama", "model": "demo-model",
                          "base_url": backend.base_url}], key_env="TETHER_TEST_PUBLISH_KEY")

    def open_() -> bool:
        rows = call(hub, "GET", "/status/state", keys["root"]).json()["llms"]
        return any(r["name"] == "llama" and r["streamOpen"] for r in rows)

    wait_until(open_, timeout=20)
    return hub, keys


def test_streamed_and_whole_answers_are_counted_per_key(served):
    hub, keys = served
    alice = openai.OpenAI(base_url=f"{hub.url}/v1", api_key=keys["alice"], max_retries=0)
    bob = openai.OpenAI(base_url=f"{hub.url}/v1", api_key=keys["bob"], max_retries=0)
    words = {"demo_reply": "one two three"}  # the demo backend's answer: 3 tokens

    whole = alice.chat.completions.create(model="llama", messages=HELLO, extra_body=words)
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (1, 3)
    # A stream whose client did not ask for usage: the hub asked, counted, and held the
    # usage chunk back (the client sees exactly what it would without the hub).
    chunks = list(alice.chat.completions.create(model="llama", messages=HELLO, stream=True,
                                                extra_body=words))
    assert chunks and all(c.usage is None and c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "one two three"
    # One that asked gets it, as from OpenAI: a last chunk without choices.
    asked = list(bob.chat.completions.create(model="llama", messages=HELLO, stream=True,
                                             stream_options={"include_usage": True},
                                             extra_body=words))
    assert asked[-1].choices == [] and asked[-1].usage.completion_tokens == 3
    assert all(c.usage is None for c in asked[:-1])
    bob.embeddings.create(model="llama", input=["a", "b"])  # usage: 2 prompt tokens

    wait_usage(hub, keys["root"], [row("alice", "llama", 2, 2, 6),
                                   row("bob", "llama", 2, 3, 3)])
    metrics = call(hub, "GET", "/metrics", keys["root"]).text
    tokens = {s.labels["kind"]: s.value for f in text_string_to_metric_families(metrics)
              for s in f.samples if s.name == "tether_tokens_total"}
    assert tokens == {"prompt": 5, "completion": 9}  # per Llm and kind, no key label


def test_ollama_answers_are_counted(served):
    hub, keys = served
    olla = ollama.Client(host=hub.url, timeout=30,
                         headers={"Authorization": f"Bearer {keys['alice']}"})
    words = {"num_predict": 4}  # max_tokens: the demo backend answers 4 words
    said = olla.chat(model="llama", messages=HELLO, stream=False, options=words)
    assert said.eval_count == 4
    streamed = list(olla.chat(model="llama", messages=HELLO, stream=True, options=words))
    assert streamed[-1].done and streamed[-1].eval_count == 4
    wait_usage(hub, keys["root"], [row("alice", "llama", 2, 2, 8)])


def test_reading_usage(served):
    hub, keys = served
    alice = openai.OpenAI(base_url=f"{hub.url}/v1", api_key=keys["alice"], max_retries=0)
    alice.chat.completions.create(model="llama", messages=HELLO,
                                  extra_body={"demo_reply": "x y"})
    expected = [row("alice", "llama", 1, 1, 2)]
    wait_usage(hub, keys["root"], expected)
    # `since`: a number of hours, or an ISO time (counted from the start of its hour).
    assert usage_rows(hub, keys["root"], since="1") == expected
    now = dt.datetime.now(dt.UTC)
    assert usage_rows(hub, keys["root"], since=now.isoformat()) == expected
    later = (now + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert usage_rows(hub, keys["root"], since=later) == []
    for bad in ("yesterday", "-3", "nan", "2026-13-01"):
        r = call(hub, "GET", "/api/v1/usage", keys["root"], params={"since": bad})
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error"]["code"] == "invalid_request"
        assert r.json()["error"]["param"] == "since"
    # Admin only.
    r = call(hub, "GET", "/api/v1/usage", keys["alice"])
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"

    # `tether usage`: the same, as a table.
    done = subprocess.run([*TETHER, "usage", "--since", "24", "--database-url",
                           hub.settings["database_url"]],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    head, line = done.stdout.splitlines()
    assert head.split() == ["KEY", "LLM", "ALIAS", "REQUESTS", "PROMPT", "TOKENS",
                            "COMPLETION", "TOKENS"]
    assert line.split() == ["alice", "llama", "-", "1", "1", "2"]
    bad = subprocess.run([*TETHER, "usage", "--since", "soon", "--database-url",
                          hub.settings["database_url"]],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "'soon'" in bad.stderr, bad.stderr


def test_counts_are_written_at_shutdown(hub_factory, backend_factory, publishing):
    """Flushed every 10 s (the longest allowed), stopped between two flushes: the last
    counts are written as the hub stops (auth off: counted without a key)."""
    hub = hub_factory(usage_flush_s=10)
    backend = backend_factory()
    publishing(hub.url, [{"name": "llama", "model": "demo-model", "base_url": backend.base_url}])
    wait_until(lambda: any(r["name"] == "llama" and r["streamOpen"]
                           for r in hub.get("/status/state").json()["llms"]), timeout=20)
    sdk = openai.OpenAI(base_url=f"{hub.url}/v1", api_key="none", max_retries=0)

    def ask() -> None:
        sdk.chat.completions.create(model="llama", messages=HELLO,
                                    extra_body={"demo_reply": "z"})

    ask()
    # Seen just after a flush: the next one is 10 s away.
    wait_until(lambda: hub.get("/api/v1/usage").json()["usage"], timeout=15, interval=0.02)
    with cf.ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda _: ask(), range(3)))
    assert hub.get("/api/v1/usage").json()["usage"] == [row(None, "llama", 1, 1, 1)]
    assert hub.stop() == 0
    done = subprocess.run([*TETHER, "usage", "--database-url", hub.settings["database_url"]],
                          capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.splitlines()[1].split() == ["-", "llama", "-", "4", "4", "4"]


def test_invalid_counts_are_ignored_and_the_answer_passes_unchanged(hub_factory):
    """A publisher's answers with bad `usage` objects: each is relayed as it came, counted
    as a request, and adds no tokens; the hub's own errors are not counted at all."""
    hub = hub_factory(usage_flush_s=0.2, infer_timeout_s=1)
    publisher = TestPublisher(hub.url)
    try:
        publisher.register("m1")
        stream = publisher.open()
        bodies = [{"usage": {"prompt_tokens": -1, "completion_tokens": 2}},
                  {"usage": {"prompt_tokens": 1.5, "completion_tokens": 2}},
                  {"usage": {"prompt_tokens": "3", "completion_tokens": 2}},
                  {"usage": {"prompt_tokens": True, "completion_tokens": 2}},
                  {"usage": "lots"},
                  {"usage": {"prompt_tokens": 2, "completion_tokens": 5}}]
        with cf.ThreadPoolExecutor(1) as pool:
            for status, body in [(200, b) for b in bodies] + [(500, bodies[-1])]:
                pending = pool.submit(hub.infer, "m1")
                task = stream.next_task("infer")
                publisher.result(task["taskId"], {"status": status, "body": body})
                assert (pending.result().status_code, pending.result().json()) == (status, body)
            # A stream whose usage chunk is invalid: passed on (the client asked), not counted.
            bad = json.dumps({"choices": [], "usage": {"prompt_tokens": -4}})
            pending = pool.submit(hub.post, "/v1/chat/completions", {
                "model": "m1", "messages": HELLO, "stream": True,
                "stream_options": {"include_usage": True}})
            task = stream.next_task("infer")
            publisher.result(task["taskId"], {"chunk": {"data": bad, "done": True}})
            assert f"data: {bad}" in pending.result().text
            # The hub's own answer (no result in time) is not the Llm's: not counted.
            pending = pool.submit(hub.infer, "m1")
            stream.next_task("infer")
            assert pending.result().json()["error"]["code"] == "infer_timeout"
        wait_usage(hub, None, [row(None, "m1", 8, 4, 10)])
    finally:
        publisher.close()
