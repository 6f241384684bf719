"""`tether publish` for real: hub + publisher + demo backend, each its own process."""

from __future__ import annotations

import concurrent.futures as cf
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest
import requests

from tests.support.chaos import LateStream
from tests.support.hub import free_port, wait_until
from tests.support.procfs import tcp_states
from tests.support.procs import Publish, port_closed, publish_config, publish_once
from tests.support.procs import wait_status as row_status
from tether.common import sse


def wait_status(hub, name: str, status: str, timeout: float = 15,
                connections: int = 1) -> dict:
    """The row's status, then until this test's publishers said `connected` that often: the
    hub sets the status at register, before the publisher's stream is open, and a request
    in that gap is rightly 503 publisher_offline (publisher_grace_s is 0 here)."""
    row = row_status(hub, name, status, timeout)
    wait_until(lambda: sum(log.read_text(errors="replace").count("connected to ")
                           for log in hub.tmp.glob("publisher-*.log")) >= connections,
               timeout=timeout)
    return row


def backend_spec(backend, name: str = "llama", **extra) -> dict:
    return {"name": name, "model": "demo-model", "base_url": backend.base_url, **extra}


def chat(hub, name: str, stream: bool = False, **extra) -> requests.Response:
    body = {"messages": [{"role": "user", "content": "Hello"}], "stream": stream, **extra}
    return requests.post(f"{hub.url}/api/v1/llms/{name}/infer", json=body, timeout=60,
                         stream=stream, headers={"Connection": "close"})


def sse_items(response) -> list:
    return list(sse.parse(sse.iter_lines(response.iter_content(chunk_size=None))))


def first_chunk(response) -> tuple[bytes, Any]:
    """Read a streamed answer up to its first chunk: (that data line, the lines after it)."""
    lines = response.iter_lines()
    return next(line for line in lines if line.startswith(b"data:")), lines


@pytest.fixture
def llama(hub, backend_factory, publish_factory):
    """A demo backend published as llama by a real `tether publish`: (backend, publish)."""
    backend = backend_factory()
    publish = publish_factory([backend_spec(backend)])
    wait_status(hub, "llama", "active")
    return backend, publish


def test_non_streaming_and_streaming_infers_through_a_real_backend(hub, llama):
    backend, _ = llama

    r = chat(hub, "llama")
    assert r.status_code == 200
    answer = r.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "llama"  # the Llm's name; the backend got its own model name
    assert len(answer["choices"][0]["message"]["content"].split()) == 8

    r = chat(hub, "llama", stream=True, demo_chunks=5)
    assert r.status_code == 200
    items = [i for i in sse_items(r) if not isinstance(i, str)]
    assert items[-1].data == "[DONE]"
    words = "".join(i.json()["choices"][0]["delta"]["content"] for i in items[:-1])
    assert len(words.split()) == 5
    assert backend.stats()["models"][-2:] == ["demo-model", "demo-model"]

    r = chat(hub, "llama", demo_status=400)  # a backend's error status reaches the client
    assert r.status_code == 400 and r.json()["error"]["code"] == "demo"


def test_concurrency_is_bounded_per_backend_and_the_rest_wait(hub, backend_factory,
                                                            publish_factory):
    backend = backend_factory()
    publish_factory([backend_spec(backend, max_concurrency=2)])
    wait_status(hub, "llama", "active")
    with cf.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: chat(hub, "llama", demo_delay_s=0.3), range(6)))
    assert all(r.status_code == 200 for r in results)
    assert backend.stats()["max_inflight"] == 2


def test_wake_recipe_starts_the_backend_idle_sleep_stops_it_then_wakes_again(
        hub, backend_factory, publish_factory):
    backend = backend_factory(start=False)  # down: the wake command brings it up
    spec = backend_spec(backend, idle_sleep_s=1.5, wake_timeout_s=30,
                        wake={"command": backend.command()},
                        sleep={"command": backend.kill_command()})
    publish_factory([spec])
    wait_status(hub, "llama", "hibernating")
    assert port_closed(backend.port)

    r = chat(hub, "llama")
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"
    assert backend.up()
    assert hub.llm("llama")["status"] == "active"

    # Idle: the sleep recipe really stops it, and the hub hears `hibernating`.
    wait_status(hub, "llama", "hibernating", timeout=15)
    wait_until(lambda: port_closed(backend.port), timeout=5)

    r = chat(hub, "llama", stream=True)  # and the next request wakes it again
    assert r.status_code == 200
    assert [i for i in sse_items(r) if not isinstance(i, str)][-1].data == "[DONE]"
    assert backend.up()


def test_a_client_disconnect_cancels_the_backend_request(hub, llama):
    backend, _ = llama
    r = chat(hub, "llama", stream=True, demo_chunks=50, demo_delay_s=0.2)
    first, _ = first_chunk(r)
    assert b"chat.completion.chunk" in first
    r.raw._fp.fp.raw._sock.shutdown(2)  # the client goes away mid-stream
    r.close()
    wait_until(lambda: backend.stats()["aborted"] == 1, timeout=8)
    stats = backend.stats()
    assert stats["completed"] == 0 and stats["inflight"] == 0


def test_publisher_survives_a_hub_restart(hub, llama):
    _, publish = llama
    session = publish.session_file.read_text().strip()
    hub.restart()
    assert hub.llm("llama")["status"] in ("inactive", "active")
    row = wait_status(hub, "llama", "active", timeout=20, connections=2)
    assert row["providerSessionId"] == session  # sticky across the restart
    assert chat(hub, "llama").status_code == 200


def test_backend_dying_mid_stream_is_an_error_not_a_hang(hub, llama):
    backend, _ = llama
    r = chat(hub, "llama", stream=True, demo_chunks=100, demo_delay_s=0.1)
    _, lines = first_chunk(r)
    backend.kill(signal.SIGKILL)
    rest = list(sse.parse(line.decode() for line in lines))
    events = [i for i in rest if not isinstance(i, str)]
    assert events[-1].event == "error"
    assert events[-1].json()["error"]["code"] == "publisher_error"

    r = chat(hub, "llama")  # and with the backend gone, a plain request is a 502
    assert r.status_code == 502
    assert "unreachable" in r.json()["error"]["message"]


class _WakeListener(BaseHTTPRequestHandler):
    started: list = []
    argv: list = []  # not `command`: BaseHTTPRequestHandler uses that for the method

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        type(self).started.append(subprocess.Popen(self.argv))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_http_wake_recipe(hub, backend_factory, publish_factory):
    backend = backend_factory(start=False)
    handler = type("Listener", (_WakeListener,), {"started": [], "argv": backend.command()})
    server = HTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/wake"
        publish_factory([backend_spec(backend, wake={"http": {"method": "POST", "url": url,
                                                               "body": {"host": "gpu"}}})])
        wait_status(hub, "llama", "hibernating")
        assert chat(hub, "llama").status_code == 200
        assert len(handler.started) == 1
    finally:
        server.shutdown()
        for proc in handler.started:
            proc.terminate()
            proc.wait(5)


def test_a_failing_wake_reaches_the_client(hub, backend_factory, publish_factory):
    backend = backend_factory(start=False)
    publish_factory([backend_spec(backend, wake={"command": ["false"]}, wake_timeout_s=5)])
    wait_status(hub, "llama", "hibernating")
    r = chat(hub, "llama")
    assert r.status_code == 503 and r.json()["error"]["code"] == "wake_failed"
    # How the recipe ended, never its output (which stays in the publisher's log).
    assert r.json()["error"]["message"] == "could not wake 'llama': the wake recipe exited 1"
    assert hub.llm("llama")["status"] == "hibernating"


def test_a_down_backend_without_a_wake_recipe_is_published_once_up(
        hub, backend_factory, publish_factory):
    backend = backend_factory(start=False)
    publish = publish_factory([backend_spec(backend)], probe_interval_s=0.3)
    wait_until(lambda: "no backend is up yet; waiting" in publish.logs())  # its decision
    assert hub.get("/api/v1/llms/llama").status_code == 404
    backend.start()
    wait_status(hub, "llama", "active", timeout=15)
    assert chat(hub, "llama").status_code == 200


def test_bad_publisher_config_exits_2_naming_the_key(tmp_path):
    conf, done = publish_config(tmp_path, 'hub = "http://127.0.0.1:1"\n[[backends]]\n'
                                'name = "a"\nmodel = "m"\nbase_url = "http://x/v1"\n'
                                'max_concurency = 3\n')
    assert done.returncode == 2
    assert str(conf) in done.stderr and "max_concurency" in done.stderr
    done = publish_once("--hub", "http://h", "--backend", "http://x/v1", "--name", "a")
    assert done.returncode == 2 and "--name and --model together" in done.stderr


def test_a_stream_after_the_hub_dropped_idle_connections_still_relays(
        hub_factory, backend_factory, tmp_path):
    """The hub closes idle keep-alive connections after http_keepalive_s. A streamed
    upload must not pick such a stale connection (it cannot be sent twice)."""
    hub = hub_factory(http_keepalive_s=1)
    publish = Publish(tmp_path, hub.url, [backend_spec(backend_factory())]).start()
    try:
        wait_status(hub, "llama", "active")
        for _ in range(2):
            r = chat(hub, "llama", stream=True, demo_chunks=3)
            items = [i for i in sse_items(r) if not isinstance(i, str)]
            assert items[-1].data == "[DONE]" and len(items) == 4
            stale_pool(publish, hub)
    finally:
        publish.stop()


def stale_pool(publish, hub) -> None:
    """Wait until the hub has closed every idle connection the publisher keeps to it: on
    the publisher's side each is then CLOSE_WAIT (closed by the hub, still pooled), and
    only its task stream is still ESTABLISHED."""
    assert publish.proc is not None

    def stale() -> bool:
        states = tcp_states(publish.proc.pid, hub.port)
        return states.count("ESTABLISHED") == 1 and "CLOSE_WAIT" in states

    wait_until(stale, timeout=10)


def test_a_crashed_backend_actor_is_restarted_then_left_down_after_too_many(
        hub, backend_factory, publish_factory, monkeypatch):
    """A bug that kills a BackendActor: the publisher restarts it (its Llm keeps serving);
    after too many crashes it leaves it down (hibernating: a request fails its wake at once)
    and keeps serving the other backends, without reconnecting in a loop."""
    monkeypatch.setenv("TETHER_FAULT_INJECTION", "1")  # SIGUSR1 crashes the first backend
    backend = backend_factory()
    publish = publish_factory([backend_spec(backend), backend_spec(backend, name="other")])
    wait_status(hub, "llama", "active")
    wait_status(hub, "other", "active")

    publish.proc.send_signal(signal.SIGUSR1)
    wait_until(lambda: "restarted the actor of backend llama" in publish.logs())
    assert chat(hub, "llama").status_code == 200

    for crashes in range(2, 7):
        publish.proc.send_signal(signal.SIGUSR1)
        if crashes <= 5:
            wait_until(lambda n=crashes: publish.logs().count(
                "restarted the actor of backend llama") == n)
    wait_until(lambda: "leaving it down" in publish.logs())
    wait_status(hub, "llama", "hibernating")
    started = time.monotonic()
    r = chat(hub, "llama")
    assert r.status_code == 503 and r.json()["error"]["code"] == "wake_failed"
    assert time.monotonic() - started < 5
    assert chat(hub, "other").status_code == 200
    assert publish.proc.poll() is None
    assert "reconnecting" not in publish.logs() and "hub session" not in publish.logs()


def test_a_wake_that_raises_fails_fast_and_does_not_wedge_the_backend(
        hub, backend_factory, publish_factory):
    """send_wol raising OSError (an unresolvable broadcast address) used to kill the wake
    greenlet silently: `waking` stayed set and every request waited for the hub's
    wake_timeout_s. Now each request gets 503 wake_failed at once."""
    backend = backend_factory(start=False)
    publish_factory([backend_spec(backend, wake={"wol": {"mac": "aa:bb:cc:dd:ee:ff",
                                                          "broadcast": "no-such-host.invalid"}},
                                  wake_timeout_s=5)])
    wait_status(hub, "llama", "hibernating")
    for _ in range(2):
        body = {"messages": [{"role": "user", "content": "Hello"}]}
        r = requests.post(f"{hub.url}/api/v1/llms/llama/infer", json=body, timeout=15)
        assert r.status_code == 503 and r.json()["error"]["code"] == "wake_failed", r.text


def test_a_name_held_elsewhere_does_not_keep_the_other_backends_offline(
        hub, backend_factory, publish_factory, publisher_factory):
    squatter = publisher_factory()
    squatter.register("llama")
    stream = squatter.open()  # holds llama active under another session
    other = publisher_factory()
    r = other.register("fresh", "llama", expect=409)
    assert r["error"]["code"] == "llm_owned_by_other_session"
    assert r["error"]["param"] == "providers[1].name"

    backend = backend_factory()
    publish = publish_factory([backend_spec(backend), backend_spec(backend, name="other")],
                              probe_interval_s=0.3)
    row = wait_status(hub, "other", "active")
    assert hub.llm("llama")["providerSessionId"] == squatter.session_id
    assert chat(hub, "other").status_code == 200
    # Several retries of the held name (each a register the hub refuses): still logged once.
    wait_until(lambda: hub.metric("tether_http_responses_total", method="POST", status="409",
                                  route="/api/v1/llms/_provider-register") >= 5)
    assert publish.logs().count("llama is published by another session") == 1

    stream.close()  # the squatter goes away: its row turns inactive, the retry takes it
    wait_until(lambda: (lambda r: r["providerSessionId"] == row["providerSessionId"] and
                        r["status"] == "active")(hub.llm("llama")), timeout=10)
    assert chat(hub, "llama").status_code == 200
    assert publish.logs().count("llama is registered again") == 1
    assert publish.logs().count("llama is published by another session") == 1


def test_sigterm_lets_running_tasks_finish_and_answers_the_rest(
        hub_factory, backend_factory, publish_factory):
    """SIGTERM: a task that finishes within drain_timeout_s gets its answer; one waiting
    for a slot is answered at once (never started); one still running at the deadline is
    answered with an error; the process then exits 0. Before, every task was dropped and
    its client waited publisher_grace_s (30 s here) for 503."""
    hub = hub_factory(publisher_grace_s=30)
    backend = backend_factory()
    publish = publish_factory([backend_spec(backend, max_concurrency=1)], hub_url=hub.url,
                              drain_timeout_s=3)
    wait_status(hub, "llama", "active")
    with cf.ThreadPoolExecutor(2) as pool:
        short = pool.submit(chat, hub, "llama", demo_delay_s=1.5)
        wait_until(lambda: backend.stats()["inflight"] == 1)
        queued = pool.submit(chat, hub, "llama")  # waits at the hub for the slot
        wait_until(lambda: hub.waiting("llama") == 2)  # the hub holds it, behind the first
        started = time.monotonic()
        publish.proc.send_signal(signal.SIGTERM)
        assert short.result(timeout=10).status_code == 200
        r = queued.result(timeout=10)
        assert r.status_code == 503 and "not started" in r.json()["error"]["message"]
        assert time.monotonic() - started < 5
    assert publish.proc.wait(15) == 0

    publish = publish_factory([backend_spec(backend)], hub_url=hub.url, drain_timeout_s=1)
    wait_status(hub, "llama", "active", connections=2)
    with cf.ThreadPoolExecutor(1) as pool:
        long = pool.submit(lambda: chat(hub, "llama", stream=True, demo_chunks=40,
                                        demo_delay_s=0.25).text)
        wait_until(lambda: backend.stats()["inflight"] == 1)
        started = time.monotonic()
        publish.proc.send_signal(signal.SIGTERM)
        text = long.result(timeout=15)  # a stream under way ends with an error event
        assert "event: error" in text and "publisher_disconnected" in text, text[-300:]
        assert time.monotonic() - started < 6
    assert publish.proc.wait(15) == 0
    wait_until(lambda: backend.stats()["aborted"] == 1, timeout=8)  # the call was closed


def test_sigterm_answers_a_task_the_hub_sent_as_the_last_answer_freed_its_slot(
        hub_factory, backend_factory, publish_factory):
    """The hub sends a request waiting for the slot the moment the answer before it frees
    that slot: on a slow link, or from a busy hub, the frame reaches a draining publisher
    after that last answer was confirmed. The publisher closed its stream at that
    confirmation, and the task waited publisher_grace_s (30 s here) for 503 (CI saw it under
    load). Now the stream stays open until quiet, and the task is refused at once."""
    hub = hub_factory(publisher_grace_s=30)
    backend = backend_factory()
    link = LateStream(hub.port, b"GET /api/v1/llms/_provider-stream", delay_s=0.3)
    try:
        publish = publish_factory([backend_spec(backend, max_concurrency=1)],
                                  hub_url=link.url, drain_timeout_s=10)
        wait_status(hub, "llama", "active")
        with cf.ThreadPoolExecutor(2) as pool:
            short = pool.submit(chat, hub, "llama", demo_delay_s=1.5)
            wait_until(lambda: backend.stats()["inflight"] == 1)
            queued = pool.submit(chat, hub, "llama")
            wait_until(lambda: hub.waiting("llama") == 2)
            publish.proc.send_signal(signal.SIGTERM)
            assert short.result(timeout=10).status_code == 200
            r = queued.result(timeout=10)
            assert r.status_code == 503 and "not started" in r.json()["error"]["message"]
        assert publish.proc.wait(15) == 0
        assert backend.stats()["requests"] == 1  # the queued one never reached the backend
    finally:
        link.close()


def test_a_sleep_recipe_that_raises_does_not_wedge_the_backend(
        hub, backend_factory, publish_factory):
    """The sleep greenlet dying (send_wol raising OSError) left `sleeping` set: every later
    task waited in the queue forever. Now the sleep fails, the backend stays awake."""
    backend = backend_factory()
    bad = {"wol": {"mac": "aa:bb:cc:dd:ee:ff", "broadcast": "no-such-host.invalid"}}
    publish = publish_factory([backend_spec(backend, idle_sleep_s=0.3, sleep=bad)])
    wait_status(hub, "llama", "active")
    wait_until(lambda: "sleep recipe of llama failed" in publish.logs())
    body = {"messages": [{"role": "user", "content": "Hello"}]}
    r = requests.post(f"{hub.url}/api/v1/llms/llama/infer", json=body, timeout=15)
    assert r.status_code == 200
    assert hub.llm("llama")["status"] == "active"
