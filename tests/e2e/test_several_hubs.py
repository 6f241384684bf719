"""`tether publish` with several hub URLs (docs/protocol.md, Several hub processes): it starts on
the first that answers, in order, and on a loss moves to the next one, wrapping around,
under the same session id. Two independent single-process hubs (SQLite each) stand in for
the processes of a cluster: what is checked here is the publisher's side."""

from __future__ import annotations

import concurrent.futures as cf
import signal

import requests

from tests.support.hub import free_port, wait_until
from tests.support.procs import publish_config, wait_status


def backend_spec(backend, name: str = "llama") -> dict:
    return {"name": name, "model": "demo-model", "base_url": backend.base_url}


def chat(hub, name: str = "llama", **extra) -> requests.Response:
    body = {"messages": [{"role": "user", "content": "Hello"}], **extra}
    return requests.post(f"{hub.url}/api/v1/llms/{name}/infer", json=body, timeout=60,
                         headers={"Connection": "close"})


def connected(publish, hub) -> int:
    """How often the publisher said it connected to `hub`."""
    return publish.logs().count(f"connected to {hub.url}\n")


def session_of(publish) -> str:
    """The session id the publisher keeps (its file exists, empty, until a hub gave one)."""
    return wait_until(lambda: publish.session_file.exists()
                      and publish.session_file.read_text().strip(), timeout=20)


def serves_through(hub, publish, session: str, connections: int = 1) -> None:
    """The publisher's stream is open on `hub` under `session`, and a request through
    `hub` reaches the backend and comes back."""
    row = wait_status(hub, "llama", "active", timeout=20)
    assert row["providerSessionId"] == session
    wait_until(lambda: connected(publish, hub) >= connections, timeout=20)
    r = chat(hub)
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"  # it went through the publisher
    assert r.json()["model"] == "llama"  # under the Llm's name


def test_the_publisher_moves_to_the_next_hub_on_a_loss_and_wraps_around(
        hub, hub_factory, backend_factory, publish_factory, tmp_path):
    a = hub
    b = hub_factory(database_url=f"sqlite:///{tmp_path / 'b.db'}")
    backend = backend_factory()
    publish = publish_factory([backend_spec(backend)], hub_url=[a.url, b.url])

    session = session_of(publish)
    serves_through(a, publish, session)
    assert connected(publish, b) == 0  # the first URL answered: B was never used
    assert b.get("/api/v1/llms/llama").status_code == 404

    # A dies with a task under way at the backend. Its result, ready after the move, goes
    # to B (the hub client's pool was swapped): B never handed it out and refuses it, 404
    # `task_not_found` in its result channel's answer (sent to dead A, it would never be
    # answered).
    with cf.ThreadPoolExecutor(1) as run:
        cut = run.submit(chat, a, demo_delay_s=3)
        wait_until(lambda: backend.stats()["inflight"] == 1, timeout=10)
        a.stop(signal.SIGKILL)
        assert isinstance(cut.exception(timeout=30), requests.ConnectionError)
    serves_through(b, publish, session)
    assert f"moving to the next hub: {b.url}" in publish.logs()
    wait_until(lambda: "task_not_found" in publish.logs(), timeout=20)
    assert "status=hub-unreachable" not in publish.logs()

    a.start()  # A is back (same port, same database); then B dies: past the last, the first
    b.stop(signal.SIGKILL)
    serves_through(a, publish, session, connections=2)
    assert publish.session_file.read_text().strip() == session
    assert backend.stats()["completed"] == 4


def test_a_first_url_that_refuses_connections_is_skipped(
        hub, backend_factory, publish_factory):
    refused = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    backend = backend_factory()
    publish = publish_factory([backend_spec(backend)], hub_url=[refused, hub.url])
    serves_through(hub, publish, session_of(publish))
    assert "hub session lost: cannot connect to" in publish.logs()


def test_a_bad_hub_list_exits_2_naming_each_entry(tmp_path):
    conf, done = publish_config(tmp_path, 'hub = ["http://127.0.0.1:1", "127.0.0.1:2"]\n'
                                '[[backends]]\nname = "a"\nmodel = "m"\n'
                                'base_url = "http://x/v1"\nmax_concurrency = 0\n')
    assert done.returncode == 2
    assert f"{conf}: hub[1]: must be an http(s) URL (not '127.0.0.1:2')" in done.stderr
    assert f"{conf}: backends[0].max_concurrency:" in done.stderr  # reported together
    conf, done = publish_config(tmp_path, 'hub = []\n[[backends]]\nname = "a"\nmodel = "m"\n'
                                'base_url = "http://x/v1"\n')
    assert done.returncode == 2 and f"{conf}: hub: must list at least one hub URL" in done.stderr
