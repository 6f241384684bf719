"""Aliases across hub processes (docs/protocol.md, Aliases; Several hub processes): the
alias's infer crosses the bus to its first target's owner, which passes it on to the next
target there, and every event (who serves it, the answer) comes back to the client's
process; a failover starts its next try from the client's process."""

from __future__ import annotations

import concurrent.futures as cf
from pathlib import Path
from typing import Any

import pytest

from tests.support.hub import Hub, wait_until
from tests.support.publisher import TestPublisher

pytestmark = pytest.mark.timeout(120)

SERVED_BY = "X-Tether-Llm"


def _chat(hub: Hub, name: str, content: str = "hi") -> Any:
    return hub.post("/v1/chat/completions",
                    {"model": name, "messages": [{"role": "user", "content": content}]})


@pytest.fixture
def pair(cluster: Any, backend_factory: Any, tmp_path: Path) -> tuple[Hub, Hub]:
    backend = backend_factory()
    conf = tmp_path / "aliases.toml"
    conf.write_text(
        f'[[llms]]\nname = "cloud"\ntype = "openai"\nmodel = "cloud-model"\n'
        f'base_url = "{backend.base_url}"\n\n'
        '[[aliases]]\nname = "assistant"\ntargets = ["gpu", "cloud"]\n\n'
        '[[aliases]]\nname = "fallible"\ntargets = ["local", "cloud"]\n')
    return cluster(config=str(conf)), cluster(config=str(conf))


def test_an_alias_request_crosses_the_bus_and_is_passed_on_at_the_owner(pair) -> None:
    a, b = pair
    publisher = TestPublisher(b.url)  # its stream on b: b owns gpu
    publisher.register({"name": "gpu", "type": "openai", "model": "m",
                        "initialStatus": "hibernating"})
    stream = publisher.open()

    r = _chat(a, "assistant")
    assert r.status_code == 200, r.text
    assert r.headers[SERVED_BY] == "cloud"
    wake = stream.next_task("wake")  # b started gpu's wake, and passed the request on
    assert wake["llmName"] == "gpu"

    publisher.result(wake["taskId"], {"status": 200, "body": {}})
    wait_until(lambda: a.llm("gpu")["status"] == "active")
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_chat, a, "assistant", "after the wake")
        task = stream.next_task("infer")
        assert task["request"]["model"] == "gpu"
        publisher.result(task["taskId"], {"status": 200, "body": {"model": "gpu", "ok": 1}})
        r = pending.result()
    assert r.status_code == 200, r.text
    assert r.headers[SERVED_BY] == "gpu" and r.json() == {"model": "gpu", "ok": 1}


def test_a_failover_starts_again_from_the_clients_process(pair) -> None:
    a, b = pair
    publisher = TestPublisher(b.url)
    publisher.register("local")
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_chat, a, "fallible")
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"error": {"message": "no GPU", "status": 503}})
        r = pending.result()
    assert r.status_code == 200, r.text
    assert r.headers[SERVED_BY] == "cloud"
    assert r.json()["model"] == "cloud-model"
