"""Withdraw (docs/protocol.md, Withdraw): a publisher says it no longer serves some names,
against a real hub with hand-driven publishers."""

from __future__ import annotations

import concurrent.futures as cf

import requests

from tests.e2e.test_security import KeyedPublisher, call, make_key
from tests.support.hub import wait_until
from tests.support.publisher import Stream, next_task_of

POOL = {"type": "openai", "model": "m", "pool": True}


def withdraw(hub, session_id: str, *names: str) -> requests.Response:
    return hub.post("/api/v1/llms/_provider-withdraw",
                    json={"providerSessionId": session_id, "names": list(names)})


def test_a_name_published_alone_is_deleted_and_a_retry_is_harmless(hub, publisher):
    publisher.register("gone", "kept")
    stream = publisher.open()
    r = withdraw(hub, publisher.session_id, "gone")
    assert r.status_code == 200 and r.json() == {"ok": True}
    assert hub.get("/api/v1/llms/gone").status_code == 404
    assert hub.infer("gone", timeout=10).json()["error"]["code"] == "llm_not_found"
    assert [m["id"] for m in hub.get("/v1/models").json()["data"]] == ["kept"]
    # Retried, or a name that never was: ignored.
    assert withdraw(hub, publisher.session_id, "gone", "never-was").status_code == 200
    # The session keeps its stream and its other names: a task still comes.
    with cf.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(hub.infer, "kept", "still here", timeout=10)
        task = stream.next_task("infer")
        assert task["llmName"] == "kept"
        publisher.result(task["taskId"], {"status": 200, "body": {"ok": "kept"}})
        assert answer.result().json() == {"ok": "kept"}


def test_the_hello_frame_lists_the_sessions_names(hub, publisher):
    publisher.register("b-model", "a-model")
    stream = Stream(hub.url, publisher.session_id)
    assert stream.next().json()["llms"] == ["a-model", "b-model"]
    stream.close()
    withdraw(hub, publisher.session_id, "a-model")
    stream = Stream(hub.url, publisher.session_id)
    assert stream.next().json()["llms"] == ["b-model"]
    stream.close()


def test_another_sessions_name_is_refused_and_nothing_is_applied(hub, publisher_factory):
    owner = publisher_factory()
    owner.register("theirs")
    other = publisher_factory()
    other.register("mine")
    r = withdraw(hub, other.session_id, "mine", "theirs")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert "theirs" in r.json()["error"]["message"]
    assert hub.get("/api/v1/llms/mine").status_code == 200  # nothing of it applied
    assert hub.llm("theirs")["providerSessionId"] == owner.session_id


def test_bad_withdraw_bodies_are_400_naming_the_field(hub, publisher):
    publisher.register("m1")
    for body, param in (({"providerSessionId": publisher.session_id, "names": []}, "names"),
                        ({"providerSessionId": publisher.session_id,
                          "names": [f"n{i}" for i in range(65)]}, "names"),
                        ({"providerSessionId": publisher.session_id, "names": ["a/b"]},
                         "names[0]"),
                        ({"names": ["m1"]}, "providerSessionId")):
        r = hub.post("/api/v1/llms/_provider-withdraw", json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"]["param"] == param


def test_a_pool_member_leaves_and_the_name_stays_with_the_others(hub, publisher_factory):
    a, b = publisher_factory(), publisher_factory()
    a.register({"name": "p", **POOL})
    b.register({"name": "p", **POOL})
    stream_b = b.open()
    a.open()
    assert withdraw(hub, a.session_id, "p").status_code == 200
    row = hub.llm("p")
    assert [x["providerSessionId"] for x in row["members"]] == [b.session_id]
    assert row["providerSessionId"] == b.session_id
    # Every request goes to the member left.
    with cf.ThreadPoolExecutor(2) as pool:
        answers = [pool.submit(hub.infer, "p", str(i), timeout=10) for i in range(2)]
        for _ in answers:
            task = stream_b.next_task("infer")
            b.result(task["taskId"], {"status": 200, "body": {"by": "b"}})
        assert [x.result().json() for x in answers] == [{"by": "b"}] * 2
    # Its last member withdraws: the name goes.
    assert withdraw(hub, b.session_id, "p").status_code == 200
    assert hub.get("/api/v1/llms/p").status_code == 404


def test_requests_waiting_for_a_withdrawn_name_get_publisher_offline(hub, publisher):
    publisher.register({"name": "sleepy", "type": "openai", "model": "m",
                        "initialStatus": "hibernating"})
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(hub.infer, "sleepy", "wait", timeout=20)
        stream.next_task("wake")  # it waits at the hub for that wake
        wait_until(lambda: hub.waiting("sleepy") == 1)
        assert withdraw(hub, publisher.session_id, "sleepy").status_code == 200
        r = waiting.result()
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "publisher_offline"


def test_with_auth_only_the_sessions_key_withdraws(hub_factory):
    hub = hub_factory(auth="on")
    keys = {name: make_key(hub, role, name) for name, role in (
        ("pub-a", "publisher"), ("pub-b", "publisher"), ("client", "client"),
        ("root", "admin"))}
    owner = KeyedPublisher(hub.url, keys["pub-a"], "session-a")
    owner.register("model-a")
    body = {"providerSessionId": "session-a", "names": ["model-a"]}
    for key in (keys["pub-b"], keys["client"]):  # another publisher's key; a client's
        r = call(hub, "POST", "/api/v1/llms/_provider-withdraw", key, json=body)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert call(hub, "GET", "/api/v1/llms/model-a", keys["root"]).status_code == 200
    assert owner.post("/api/v1/llms/_provider-withdraw", body).status_code == 200
    assert call(hub, "GET", "/api/v1/llms/model-a", keys["root"]).status_code == 404


def test_a_member_that_withdraws_mid_wake_has_its_wake_cancelled_and_another_is_woken(
        hub, publisher_factory):
    sleepy = {**POOL, "initialStatus": "hibernating"}
    members = {}
    for key in ("a", "b"):
        pub = publisher_factory()
        pub.register({"name": "p", **sleepy})
        members[key] = (pub, pub.open())
    streams = {key: stream for key, (_, stream) in members.items()}
    with cf.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(hub.infer, "p", "wake up", timeout=20)
        woken, wake = next_task_of(streams, "wake")
        other = "b" if woken == "a" else "a"
        pub, stream = members[woken]
        assert withdraw(hub, pub.session_id, "p").status_code == 200
        # The wake ends where it ran (nobody waits for it), and the other member is woken.
        assert stream.next_task("cancel")["taskId"] == wake["taskId"]
        second = streams[other].next_task("wake")
        other_pub = members[other][0]
        other_pub.result(second["taskId"], {"status": 200, "body": {"awake": True}})
        task = streams[other].next_task("infer")
        other_pub.result(task["taskId"], {"status": 200, "body": {"by": other}})
        assert waiting.result().json() == {"by": other}


def test_a_task_returned_after_its_name_was_withdrawn_is_answered(hub, publisher):
    publisher.register("solo")
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(hub.infer, "solo", "hi", timeout=20)
        task = stream.next_task("infer")
        assert withdraw(hub, publisher.session_id, "solo").status_code == 200
        # The backend never ran it: with the name gone nobody else may, so its client
        # gets that error now (not a wait until infer_timeout_s).
        r = publisher.result(task["taskId"], {"error": {
            "message": "the publisher is shutting down", "status": 503,
            "code": "publisher_disconnected", "retryable": True}})
        assert r.status_code == 200
        got = answer.result()
    assert got.status_code == 503 and got.json()["error"]["code"] == "publisher_disconnected"
