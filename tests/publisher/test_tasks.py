"""tasks.run_infer against a real hub, with a backend client that fails in a way nobody
foresaw (a bug): the task is answered at once, never left to `infer_timeout_s`."""

from __future__ import annotations

import concurrent.futures as cf
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tether.common.backend_client import BackendClient
from tether.publisher import tasks
from tether.publisher.config import BackendConfig
from tether.publisher.hub_client import HubClient


class BuggyBackend(BackendClient):
    def call(self, endpoint: str, request: dict[str, Any]) -> tuple[int, Any]:
        raise KeyError("a bug in the publisher")

    def stream(self, endpoint: str, request: dict[str, Any]) -> Iterator[str]:
        yield '{"choices": []}'
        raise KeyError("a bug in the publisher")


@pytest.mark.parametrize("streaming", [False, True])
def test_an_unexpected_exception_answers_the_task_at_once(hub, publisher, caplog, streaming):
    publisher.register("llama")
    stream = publisher.open()
    config = BackendConfig(name="llama", model="m", base_url="http://127.0.0.1:9/v1")
    body = {"messages": [{"role": "user", "content": "Hi"}], "stream": streaming}
    with cf.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(requests.post, f"{hub.url}/api/v1/llms/llama/infer", json=body,
                             timeout=20, headers={"Connection": "close"})
        task = stream.next_task("infer")
        hub_client = HubClient(hub.url, None)
        with caplog.at_level(logging.INFO, "tether.publisher.tasks"):
            tasks.run_infer(task, config, BuggyBackend(config.base_url, None, 1),
                            hub_client, lambda: publisher.session_id)
        hub_client.close()  # no idle keep-alive left to hold up the hub's SIGTERM
        r = answer.result(timeout=10)
    if streaming:  # the first chunk went out: the error ends the stream
        assert r.status_code == 200 and "event: error" in r.text
        assert "publisher_error" in r.text
    else:
        assert r.status_code == 502 and r.json()["error"]["code"] == "publisher_error"
    assert any(task["taskId"] in rec.getMessage() and rec.levelno >= logging.ERROR
               for rec in caplog.records), caplog.text
