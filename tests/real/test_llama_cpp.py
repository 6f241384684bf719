"""llama.cpp's server (llama-cpp-python) behind a real `tether serve` and `tether publish`,
with the official `openai` SDK: what a new user would run. One test per fault it found
(issue 23), a wake/sleep cycle, a long run through a foreground wake recipe, and answers
compared with llama.cpp's own."""

from __future__ import annotations

import concurrent.futures as cf

import openai
import pytest
import requests

from tests.support.hub import wait_until
from tests.support.llama import NO_END, sdk
from tests.support.procs import port_closed, wait_status

HELLO = [{"role": "user", "content": "Hello"}]
NO_EOS = {"logit_bias": NO_END}  # a stream as long as max_tokens asks


def backend(url: str, model, **extra) -> dict:
    """A publisher's backend table for llama.cpp: `model` as llama.cpp names it (/v1/models
    lists the file's path)."""
    return {"name": "llama", "model": str(model), "base_url": url, **extra}


@pytest.mark.timeout(300)
def test_150_requests_through_a_wake_recipe_that_runs_the_server_in_the_foreground(
        hub, model, recipe_factory, publish_factory):
    """Item 1: the recipe's output was a pipe nobody read; at 64 KiB (after ~76 requests)
    the server blocked in write() and stopped answering."""
    recipe = recipe_factory(model)
    publish = publish_factory([backend(recipe.base_url, model, wake_timeout_s=60,
                                       wake={"command": recipe.command()})])
    wait_status(hub, "llama", "hibernating")
    client = sdk(hub)
    for i in range(150):
        answer = client.chat.completions.create(model="llama", messages=HELLO, max_tokens=8,
                                                seed=i)
        assert answer.choices[0].finish_reason in ("length", "stop"), i
    assert recipe.wakes() == 1
    # The server's own output is in the publisher's log, line by line.
    assert "wake recipe of llama: INFO:     Uvicorn running on" in publish.logs()


def test_a_server_that_crashed_is_woken_by_the_requests_that_find_it_down(
        hub, model, recipe_factory, publish_factory):
    """Item 2: it was never woken again while traffic continued (502 Connection refused,
    the hub saying active)."""
    recipe = recipe_factory(model)
    publish = publish_factory([backend(recipe.base_url, model, wake_timeout_s=60,
                                       wake={"command": recipe.command()})])
    wait_status(hub, "llama", "hibernating")
    client = sdk(hub)
    assert client.chat.completions.create(model="llama", messages=HELLO, max_tokens=4)
    recipe.kill()  # the OOM killer
    with cf.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: client.chat.completions.create(
            model="llama", messages=HELLO, max_tokens=4), range(3)))
    assert all(a.choices[0].message.content is not None for a in answers)
    assert recipe.wakes() == 2  # the first request's, then one for the three after the crash
    assert "cannot be reached" in publish.logs()
    wait_status(hub, "llama", "active")


def test_a_stream_llama_cpp_breaks_on_a_context_overflow_is_an_error(hub, llama, model,
                                                                      publish_factory):
    """Item 3: llama-cpp-python answers 200 with an empty stream and no [DONE]; the client
    got data: [DONE], an empty success."""
    publish_factory([backend(llama.base_url, model)])
    wait_status(hub, "llama", "active")
    too_long = [{"role": "user", "content": "Hello " * 200}]  # over the 512-token context
    direct = sdk(llama.base_url).chat.completions.create(
        model=str(model), messages=too_long, max_tokens=8, stream=True)
    assert list(direct) == []  # llama.cpp's own answer: nothing, and no error
    with pytest.raises(openai.APIError) as err:
        list(sdk(hub).chat.completions.create(model="llama", messages=too_long,
                                              max_tokens=8, stream=True))
    assert "stream ended early" in str(err.value)


@pytest.mark.parametrize("channel", [True, False], ids=["result-channel", "own-upload"])
def test_a_client_leaving_mid_stream_is_routine_at_the_hub(hub, slow_model, llama_factory,
                                                           publish_factory, channel):
    """Item 4: every client that left a stream logged `ERROR tether.http: unhandled error on
    POST …/result` with a NoMoreData traceback, and counted as an HTTP 500. A stream travels
    on the result channel (the default) or, without it, on an upload of its own."""
    llama = llama_factory(slow_model)
    publish = publish_factory([backend(llama.base_url, slow_model)], result_channel=channel)
    wait_status(hub, "llama", "active")
    stream = sdk(hub).chat.completions.create(model="llama", messages=HELLO, max_tokens=400,
                                              stream=True, **NO_EOS)
    next(iter(stream))
    stream.close()  # the client goes away
    route = "/api/v1/llms/_provider-results" if channel else \
        "/api/v1/llms/_provider-task/{task_id}/result"
    if channel:
        # The publisher, told of the cancel, stops the task: no line of it follows.
        wait_until(lambda: "status=cancelled" in publish.logs(), timeout=10)
    else:
        # The upload ends one of two routine ways, by who moves first: the publisher, told
        # of the cancel, cuts it; or the hub, having dropped the task, answers its next
        # line 404.
        wait_until(lambda: "result upload was cut" in hub.logs() or hub.metric(
            "tether_http_responses_total", route=route, method="POST", status="404"),
            timeout=10)
    logs = hub.logs()
    assert " ERROR " not in logs and "NoMoreData" not in logs, logs
    assert hub.metric("tether_http_responses_total", route=route, method="POST",
                      status="500") == 0
    # llama.cpp saw the client go: its next request is served at once.
    assert sdk(hub).chat.completions.create(model="llama", messages=HELLO, max_tokens=2)


def test_answers_carry_the_llm_name_not_the_model_files_path(hub, llama, model,
                                                            publish_factory):
    """Item 5: the answer's model was llama.cpp's id, the model file's path."""
    assert sdk(llama.base_url).models.list().data[0].id == str(model)
    publish_factory([backend(llama.base_url, model)])
    wait_status(hub, "llama", "active")
    client = sdk(hub)
    answer = client.chat.completions.create(model="llama", messages=HELLO, max_tokens=4)
    assert answer.model == "llama"
    chunks = list(client.chat.completions.create(model="llama", messages=HELLO, max_tokens=4,
                                                 stream=True))
    assert chunks and {c.model for c in chunks} == {"llama"}
    raw = requests.post(f"{hub.url}/v1/chat/completions", timeout=30, json={
        "model": "llama", "messages": HELLO, "max_tokens": 4, "stream": True})
    assert str(model) not in raw.text and "tiny.gguf" not in raw.text


def test_a_failed_wake_tells_the_client_how_the_recipe_ended_and_the_log_why(
        hub, model, recipe_factory, publish_factory, tmp_path):
    """Item 6: the wake_failed message carried the recipe's stderr (a traceback with this
    machine's paths)."""
    recipe = recipe_factory(tmp_path / "missing.gguf")  # the server exits 1, a traceback
    publish = publish_factory([backend(recipe.base_url, model, wake_timeout_s=60,
                                       wake={"command": recipe.command()})])
    wait_status(hub, "llama", "hibernating")
    with pytest.raises(openai.InternalServerError) as err:
        sdk(hub).chat.completions.create(model="llama", messages=HELLO, max_tokens=4)
    assert err.value.status_code == 503
    assert err.value.body == {"message": "could not wake 'llama': the wake recipe exited 1",
                              "type": "server_error", "code": "wake_failed", "param": None}
    wait_until(lambda: "wake recipe of llama: Traceback" in publish.logs())
    assert "missing.gguf" in publish.logs()


def test_a_wake_asked_while_a_stream_runs_does_not_cut_it(hub, slow_model, llama_factory,
                                                          publish_factory):
    """Item 7: the probe (GET /v1/models) of a wake made llama-cpp-python cancel the stream
    it was running (interrupt_requests, its default)."""
    llama = llama_factory(slow_model)
    publish = publish_factory([backend(llama.base_url, slow_model, max_concurrency=1,
                                       wake={"command": ["true"]})])
    wait_status(hub, "llama", "active")
    client = sdk(hub)
    stream = iter(client.chat.completions.create(
        model="llama", messages=HELLO, max_tokens=150, stream=True, **NO_EOS))
    chunks = [next(stream)]
    # The hub believes the backend asleep (a status crossing the stream): the next request
    # sends a wake while the stream runs.
    session = publish.session_file.read_text().strip()
    assert requests.post(f"{hub.url}/api/v1/llms/_provider-status", timeout=10, json={
        "providerSessionId": session,
        "llms": [{"name": "llama", "status": "hibernating"}]}).status_code == 200
    with cf.ThreadPoolExecutor(1) as pool:
        second = pool.submit(client.chat.completions.create, model="llama", messages=HELLO,
                             max_tokens=2)
        chunks += list(stream)
        assert second.result().choices[0].finish_reason in ("length", "stop")
    # Never cut: llama-cpp-python ends an interrupted stream with [DONE] and no
    # finish_reason, which the publisher now relays as an error.
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length"


def test_an_error_body_llama_cpp_gives_outside_the_envelope_is_wrapped(hub, llama, model,
                                                                      publish_factory):
    """Docs: llama-cpp-python has no /v1/responses: its 404 body is {"detail": "Not Found"}."""
    publish_factory([backend(llama.base_url, model)])
    wait_status(hub, "llama", "active")
    r = requests.post(f"{llama.base_url}/responses", json={"model": "x", "input": "hi"},
                      timeout=10)
    assert (r.status_code, r.json()) == (404, {"detail": "Not Found"})
    with pytest.raises(openai.NotFoundError) as err:
        sdk(hub).responses.create(model="llama", input="hi")
    assert err.value.body == {"message": "Not Found", "type": "invalid_request_error",
                              "code": None, "param": None}


@pytest.mark.timeout(120)
def test_a_wake_recipe_starts_the_server_in_the_background_and_a_sleep_recipe_stops_it(
        hub, model, recipe_factory, publish_factory):
    recipe = recipe_factory(model)
    publish_factory([backend(recipe.base_url, model, wake_timeout_s=60, idle_sleep_s=2,
                             wake={"command": recipe.background()},
                             sleep={"command": recipe.stop_command()})])
    wait_status(hub, "llama", "hibernating")
    client = sdk(hub)
    for cycle in (1, 2):
        answer = client.chat.completions.create(model="llama", messages=HELLO, max_tokens=4)
        assert answer.model == "llama" and recipe.wakes() == cycle
        assert hub.llm("llama")["status"] == "active"
        wait_status(hub, "llama", "hibernating", timeout=30)  # idle: the sleep recipe ran
        wait_until(lambda: port_closed(recipe.port), timeout=10)


def test_direct_and_relayed_answers_are_the_same(hub, llama, model, publish_factory):
    publish_factory([backend(llama.base_url, model)])
    wait_status(hub, "llama", "active")
    direct, relayed = sdk(llama.base_url), sdk(hub)

    def chat(client, name, **kw):
        answer = client.chat.completions.create(model=name, messages=HELLO, max_tokens=24,
                                                **kw)
        return answer.choices[0].message.content, answer.choices[0].finish_reason, \
            answer.usage.completion_tokens

    def stream(client, name, **kw):
        chunks = list(client.chat.completions.create(model=name, messages=HELLO,
                                                     max_tokens=24, stream=True, **kw))
        return "".join(c.choices[0].delta.content or "" for c in chunks), \
            chunks[-1].choices[0].finish_reason

    for kw in ({"temperature": 0}, {"seed": 42, "temperature": 1.0}):
        assert chat(relayed, "llama", **kw) == chat(direct, str(model), **kw)
        assert stream(relayed, "llama", **kw) == stream(direct, str(model), **kw)
    # A seed decides the answer: the same seed the same text, another seed another one.
    one = chat(relayed, "llama", seed=1, temperature=1.0)
    assert chat(relayed, "llama", seed=1, temperature=1.0) == one
    assert chat(relayed, "llama", seed=2, temperature=1.0) != one
