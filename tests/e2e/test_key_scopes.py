"""Client keys limited to some Llms (docs/protocol.md, Conventions: key scopes), against a real
hub, a real `tether publish` and the demo backend: every route that names an Llm refuses
another name with 403 `llm_not_allowed` (Ollama's routes in Ollama's shape), the lists show
the key only its names, and `tether keys update` is in force within a second."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator

import ollama
import openai
import pytest

from tests.e2e.test_security import CHAT, call, make_key
from tests.support.hub import wait_until
from tests.support.procs import TETHER

HELLO = [{"role": "user", "content": "Hello"}]


def keys_cli(hub, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*TETHER, "keys", *args, "--database-url",
                           hub.settings["database_url"]],
                          capture_output=True, text=True, timeout=30)


def scoped_key(hub, name: str, llms: str) -> str:
    done = keys_cli(hub, "create", "--role", "client", "--name", name, "--llms", llms)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def scoped(hub_factory, backend_factory, publishing, monkeypatch):
    """A hub with auth on serving `llama` and `other` (one real publisher, one demo backend),
    an admin key and a client key `friend` limited to llama (and a name nobody published)."""
    hub = hub_factory(auth="on")
    root = make_key(hub, "admin", "root")
    monkeypatch.setenv("TETHER_TEST_PUBLISH_KEY", make_key(hub, "publisher", "pub"))
    backend = backend_factory()
    publishing(hub.url, [{"name": name, "model": "demo-model", "base_url": backend.base_url}
                         for name in ("llama", "other")], key_env="TETHER_TEST_PUBLISH_KEY")

    def both_open() -> bool:
        rows = call(hub, "GET", "/status/state", root).json()["llms"]
        return sum(1 for r in rows if r["streamOpen"] and r["status"] == "active") == 2

    wait_until(both_open, timeout=20)
    return hub, root, scoped_key(hub, "friend", "llama, not-published")


def test_every_route_that_names_an_llm_refuses_other_names(scoped):
    hub, root, friend = scoped
    sdk = openai.OpenAI(base_url=f"{hub.url}/v1", api_key=friend, max_retries=0)
    sdk_root = openai.OpenAI(base_url=f"{hub.url}/v1", api_key=root, max_retries=0)
    olla = ollama.Client(host=hub.url, timeout=30, headers={"Authorization": f"Bearer {friend}"})

    # Its own name works on every route.
    assert sdk.chat.completions.create(model="llama", messages=HELLO).choices[0].message.content
    assert sdk.completions.create(model="llama", prompt="Hello").choices[0].text
    assert sdk.embeddings.create(model="llama", input="x").data[0].embedding
    assert sdk.models.retrieve("llama").id == "llama"
    assert call(hub, "POST", "/api/v1/llms/llama/infer", friend, json=CHAT).status_code == 200
    assert call(hub, "GET", "/api/v1/llms/llama", friend).json()["name"] == "llama"
    assert olla.chat(model="llama", messages=HELLO).message.content
    assert olla.generate(model="llama", prompt="Hello").response
    assert olla.embed(model="llama", input="x").embeddings
    assert olla.embeddings(model="llama", prompt="x").embedding
    assert olla.show("llama").capabilities

    # Another name, published or not, is 403 everywhere; the admin key still has it.
    for name in ("other", "nobody-has-this"):
        for endpoint, body in (("chat/completions", {"messages": HELLO}),
                               ("completions", {"prompt": "x"}),
                               ("embeddings", {"input": "x"}),
                               ("responses", {"input": "x"})):
            r = call(hub, "POST", f"/v1/{endpoint}", friend, json={"model": name, **body})
            assert r.status_code == 403 and r.json()["error"]["code"] == "llm_not_allowed", \
                (endpoint, r.text)
        for method, path, body in (("POST", f"/api/v1/llms/{name}/infer", CHAT),
                                   ("GET", f"/api/v1/llms/{name}", None),
                                   ("GET", f"/v1/models/{name}", None)):
            r = call(hub, method, path, friend, json=body)
            assert r.status_code == 403 and r.json()["error"]["code"] == "llm_not_allowed", \
                (path, r.text)
        for path, body in (("/api/chat", {"messages": HELLO}),
                           ("/api/chat", {"messages": HELLO, "stream": False}),
                           ("/api/generate", {"prompt": "x"}),
                           ("/api/generate", {}),  # a load: nothing relayed, still refused
                           ("/api/embed", {"input": "x"}),
                           ("/api/embeddings", {"prompt": "x"}),
                           ("/api/show", {})):
            r = call(hub, "POST", path, friend, json={"model": name, **body})
            assert r.status_code == 403, (path, r.text)
            assert r.json() == {"error": f"this key may not use {name!r}"}, (path, r.text)
    with pytest.raises(openai.PermissionDeniedError) as denied:
        sdk.chat.completions.create(model="other", messages=HELLO, stream=True)
    assert denied.value.code == "llm_not_allowed"
    for refused_call in (lambda: olla.chat(model="other", messages=HELLO),
                         lambda: olla.chat(model="other", messages=HELLO, stream=True),
                         lambda: olla.generate(model="other", prompt="x"),
                         lambda: olla.embed(model="other", input="x"),
                         lambda: olla.embeddings(model="other", prompt="x"),
                         lambda: olla.show("other")):
        with pytest.raises(ollama.ResponseError) as refused:
            result = refused_call()
            if isinstance(result, Iterator):  # a stream: refused when it is read
                list(result)
        assert refused.value.status_code == 403
    assert sdk_root.chat.completions.create(model="other", messages=HELLO).choices


def test_lists_show_a_scoped_key_only_its_names(scoped):
    hub, root, friend = scoped
    assert [m["id"] for m in call(hub, "GET", "/v1/models", friend).json()["data"]] == ["llama"]
    assert [m["name"] for m in call(hub, "GET", "/api/tags", friend).json()["models"]] == [
        "llama"]
    assert [m["name"] for m in call(hub, "GET", "/api/ps", friend).json()["models"]] == [
        "llama"]
    assert [r["name"] for r in call(hub, "GET", "/api/v1/llms", friend).json()["llms"]] == [
        "llama"]
    state = call(hub, "GET", "/status/state", friend).json()  # the status page's too
    assert [r["name"] for r in state["llms"]] == ["llama"]
    # An unscoped key sees them all.
    assert [r["name"] for r in call(hub, "GET", "/api/v1/llms", root).json()["llms"]] == [
        "llama", "other"]


def test_keys_list_shows_scopes_and_bad_scopes_are_refused(scoped):
    hub, _root, _friend = scoped
    listed = keys_cli(hub, "list")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in listed.stdout.splitlines()}
    assert rows["friend"][-1] == "llms=llama,not-published"
    assert rows["root"][-1] == "llms=*"

    bad = keys_cli(hub, "create", "--role", "client", "--name", "x", "--llms", "ok,bad/name")
    assert bad.returncode == 2 and "'bad/name'" in bad.stderr, bad.stderr
    admin = keys_cli(hub, "create", "--role", "admin", "--name", "y", "--llms", "llama")
    assert admin.returncode == 2 and "client keys only" in admin.stderr, admin.stderr
    update = keys_cli(hub, "update", "friend", "--llms", "_reserved")
    assert update.returncode == 2 and "'_reserved'" in update.stderr, update.stderr
    assert keys_cli(hub, "update", "nobody", "--llms", "llama").returncode == 2
    # Nothing was made or changed by a refusal.
    assert keys_cli(hub, "list").stdout == listed.stdout


def test_an_updated_scope_is_in_force_within_a_second(scoped):
    """`tether keys update` (another process, the same database) while the key is in use."""
    hub, _root, friend = scoped
    seen: list[tuple[float, int, int]] = []  # (when, status for llama, status for other)
    stop = threading.Event()

    def use() -> None:
        while not stop.is_set():
            at = time.monotonic()
            seen.append((at, call(hub, "GET", "/api/v1/llms/llama", friend).status_code,
                         call(hub, "GET", "/api/v1/llms/other", friend).status_code))
            time.sleep(0.02)

    user = threading.Thread(target=use, daemon=True)
    user.start()
    try:
        wait_until(lambda: len(seen) >= 5)
        done = keys_cli(hub, "update", "friend", "--llms", "other")
        updated = time.monotonic()
        assert done.returncode == 0, done.stderr
        switched = wait_until(lambda: next(
            (at for at, llama, other in seen if (llama, other) == (403, 200)), None), timeout=5)
        wait_until(lambda: seen[-1][0] > switched + 1.0)
    finally:
        stop.set()
        user.join(5)
    assert switched - updated < 1.0
    assert {(a, b) for at, a, b in seen if at >= switched} == {(403, 200)}
    # Before: the old scope (a read may straddle the switch: llama then still 200).
    assert {(a, b) for at, a, b in seen if at < switched} <= {(200, 403), (200, 200)}
    assert keys_cli(hub, "update", "friend", "--all-llms").returncode == 0
    wait_until(lambda: call(hub, "GET", "/api/v1/llms/llama", friend).status_code == 200,
               timeout=2)
