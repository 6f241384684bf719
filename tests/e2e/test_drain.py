"""SIGTERM drains a real hub (issue 11.4, docs/protocol.md Lifecycle): answers already on their
way still arrive, new infers get an HTTP 503 shutting_down, streams end with `retry:`."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import time

import requests

from tests.support.hub import wait_until

# gunicorn used to close its listener within a second of SIGTERM (its loop polls `alive`
# once a second): a result POSTed later than that was refused.
PAST_LISTENER_CLOSE_S = 2.0


def _shutting_down(r: requests.Response) -> bool:
    return r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"


def _refused_while_draining(hub, since: float, until_s: float) -> None:
    """Infer until `until_s` after `since`: once the drain began, every answer is 503."""
    wait_until(hub.draining, timeout=5)
    while True:
        r = hub.infer("llama", timeout=5)
        assert _shutting_down(r), (r.status_code, r.text)
        if time.monotonic() - since >= until_s:
            return
        time.sleep(0.1)


def test_sigterm_while_a_result_is_on_its_way_the_client_gets_the_answer(
        hub_factory, publisher_factory):
    hub = hub_factory(env={"TETHER_GRACEFUL_TIMEOUT_S": "10"})
    pub = publisher_factory(url=hub.url)
    pub.register("llama")
    stream = pub.open()
    with cf.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(hub.infer, "llama")
        task = stream.next_task("infer")
        sent = time.monotonic()
        hub.proc.send_signal(signal.SIGTERM)
        _refused_while_draining(hub, sent, PAST_LISTENER_CLOSE_S)
        assert not waiting.done()
        posted = pub.result(task["taskId"], {"status": 200, "body": {"answer": 42}})
        assert posted.status_code == 200, posted.text
        answer = waiting.result(timeout=10)
    assert (answer.status_code, answer.json()) == (200, {"answer": 42})
    assert wait_until(lambda: stream.retry, timeout=5) == ["1000"]
    assert hub.proc.wait(15) == 0


def test_sigterm_mid_stream_keeps_taking_chunks_until_done(hub_factory, publisher_factory):
    hub = hub_factory(env={"TETHER_GRACEFUL_TIMEOUT_S": "10"})
    pub = publisher_factory(url=hub.url)
    pub.register("llama")
    stream = pub.open()

    def client() -> list[str]:
        r = requests.post(f"{hub.url}/api/v1/llms/llama/infer", stream=True, timeout=20,
                          json={"messages": [{"role": "user", "content": "hi"}],
                                "stream": True}, headers={"Connection": "close"})
        assert r.status_code == 200, r.text
        return [line for line in r.iter_lines(decode_unicode=True) if line]

    def chunk(i: int, done: bool = False) -> dict:
        return {"data": json.dumps({"choices": [{"delta": {"content": str(i)}}]}),
                "done": done}

    with cf.ThreadPoolExecutor(1) as pool:
        reading = pool.submit(client)
        task = stream.next_task("infer")
        assert pub.result(task["taskId"], {"chunk": chunk(0)}).status_code == 200
        sent = time.monotonic()
        hub.proc.send_signal(signal.SIGTERM)
        _refused_while_draining(hub, sent, PAST_LISTENER_CLOSE_S)
        assert pub.result(task["taskId"], {"chunks": [chunk(1), chunk(2)]}).status_code == 200
        assert pub.result(task["taskId"], {"chunk": chunk(3, done=True)}).status_code == 200
        lines = reading.result(timeout=10)
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    assert [json.loads(d[6:])["choices"][0]["delta"]["content"] for d in data[:-1]] == \
        ["0", "1", "2", "3"]
    assert wait_until(lambda: stream.retry, timeout=5) == ["1000"]
    assert hub.proc.wait(15) == 0


def test_a_task_that_never_ends_is_answered_503_before_the_hub_exits(
        hub_factory, publisher_factory):
    hub = hub_factory(env={"TETHER_GRACEFUL_TIMEOUT_S": "4"})  # drain deadline: 2 s
    pub = publisher_factory(url=hub.url)
    pub.register("llama")
    stream = pub.open()
    with cf.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(hub.infer, "llama")
        stream.next_task("infer")
        sent = time.monotonic()
        hub.proc.send_signal(signal.SIGTERM)
        answer = waiting.result(timeout=10)
        answered_after = time.monotonic() - sent
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "shutting_down"
    assert 1.5 <= answered_after < 4.0, answered_after  # at graceful_timeout - 2 s
    assert wait_until(lambda: stream.retry, timeout=5) == ["1000"]
    assert hub.proc.wait(10) == 0
