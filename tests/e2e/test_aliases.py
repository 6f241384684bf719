"""Aliases: ordered fallbacks that never make a client wait for a wake (docs/protocol.md,
Aliases; issue 25.1). Real processes: a hub with an alias table, a publisher driven by hand
(so the test holds a wake open as long as it likes), and a public Llm in front of the demo
backend, a real HTTP server.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from tests.support.hub import Hub, wait_until
from tests.support.llama import sdk
from tests.support.publisher import TestPublisher

SERVED_BY = "X-Tether-Llm"


def _config(tmp: Path, backend_url: str, aliases: dict[str, list[str]]) -> Path:
    text = (f'[[llms]]\nname = "cloud"\ntype = "openai"\nmodel = "cloud-model"\n'
            f'base_url = "{backend_url}"\n')
    for name, targets in aliases.items():
        text += f'\n[[aliases]]\nname = "{name}"\ntargets = {json.dumps(targets)}\n'
    path = tmp / "aliases.toml"
    path.write_text(text)
    return path


@pytest.fixture
def backend(backend_factory: Any) -> Any:
    return backend_factory()


@pytest.fixture
def alias_hub(tmp_path: Path, backend: Any) -> Any:
    hubs: list[Hub] = []

    def make(aliases: dict[str, list[str]], **settings: Any) -> Hub:
        conf = _config(tmp_path, backend.base_url, aliases)
        hubs.append(Hub(tmp_path, config=str(conf), **settings).start())
        return hubs[-1]

    yield make
    for hub in hubs:
        hub.stop()


def _chat(hub: Hub, name: str, content: str = "hi", timeout: float = 30,
          **body: Any) -> requests.Response:
    return hub.post("/v1/chat/completions", {
        "model": name, "messages": [{"role": "user", "content": content}], **body},
        timeout=timeout)


def _answer(publisher: TestPublisher, task: dict, content: str, status: int = 200) -> None:
    publisher.result(task["taskId"], {"status": status, "body": {
        "model": task["request"]["model"], "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content},
             "finish_reason": "stop"}]}})


def test_a_sleeping_first_target_wakes_while_the_backstop_answers(alias_hub, backend):
    """Nobody waits for the wake: the alias is served by the public Llm while the test holds
    the first target's wake open; one wake however many requests; once it succeeds, the
    first target takes the next requests. The answers and the metrics name the target."""
    hub = alias_hub({"assistant": ["gpu", "cloud"]})
    publisher = TestPublisher(hub.url)
    publisher.register({"name": "gpu", "type": "openai", "model": "m",
                        "initialStatus": "hibernating"}, canary=True)
    stream = publisher.open()

    client = sdk(hub)
    first = client.chat.completions.with_raw_response.create(
        model="assistant", messages=[{"role": "user", "content": "one"}])
    assert first.headers[SERVED_BY] == "cloud"
    assert first.parse().model == "cloud-model"  # the upstream's answer, as it said it
    wake = stream.next_task("wake")
    assert wake["llmName"] == "gpu"
    second = client.chat.completions.with_raw_response.create(
        model="assistant", messages=[{"role": "user", "content": "two"}], stream=True)
    assert second.headers[SERVED_BY] == "cloud"
    assert "".join(c.choices[0].delta.content or "" for c in second.parse()
                   if c.choices)
    assert publisher.sent(stream) == []  # still the one wake, and no infer reached gpu
    assert hub.llm("gpu")["status"] == "hibernating"

    def serving() -> str | None:
        state = hub.get("/status/state").json()
        return next(a["serving"] for a in state["aliases"] if a["name"] == "assistant")

    assert serving() == "cloud"  # /status: which target takes the alias's requests now
    publisher.result(wake["taskId"], {"status": 200, "body": {"ok": True}})
    wait_until(lambda: hub.llm("gpu")["status"] == "active")
    wait_until(lambda: serving() == "gpu")
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_chat, hub, "assistant", "three")
        task = stream.next_task("infer")
        assert task["llmName"] == "gpu"
        assert task["request"]["model"] == "gpu"  # the task names its target
        _answer(publisher, task, "from the gpu")
        r = pending.result()
    assert r.status_code == 200, r.text
    assert r.headers[SERVED_BY] == "gpu"
    assert r.json()["model"] == "gpu"
    assert r.json()["choices"][0]["message"]["content"] == "from the gpu"

    assert hub.metric("tether_alias_requests_total", alias="assistant", llm="cloud",
                      code="200") == 2
    assert hub.metric("tether_alias_requests_total", alias="assistant", llm="gpu",
                      code="200") == 1
    assert hub.metric("tether_requests_total", llm="gpu", endpoint="chat/completions",
                      code="200") == 1


def test_a_direct_request_waits_for_the_wake_an_alias_started(alias_hub):
    """The wake an alias request starts is the name's one wake: a direct request joins it,
    and is served when it succeeds."""
    hub = alias_hub({"assistant": ["gpu", "cloud"]})
    publisher = TestPublisher(hub.url)
    publisher.register({"name": "gpu", "type": "openai", "model": "m",
                        "initialStatus": "hibernating"}, canary=True)
    stream = publisher.open()
    assert _chat(hub, "assistant").headers[SERVED_BY] == "cloud"
    wake = stream.next_task("wake")
    with cf.ThreadPoolExecutor(1) as pool:
        direct = pool.submit(_chat, hub, "gpu", "direct")
        wait_until(lambda: hub.waiting("gpu") == 1)
        assert publisher.sent(stream) == []  # no second wake
        publisher.result(wake["taskId"], {"status": 204, "body": None})
        task = stream.next_task("infer")
        _answer(publisher, task, "woken")
        r = direct.result()
    assert r.status_code == 200 and r.headers[SERVED_BY] == "gpu"


def test_with_no_target_that_can_serve_now_it_waits_for_the_first_wake(alias_hub):
    """No target can serve now (the public Llm is not among them, the second is unknown):
    the request waits for the first hibernating target's wake, as a direct one would."""
    hub = alias_hub({"assistant": ["gpu", "not-published"]})
    publisher = TestPublisher(hub.url)
    publisher.register({"name": "gpu", "type": "openai", "model": "m",
                        "initialStatus": "hibernating"}, canary=True)
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_chat, hub, "assistant")
        wake = stream.next_task("wake")
        wait_until(lambda: hub.waiting("gpu") == 1)
        publisher.result(wake["taskId"], {"status": 200, "body": {}})
        task = stream.next_task("infer")
        _answer(publisher, task, "after the wake")
        r = pending.result()
    assert r.status_code == 200 and r.headers[SERVED_BY] == "gpu"


def test_a_client_that_leaves_while_it_waits_on_a_target_is_withdrawn_there(alias_hub):
    """The relay withdraws an alias's request where it waits: at the target that took it,
    which its answer would have named."""
    hub = alias_hub({"assistant": ["gpu", "not-published"]})
    publisher = TestPublisher(hub.url)
    publisher.register({"name": "gpu", "type": "openai", "model": "m",
                        "initialStatus": "hibernating"}, canary=True)
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        leaving = pool.submit(_chat, hub, "assistant", timeout=3)
        wake = stream.next_task("wake")
        wait_until(lambda: hub.waiting("gpu") == 1)  # it waits on gpu's wake
        with pytest.raises(requests.exceptions.ReadTimeout):
            leaving.result()  # the client gives up while the wake runs
    wait_until(lambda: hub.waiting("gpu") == 0)
    publisher.result(wake["taskId"], {"status": 200, "body": {}})
    assert publisher.sent(stream) == []  # nobody waited any more: no task went out


def test_none_can_serve_or_wake_is_publisher_offline(alias_hub):
    hub = alias_hub({"assistant": ["not-published", "nor-this"]})
    r = _chat(hub, "assistant")
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "publisher_offline"


def test_a_pool_target_serves_while_a_member_is_awake(alias_hub):
    """A pool is a target that can serve now while one member is awake and connected; once
    none is, its hibernating member is woken and the next target answers meanwhile."""
    hub = alias_hub({"assistant": ["pool", "cloud"]})
    awake, asleep = TestPublisher(hub.url), TestPublisher(hub.url)
    asleep.register({"name": "pool", "type": "openai", "model": "m", "pool": True,
                     "initialStatus": "hibernating"}, canary=True)
    awake.register({"name": "pool", "type": "openai", "model": "m", "pool": True},
                   canary=True)
    sleeping, serving = asleep.open(), awake.open()
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_chat, hub, "assistant")
        task = serving.next_task("infer")
        assert task["llmName"] == "pool"
        _answer(awake, task, "pooled")
        r = pending.result()
    assert r.status_code == 200 and r.headers[SERVED_BY] == "pool"
    assert asleep.sent(sleeping) == []  # an awake member serves: nobody is woken

    serving.close()  # the awake member goes: only the sleeping one is left
    wait_until(lambda: hub.llm("pool")["status"] == "hibernating")
    r = _chat(hub, "assistant")
    assert r.status_code == 200 and r.headers[SERVED_BY] == "cloud"
    assert sleeping.next_task("wake")["llmName"] == "pool"


@pytest.mark.parametrize("failure", [
    {"status": 502, "body": {"error": {"message": "bad gateway"}}},
    {"error": {"message": "out of memory", "status": 503}},
])
def test_a_failure_before_output_fails_over_to_the_next_target(alias_hub, failure):
    hub = alias_hub({"assistant": ["local", "cloud"]})
    publisher = TestPublisher(hub.url)
    publisher.register("local", canary=True)
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_chat, hub, "assistant")
        task = stream.next_task("infer")
        publisher.result(task["taskId"], failure)
        r = pending.result()
    assert r.status_code == 200, r.text
    assert r.headers[SERVED_BY] == "cloud"
    assert r.json()["model"] == "cloud-model"
    code = str(failure.get("status", 503))
    assert hub.metric("tether_alias_requests_total", alias="assistant", llm="local",
                      code=code) == 1
    assert hub.metric("tether_alias_requests_total", alias="assistant", llm="cloud",
                      code="200") == 1


def test_the_hubs_own_queue_full_fails_over(alias_hub):
    hub = alias_hub({"assistant": ["local", "cloud"]}, max_queue_per_llm=1)
    publisher = TestPublisher(hub.url)
    publisher.register({"name": "local", "type": "openai", "model": "m",
                        "maxConcurrency": 1}, canary=True)
    stream = publisher.open()
    with cf.ThreadPoolExecutor(2) as pool:
        running = pool.submit(_chat, hub, "local", "holds the slot")
        task = stream.next_task("infer")
        waiting = pool.submit(_chat, hub, "local", "holds the queue")
        wait_until(lambda: hub.waiting("local") == 2)
        r = _chat(hub, "assistant")  # local's queue is full: on to cloud
        assert r.status_code == 200, r.text
        assert r.headers[SERVED_BY] == "cloud"
        _answer(publisher, task, "one")
        _answer(publisher, stream.next_task("infer"), "two")
        assert running.result().status_code == 200 and waiting.result().status_code == 200


def test_a_4xx_is_the_clients_answer(alias_hub, backend):
    hub = alias_hub({"assistant": ["local", "cloud"]})
    publisher = TestPublisher(hub.url)
    publisher.register("local", canary=True)
    stream = publisher.open()
    before = backend.stats()["requests"]
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_chat, hub, "assistant")
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"status": 400, "body": {
            "error": {"message": "context too long"}}})
        r = pending.result()
    assert r.status_code == 400, r.text
    assert r.headers[SERVED_BY] == "local"
    assert r.json()["error"]["message"] == "context too long"
    assert backend.stats()["requests"] == before  # cloud was never asked


def test_no_failover_after_output(alias_hub, backend):
    """A chunk reached the client: a failure then ends the stream, nobody else answers."""
    hub = alias_hub({"assistant": ["local", "cloud"]})
    publisher = TestPublisher(hub.url)
    publisher.register("local", canary=True)
    stream = publisher.open()
    before = backend.stats()["requests"]
    chunk = json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "local",
                        "choices": [{"index": 0, "delta": {"content": "par"}}]})
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_chat, hub, "assistant", stream=True)
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"chunk": {"data": chunk}})
        publisher.result(task["taskId"], {"status": 502, "body": {"error": {
            "message": "died mid-answer"}}})
        r = pending.result()
    assert r.status_code == 200 and r.headers[SERVED_BY] == "local"
    assert f"data: {chunk}" in r.text
    assert "event: error" in r.text and "died mid-answer" in r.text
    assert backend.stats()["requests"] == before


def test_a_stream_whose_headers_went_out_may_still_fail_over(alias_hub):
    """Comments are not output: the headers and `: keepalive` went out while the first
    target held the request; its failure then goes on to the next target, in the same
    stream."""
    hub = alias_hub({"assistant": ["local", "cloud"]})
    publisher = TestPublisher(hub.url)
    publisher.register("local", canary=True)
    stream = publisher.open()
    r = requests.post(f"{hub.url}/v1/chat/completions", stream=True, timeout=30, json={
        "model": "assistant", "stream": True,
        "messages": [{"role": "user", "content": "hi"}]})
    # the headers came with the first keepalive comment: the client holds a stream
    assert r.status_code == 200 and r.headers[SERVED_BY] == "local"
    task = stream.next_task("infer")
    publisher.result(task["taskId"], {"status": 503, "body": {"error": {"message": "busy"}}})
    text = r.content.decode()
    assert ": keepalive" in text
    assert "event: error" not in text and text.rstrip().endswith("data: [DONE]")
    chunks = [json.loads(line[6:]) for line in text.splitlines()
              if line.startswith("data: {")]
    assert chunks and all(c["model"] == "cloud-model" for c in chunks)


def test_aliases_are_listed_and_work_on_every_route(alias_hub):
    hub = alias_hub({"assistant": ["cloud"], "sleeper": ["gone"]})
    models = {m["id"] for m in hub.get("/v1/models").json()["data"]}
    assert "assistant" in models
    assert "sleeper" not in models  # no target that is not inactive
    assert hub.get("/v1/models/assistant").status_code == 200
    assert hub.get("/v1/models/sleeper").status_code == 404
    tags = {m["name"] for m in hub.get("/api/tags").json()["models"]}
    assert "assistant" in tags and "sleeper" not in tags
    rows = {row["name"]: row for row in hub.get("/api/v1/llms").json()["llms"]}
    assert rows["assistant"]["kind"] == "alias" and rows["assistant"]["targets"] == ["cloud"]
    assert rows["assistant"]["status"] == "active"
    assert rows["sleeper"]["status"] == "inactive"  # listed here, with what it stands for
    assert hub.llm("assistant") == rows["assistant"]

    native = hub.infer("assistant")
    assert native.status_code == 200 and native.headers[SERVED_BY] == "cloud"
    ollama = hub.post("/api/chat", {"model": "assistant", "stream": False,
                                    "messages": [{"role": "user", "content": "hi"}]})
    assert ollama.status_code == 200, ollama.text
    assert ollama.json()["model"] == "cloud"  # Ollama's answer names the target
    with pytest.raises(openai.NotFoundError):
        sdk(hub).chat.completions.create(model="no-such-alias",
                                         messages=[{"role": "user", "content": "hi"}])


def test_registering_over_an_alias_is_409_alias_conflict(alias_hub):
    hub = alias_hub({"assistant": ["cloud"]})
    publisher = TestPublisher(hub.url)
    body = publisher.register("fine", "assistant", expect=409)
    assert body["error"]["code"] == "alias_conflict"
    assert body["error"]["param"] == "providers[1].name"
    assert hub.get("/api/v1/llms/fine").status_code == 404  # all or nothing


def test_a_virtual_row_under_an_aliass_name_is_deleted_at_startup(tmp_path, backend):
    """Aliases are config: a row a publisher registered under the name before the alias was
    declared goes when the hub starts with it (a warning says so)."""
    hub = Hub(tmp_path).start()
    try:
        TestPublisher(hub.url).register("assistant", "kept")
    finally:
        hub.stop()
    conf = _config(tmp_path, backend.base_url, {"assistant": ["kept", "cloud"]})
    hub = Hub(tmp_path, config=str(conf)).start()
    try:
        assert hub.llm("assistant")["kind"] == "alias"  # no virtual row of that name left
        rows = [row["name"] for row in hub.get("/api/v1/llms").json()["llms"]]
        assert rows.count("assistant") == 1
        assert hub.get("/api/v1/llms/kept").status_code == 200
        assert "deleted the virtual Llm 'assistant'" in hub.logs()
    finally:
        hub.stop()


@pytest.mark.parametrize(("table", "says"), [
    ('name = "a"\ntargets = ["a", "x"]', "names the alias itself"),
    ('name = "a"\ntargets = []', "must name at least one Llm"),
    ('name = "a"\ntargets = ["x"]\nweight = 2', "unknown key 'weight'"),
    ('name = "a"\ntargets = ["b"]\n\n[[aliases]]\nname = "b"\ntargets = ["x"]',
     "'b' is an alias (aliases do not nest)"),
    ('name = "cloud"\ntargets = ["x"]', "is the name of a public Llm"),
])
def test_a_bad_alias_table_is_a_config_error(tmp_path, table, says):
    conf = tmp_path / "bad.toml"
    conf.write_text('[[llms]]\nname = "cloud"\ntype = "openai"\nmodel = "m"\n'
                    'base_url = "http://127.0.0.1:9/v1"\n\n[[aliases]]\n' + table + "\n")
    done = subprocess.run([sys.executable, "-m", "tether.cli", "serve", "--config", str(conf)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert says in done.stderr and "aliases[0]" in done.stderr
