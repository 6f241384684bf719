"""Usage is summed across hub processes (docs/protocol.md, Usage): each process counts the
answers its own clients received and adds them to the shared buckets (PostgreSQL)."""

from __future__ import annotations

import concurrent.futures as cf

import openai

from tests.e2e.test_security import call, make_key
from tests.support.hub import wait_until

HELLO = [{"role": "user", "content": "Hello"}]


def test_usage_from_two_processes_is_summed(cluster, backend_factory, publishing, monkeypatch):
    a = cluster(auth="on", usage_flush_s=0.2)
    b = cluster(auth="on", usage_flush_s=0.2)
    keys = {name: make_key(a, role, name) for name, role in (
        ("root", "admin"), ("pub", "publisher"), ("alice", "client"))}
    monkeypatch.setenv("TETHER_TEST_PUBLISH_KEY", keys["pub"])
    backend = backend_factory()
    publishing(a.url, [{"name": "llama", "model": "demo-model", "base_url": backend.base_url}],
               key_env="TETHER_TEST_PUBLISH_KEY")
    clients = {hub.url: openai.OpenAI(base_url=f"{hub.url}/v1", api_key=keys["alice"],
                                      max_retries=0) for hub in (a, b)}

    def open_on(hub) -> bool:
        rows = call(hub, "GET", "/status/state", keys["root"]).json()["llms"]
        return any(r["name"] == "llama" and r["streamOpen"] for r in rows)

    wait_until(lambda: open_on(a) and open_on(b), timeout=30)

    def chat(args: tuple[str, bool]) -> None:
        url, streamed = args
        words = {"demo_reply": "one two three"}
        if streamed:
            list(clients[url].chat.completions.create(model="llama", messages=HELLO,
                                                      stream=True, extra_body=words))
        else:
            clients[url].chat.completions.create(model="llama", messages=HELLO,
                                                 extra_body=words)

    # Streamed and whole answers through both processes, at once: 8 requests.
    with cf.ThreadPoolExecutor(4) as pool:
        list(pool.map(chat, [(hub.url, streamed) for hub in (a, b) for streamed in (False, True)
                             for _ in range(2)]))
    expected = [{"key": "alice", "llm": "llama", "alias": None, "requests": 8,
                 "promptTokens": 8, "completionTokens": 8 * 3}]
    for hub in (a, b):  # either process reads the sum
        wait_until(lambda hub=hub: call(hub, "GET", "/api/v1/usage", keys["root"])
                   .json()["usage"] == expected, timeout=10)
