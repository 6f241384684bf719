"""Structured logs: log_format = "json" writes one JSON object per line, every line of a
request carries its request id, and no prompt or completion text ever reaches the log."""

from __future__ import annotations

import concurrent.futures as cf
import json
import subprocess

import pytest
import requests

from tests.support.hub import wait_until
from tests.support.procs import TETHER, wait_status
from tests.support.publisher import TestPublisher
from tether.common import sse

CANARY = "canary-5d1c0a9e"


def _lines(hub) -> list[dict]:
    out = []
    for n, line in enumerate(hub.logs().splitlines()):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"log line {n} is not JSON: {line!r}") from None
    return out


def test_json_logs_parse_line_by_line_with_request_ids_and_no_prompt_text(hub_factory):
    hub = hub_factory(log_format="json", log_level="debug")
    publisher = TestPublisher(hub.url)
    publisher.register("alpha")
    publisher.register({"name": "sleepy", "type": "openai", "model": "m",
                        "initialStatus": "hibernating"})
    stream = publisher.open()
    prompt = {"messages": [{"role": "user", "content": f"my secret is {CANARY}"}]}
    with cf.ThreadPoolExecutor(2) as pool:
        # A plain infer with a request id of the client's choosing.
        pending = pool.submit(hub.post, "/api/v1/llms/alpha/infer", prompt,
                              headers={"X-Request-Id": "client-req-1"})
        task = stream.next_task("infer")
        assert CANARY in json.dumps(task["request"])  # it did travel, to the publisher
        publisher.result(task["taskId"], {"status": 200, "body": {"echo": CANARY}})
        answered = pending.result()
        assert answered.status_code == 200 and answered.headers["X-Request-Id"] == "client-req-1"

        # A streamed infer, and a failure whose message quotes the prompt.
        pending = pool.submit(hub.post, "/api/v1/llms/alpha/infer", {**prompt, "stream": True})
        streamed = stream.next_task("infer")
        publisher.result(streamed["taskId"], {"chunk": {
            "data": sse.dumps({"choices": [{"delta": {"content": CANARY}}]}), "done": True}})
        assert CANARY in pending.result().text
        pending = pool.submit(hub.post, "/api/v1/llms/alpha/infer", prompt)
        failed = stream.next_task("infer")
        publisher.result(failed["taskId"], {"error": {"message": f"bad prompt {CANARY}"}})
        assert pending.result().status_code == 502

        # A wake (its lines carry the wake's task id and the Llm).
        pending = pool.submit(hub.post, "/api/v1/llms/sleepy/infer", prompt)
        wake = stream.next_task("wake")
        publisher.result(wake["taskId"], {"status": 200, "body": None})
        woken = stream.next_task("infer")
        publisher.result(woken["taskId"], {"status": 200, "body": {"echo": CANARY}})
        assert pending.result().status_code == 200
    # A bad request names the problem; its body (with the canary) must not be logged either.
    bad = requests.post(f"{hub.url}/v1/chat/completions", timeout=10,
                        json={"model": "alpha", "messages": f"{CANARY}"})
    assert bad.status_code == 400
    generated = bad.headers["X-Request-Id"]
    assert generated and generated != "client-req-1"

    wait_until(lambda: any(line.get("task_id") == woken["taskId"]
                           and line.get("logger") == "tether.requests" for line in _lines(hub)))
    publisher.close()
    hub.stop()
    text = hub.logs()
    assert CANARY not in text
    lines = _lines(hub)
    assert lines and all({"time", "level", "event"} <= set(line) for line in lines)
    assert any(line["logger"].startswith("gunicorn") for line in lines)  # its lines too
    assert not any(line["logger"] == "gunicorn.access" for line in lines)  # off, as in text

    mine = [line for line in lines if line.get("request_id") == "client-req-1"]
    # The dispatch and the outcome, each naming the task and the Llm.
    assert [line["event"] for line in mine][0] == "dispatched"
    outcome = [line for line in mine if line["logger"] == "tether.requests"][-1]
    assert (outcome["llm"], outcome["task_id"], outcome["status"]) == ("alpha", task["taskId"],
                                                                      200)
    assert isinstance(outcome["duration_ms"], int)
    # No other request's line carries this id.
    assert all(line.get("task_id") in (None, task["taskId"]) for line in mine)

    task_line = next(line for line in lines if line.get("task_id") == failed["taskId"]
                     and line["logger"] == "tether.session")
    assert task_line["session"] == publisher.session_id
    assert (task_line["llm"], task_line["status"], task_line["code"]) == (
        "alpha", 502, "publisher_error")
    wake_lines = [line for line in lines if line.get("task_id") == wake["taskId"]]
    assert [line["event"].split()[-1] for line in wake_lines[:1]] == ["started"]
    assert wake_lines[-1]["status"] == "succeeded" and wake_lines[-1]["llm"] == "sleepy"


def test_a_bad_log_format_is_refused(tmp_path):
    from tether.config import ConfigError, load_settings

    try:
        load_settings(env={"TETHER_LOG_FORMAT": "xml"})
    except ConfigError as exc:
        assert "log_format" in str(exc)
    else:
        raise AssertionError("log_format = xml was accepted")


def test_a_bad_log_level_is_refused_naming_it_hub_and_publisher(tmp_path, capsys):
    """It used to reach the worker, which failed to boot with a traceback."""
    from tether.cli import main
    from tether.config import ConfigError, load_settings
    from tether.publisher.config import PublisherConfigError, parse

    with pytest.raises(ConfigError) as err:
        load_settings(env={"TETHER_LOG_LEVEL": "loud"})
    assert "log_level" in str(err.value) and "debug, info, warning" in str(err.value)
    conf = tmp_path / "t.toml"
    conf.write_text('[hub]\nlog_level = "loud"\n')
    assert main(["serve", "--config", str(conf)]) == 2
    assert "log_level" in capsys.readouterr().err
    backend = {"name": "m", "model": "m", "base_url": "http://b"}
    with pytest.raises(PublisherConfigError) as err:
        parse({"hub": "http://h", "backends": [backend], "log_level": "loud",
               "log_format": "xml"}, "p.toml")
    assert "p.toml: log_level: must be one of" in str(err.value)
    assert "p.toml: log_format: must be text or json" in str(err.value)
    config = parse({"hub": "http://h", "backends": [backend]}, "p.toml")
    assert (config.log_level, config.log_format) == ("info", "text")


def test_the_publisher_logs_json_and_keeps_quiet_at_warning(hub, backend_factory, tmp_path):
    """Its task lines are the hub's formats; at `warning` a task logs nothing."""
    backend = backend_factory()
    for level, expect_task_line in (("info", True), ("warning", False)):
        log = tmp_path / f"publisher-{level}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*TETHER, "publish", "--hub", hub.url, "--name", f"m-{level}", "--model", "m",
                 "--backend", backend.base_url, "--log-format", "json", "--log-level", level,
                 "--session-file", str(tmp_path / f"session-{level}")],
                stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_status(hub, f"m-{level}", "active")
            assert hub.infer(f"m-{level}").status_code == 200
            if expect_task_line:
                wait_until(lambda log=log: '"task_id"' in log.read_text())
        finally:
            proc.terminate()
            proc.wait(20)
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        tasks = [x for x in lines if "task_id" in x]
        if expect_task_line:
            assert [(x["llm"], x["status"], x["endpoint"]) for x in tasks] == [
                (f"m-{level}", 200, "chat/completions")], lines
            assert isinstance(tasks[0]["duration_ms"], int)
        else:
            assert tasks == [] and all(x["level"] != "info" for x in lines), lines
