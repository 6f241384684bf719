"""Pools: several publishers behind one Llm name (docs/protocol.md, Pools), against a real hub
with hand-driven publishers. One bullet of the section per test, or a few per hub."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import threading
import time

import pytest
import requests

from tests.support.hub import wait_until
from tests.support.publisher import next_task_of

POOL = {"type": "openai", "pool": True}


def member(factory, name: str = "p", model: str = "m", canary: bool = False, **spec):
    """A publisher that joined pool `name` and opened its stream (`canary`: see `sent`)."""
    pub = factory()
    pub.register({"name": name, "model": model, **POOL, **spec}, canary=canary)
    return pub, pub.open()


def chat(*contents: str) -> dict:
    return {"messages": [{"role": "user", "content": c} for c in contents]}


def routed(metrics_text: str, decision: str) -> float:
    for line in metrics_text.splitlines():
        if line.startswith(f'tether_pool_routed_total{{decision="{decision}",llm="p"}}'):
            return float(line.split()[-1])
    return 0.0


def ok(pub, task: dict, body=None):
    r = pub.result(task["taskId"], {"status": 200, "body": body or {"by": pub.session_id}})
    assert r.status_code == 200, r.text


def test_members_join_reads_show_them_and_the_row_is_derived(hub, publisher_factory):
    a, _ = member(publisher_factory, model="llama-a", maxConcurrency=2,
                  initialStatus="hibernating")
    row = hub.llm("p")
    assert (row["status"], row["model"], row["providerSessionId"]) == (
        "hibernating", "llama-a", a.session_id)
    b, _ = member(publisher_factory, model="llama-b")
    row = hub.llm("p")
    # Derived: active if a member is; providerSessionId and model of the oldest member.
    assert (row["status"], row["model"], row["providerSessionId"]) == (
        "active", "llama-a", a.session_id)
    assert [(x["providerSessionId"], x["model"], x["status"], x["maxConcurrency"],
             x["inFlight"]) for x in row["members"]] == [
        (a.session_id, "llama-a", "hibernating", 2, 0),
        (b.session_id, "llama-b", "active", None, 0)]
    assert [m["id"] for m in hub.get("/v1/models").json()["data"]] == ["p"]
    assert [x["name"] for x in hub.get("/api/v1/llms").json()["llms"]] == ["p"]
    # Without pool: true on both sides a second publisher is refused, naming the provider.
    lone = publisher_factory()
    r = lone.register({"name": "q", "type": "openai", "model": "m"},
                      {"name": "p", "type": "openai", "model": "m"}, expect=409)
    assert r["error"]["code"] == "llm_owned_by_other_session"
    assert r["error"]["param"] == "providers[1].name"
    lone.register({"name": "solo", "type": "openai", "model": "m"})
    r = publisher_factory().register({"name": "solo", **POOL, "model": "m"}, expect=409)
    assert r["error"]["code"] == "llm_owned_by_other_session"
    # Stream loss acts on the member; the name stays active while another member is.
    b.close()
    wait_until(lambda: hub.llm("p")["members"][1]["status"] == "inactive")
    row = hub.llm("p")
    assert row["status"] == "hibernating" and row["inactiveSince"] is None
    # A hibernating member keeps its status without a stream, but gets no work: with no
    # member usable, requests get 503 publisher_offline at once.
    a.close()
    wait_until(lambda: hub.infer("p", timeout=5).json()["error"]["code"] == "publisher_offline")
    assert hub.llm("p")["status"] == "hibernating"
    assert a.status(p="active").status_code == 200
    wait_until(lambda: hub.llm("p")["status"] == "active")
    b.register({"name": "p", "model": "llama-b", **POOL, "initialStatus": "hibernating"})
    row = hub.llm("p")
    assert [x["status"] for x in row["members"]] == ["active", "hibernating"]


def test_pool_members_must_share_a_publisher_key(hub_factory):
    from tests.e2e.test_security import KeyedPublisher, make_key

    hub = hub_factory(auth="on")
    keys = {n: make_key(hub, r, n) for n, r in (("pub-a", "publisher"),
                                                ("pub-b", "publisher"), ("root", "admin"))}
    spec = {"name": "p", "model": "m", **POOL}
    KeyedPublisher(hub.url, keys["pub-a"]).register(spec)
    KeyedPublisher(hub.url, keys["pub-a"]).register(spec)  # same key: joins
    r = KeyedPublisher(hub.url, keys["pub-b"]).register(
        {"name": "mine", "type": "openai", "model": "m"}, spec, expect=409)
    assert (r["error"]["code"], r["error"]["param"]) == (
        "llm_owned_by_other_session", "providers[1].name")
    KeyedPublisher(hub.url, keys["root"]).register(spec)  # an admin key joins any pool
    KeyedPublisher(hub.url, keys["root"]).register({**spec, "name": "q"})
    KeyedPublisher(hub.url, keys["pub-b"]).register({**spec, "name": "q"})  # fits an admin's
    r = requests.get(f"{hub.url}/api/v1/llms/p", timeout=10,
                     headers={"Authorization": f"Bearer {keys['root']}", "Connection": "close"})
    assert len(r.json()["members"]) == 3


def test_late_binding_a_freed_slot_and_a_joining_member_take_the_queue_head(
        hub, publisher_factory):
    a, sa = member(publisher_factory, maxConcurrency=1, canary=True)
    with cf.ThreadPoolExecutor(4) as pool:
        pending = []
        for i in range(4):
            pending.append(pool.submit(hub.post, "/api/v1/llms/p/infer", chat(f"r{i}")))
            wait_until(lambda i=i: hub.waiting("p") == i + 1, interval=0.01)  # in order
        first = sa.next_task("infer")
        assert first["request"]["messages"][0]["content"] == "r0"
        assert a.sent(sa) == []  # one slot: the others wait at the hub
        assert hub.llm("p")["members"][0]["inFlight"] == 1
        ok(a, first)
        second = sa.next_task("infer")
        assert second["request"]["messages"][0]["content"] == "r1"
        # A member joining takes the head of the queue once its stream is open.
        b = publisher_factory()
        b.register({"name": "p", "model": "m", **POOL})
        assert a.sent(sa) == []  # the pool's actor has heard of b (a's heartbeat asked it)
        # registered, but no stream yet: no work for it
        assert [x["inFlight"] for x in hub.llm("p")["members"]] == [1, 0]
        sb = b.open()
        third = sb.next_task("infer")
        assert third["request"]["messages"][0]["content"] == "r2"
        ok(b, third)
        fourth = sb.next_task("infer")
        assert fourth["request"]["messages"][0]["content"] == "r3"
        ok(b, fourth)
        ok(a, second)
        answers = [p.result(timeout=10) for p in pending]
    assert [r.status_code for r in answers] == [200] * 4
    assert [r.json()["by"] for r in answers] == [a.session_id, a.session_id,
                                                 b.session_id, b.session_id]


def test_queue_bound_timeout_from_arrival_and_offline_members(hub_factory, publisher_factory):
    hub = hub_factory(max_queue_per_llm=1, infer_timeout_s=1)
    a = publisher_factory(url=hub.url)
    a.register({"name": "p", "model": "m", **POOL, "maxConcurrency": 1})
    assert hub.infer("p").json()["error"]["code"] == "publisher_offline"  # no stream yet
    sa = a.open()
    with cf.ThreadPoolExecutor(3) as pool:
        busy = pool.submit(hub.infer, "p", "busy")
        sa.next_task("infer")
        waiting = pool.submit(hub.infer, "p", "waiting")
        wait_until(lambda: hub.waiting("p") == 2)
        full = hub.infer("p", "full")
        assert (full.status_code, full.json()["error"]["code"]) == (429, "queue_full")
        started = time.monotonic()
        r = waiting.result(timeout=10)
        # infer_timeout_s counts from arrival, time in the queue included.
        assert (r.status_code, r.json()["error"]["code"]) == (504, "infer_timeout")
        assert time.monotonic() - started < 1.5
        assert busy.result(timeout=10).status_code == 504


def serve_one(hub, pubs, body: dict, headers: dict | None = None) -> str:
    """Send one request, answer it from whichever member got it; that member's session id."""
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(hub.post, "/api/v1/llms/p/infer", body, headers=headers or {})
        pub, task = next_task_of(dict(pubs))
        ok(pub, task)
        assert pending.result(timeout=10).status_code == 200
    return pub.session_id


def test_affinity_by_prefix_and_by_header(hub, publisher_factory):
    pubs = [member(publisher_factory) for _ in range(3)]
    by_session = {pub.session_id: (pub, stream) for pub, stream in pubs}

    def serve(body: dict, headers: dict | None = None) -> str:
        return serve_one(hub, pubs, body, headers)

    # Ten conversations of three turns: every turn lands where its first one did.
    for conv in range(10):
        turns = [f"c{conv}-u1", f"c{conv}-a1", f"c{conv}-u2", f"c{conv}-a2", f"c{conv}-u3"]
        first = serve(chat(turns[0]))
        assert serve(chat(*turns[:3])) == first
        assert serve(chat(*turns[:5])) == first
    # The header decides instead of the messages.
    home = serve(chat("anything"), {"X-Tether-Affinity": "user-42"})
    for i in range(5):
        assert serve(chat(f"unrelated {i}"), {"X-Tether-Affinity": "user-42"}) == home
    assert set(by_session) == {pub.session_id for pub, _ in pubs}
    # /metrics counts the routing decisions and shows each member's in-flight.
    text = hub.get("/metrics").text
    assert routed(text, "affinity") == 25  # 2 later turns x 10 conversations + 5 by header
    assert routed(text, "least_loaded") == 11
    for pub, _ in pubs:
        assert f'tether_member_in_flight{{llm="p",member="{pub.session_id}"}} 0.0' in text


def test_round_robin_routing_takes_members_in_turn(hub_factory, publisher_factory):
    """pool_routing = round_robin: no affinity, each request to the next member in join
    order, even the turns of one conversation (the pools benchmark's baseline)."""
    hub = hub_factory(pool_routing="round_robin")
    pubs = [member(lambda: publisher_factory(url=hub.url)) for _ in range(3)]
    turns = [f"{role}{i}" for i in range(1, 7) for role in ("u", "a")]
    served = [serve_one(hub, pubs, chat(*turns[:n])) for n in range(1, 12, 2)]
    assert served == [pub.session_id for pub, _ in pubs] * 2
    text = hub.get("/metrics").text
    assert (routed(text, "round_robin"), routed(text, "affinity")) == (6, 0)


def test_awake_members_first_one_wake_per_burst_and_a_failed_wake_moves_on(
        hub, publisher_factory):
    a, sa = member(publisher_factory, maxConcurrency=1)
    b, sb = member(publisher_factory, maxConcurrency=2, initialStatus="hibernating",
                   canary=True)
    c, sc = member(publisher_factory, maxConcurrency=2, initialStatus="hibernating",
                   canary=True)
    with cf.ThreadPoolExecutor(6) as pool:
        first = pool.submit(hub.infer, "p", "r0")
        t0 = sa.next_task("infer")
        assert b.sent(sb) == [] and c.sent(sc) == []  # a free slot: no wake
        pending = []
        for i in range(1, 4):
            pending.append(pool.submit(hub.infer, "p", f"r{i}"))
            wait_until(lambda i=i: hub.waiting("p") == i + 1, interval=0.01)  # in order
        # A burst that must wait: one wake, of one member.
        wake_b = sb.next_task("wake")
        assert b.sent(sb) == [] and c.sent(sc) == []
        # That wake fails: the next hibernating member is woken.
        b.result(wake_b["taskId"], {"status": 500, "body": {"error": "no GPU"}})
        wake_c = sc.next_task("wake")
        c.result(wake_c["taskId"], {"status": 200, "body": {}})
        got = [sc.next_task("infer"), sc.next_task("infer")]
        assert [t["request"]["messages"][0]["content"] for t in got] == ["r1", "r2"]
        assert b.sent(sb) == []  # one request still waits, but b's wake failed
        ok(a, t0)
        last = sa.next_task("infer")  # a's freed slot takes it
        assert last["request"]["messages"][0]["content"] == "r3"
        for t in got:
            ok(c, t)
        ok(a, last)
        assert first.result(timeout=10).status_code == 200
        assert [p.result(timeout=10).status_code for p in pending] == [200] * 3
    row = hub.llm("p")
    assert [x["status"] for x in row["members"]] == ["active", "hibernating", "active"]


def test_every_wake_failing_answers_the_waiters(hub, publisher_factory):
    b, sb = member(publisher_factory, initialStatus="hibernating", canary=True)
    c, sc = member(publisher_factory, initialStatus="hibernating", canary=True)
    with cf.ThreadPoolExecutor(3) as pool:
        pending = [pool.submit(hub.infer, "p", f"r{i}") for i in range(3)]
        b.result(sb.next_task("wake")["taskId"], {"status": 503, "body": None})
        c.result(sc.next_task("wake")["taskId"], {"status": 503, "body": None})
        answers = [p.result(timeout=10) for p in pending]
    assert {(r.status_code, r.json()["error"]["code"]) for r in answers} == {
        (503, "wake_failed")}
    assert b.sent(sb) == [] and c.sent(sc) == []  # one wake per member, no more


def test_failover_moves_untouched_tasks_at_once_and_a_streamed_one_waits(
        hub_factory, publisher_factory):
    hub = hub_factory(publisher_grace_s=30)
    a = publisher_factory(url=hub.url)
    a.register({"name": "p", "model": "m", **POOL, "maxConcurrency": 3}, canary=True)
    sa = a.open()
    with cf.ThreadPoolExecutor(4) as pool:
        plain = [pool.submit(hub.infer, "p", f"r{i}") for i in range(2)]
        wait_until(lambda: hub.waiting("p") == 2)
        streamed = pool.submit(
            hub.post, "/api/v1/llms/p/infer", {**chat("s"), "stream": True}, stream=True)
        frames = []
        while len(frames) < 3:
            item = sa.next()
            if getattr(item, "event", "") == "task":
                frames.append(item)
        on_a = [f.json() for f in frames]
        by_text = {t["request"]["messages"][0]["content"]: t for t in on_a}
        s_task = by_text["s"]
        a.result(s_task["taskId"], {"chunk": {"data": json.dumps({"n": 1}), "done": False}})
        b = publisher_factory(url=hub.url)
        b.register({"name": "p", "model": "m", **POOL, "maxConcurrency": 1})
        sb = b.open()
        started = time.monotonic()
        sa.close()  # a's stream drops; the grace is 30 s
        moved = sb.next_task("infer")
        assert time.monotonic() - started < 5  # at once, not after the grace
        assert moved["request"]["messages"][0]["content"] in ("r0", "r1")
        ok(b, moved)
        second = sb.next_task("infer")  # b has one slot: the other waited at the queue head
        ok(b, second)
        assert {moved["request"]["messages"][0]["content"],
                second["request"]["messages"][0]["content"]} == {"r0", "r1"}
        answers = [p.result(timeout=10) for p in plain]
        assert [r.json()["by"] for r in answers] == [b.session_id] * 2
        # Late results for the moved tasks from the old member: 404.
        for old in (by_text["r0"], by_text["r1"]):
            late = a.result(old["taskId"], {"status": 200, "body": {}})
            assert late.status_code == 404
        # The task that streamed a chunk did not move: its publisher comes back in the grace
        # and finishes it; a reconnect finds the moved tasks gone from its replay.
        sa2 = a.open(last_event_id=str(int(frames[0].id) - 1))  # holds none of the three
        replayed = a.sent(sa2)
        assert [t["taskId"] for t in replayed] == [s_task["taskId"]]
        a.result(s_task["taskId"], {"chunk": {"data": json.dumps({"n": 2}), "done": True}})
        body = streamed.result(timeout=10)
        text = body.text
    assert '"n": 1' in text and '"n": 2' in text and text.rstrip().endswith("data: [DONE]")


def test_failover_with_no_grace_moves_what_can_move_and_fails_the_rest(hub, publisher_factory):
    """publisher_grace_s = 0 (the test hub's): only a task that cannot move fails at once."""
    a, sa = member(publisher_factory)
    with cf.ThreadPoolExecutor(3) as pool:
        plain = pool.submit(hub.infer, "p", "plain")
        first = sa.next_task("infer")
        streamed = pool.submit(hub.post, "/api/v1/llms/p/infer", {**chat("s"), "stream": True})
        s_task = sa.next_task("infer")
        a.result(s_task["taskId"], {"chunk": {"data": "{}", "done": False}})
        b, sb = member(publisher_factory)
        sa.close()
        moved = sb.next_task("infer")
        assert moved["request"]["messages"][0]["content"] == "plain"
        ok(b, moved)
        assert plain.result(timeout=10).json() == {"by": b.session_id}
        assert "publisher_disconnected" in streamed.result(timeout=10).text
        assert routed(hub.get("/metrics").text, "failover") == 1
        assert a.result(first["taskId"], {"status": 200, "body": {}}).status_code == 404


def test_retryable_errors_go_to_an_untried_member_then_the_last_error(hub, publisher_factory):
    pubs = [member(publisher_factory, canary=True) for _ in range(2)]
    refused = {"error": {"status": 502, "code": "backend_unreachable",
                         "message": "connection refused", "retryable": True}}

    def find():
        return next_task_of(dict(pubs))

    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(hub.infer, "p")
        first_pub, first = find()
        assert first_pub.result(first["taskId"], refused).status_code == 200
        second_pub, second = find()
        assert second_pub is not first_pub  # a member not yet tried
        ok(second_pub, second)
        assert pending.result(timeout=10).json() == {"by": second_pub.session_id}
        # Every member refuses: the client gets the last error, and nobody is asked twice.
        pending = pool.submit(hub.infer, "p")
        for _ in range(2):
            pub, task = find()
            pub.result(task["taskId"], refused)
        r = pending.result(timeout=10)
        assert (r.status_code, r.json()["error"]["code"]) == (502, "backend_unreachable")
        assert all(pub.sent(stream) == [] for pub, stream in pubs)


@pytest.mark.parametrize("pool", [False, True])
def test_a_single_member_behaves_as_before_on_retryable_errors(hub, publisher, pool):
    publisher.register({"name": "p", "type": "openai", "model": "m", "pool": pool})
    stream = publisher.open()
    with cf.ThreadPoolExecutor(1) as ex:
        pending = ex.submit(hub.infer, "p")
        task = stream.next_task("infer")
        publisher.result(task["taskId"], {"error": {"message": "down", "retryable": True}})
        r = pending.result(timeout=10)
    assert (r.status_code, r.json()["error"]["code"]) == (502, "publisher_error")


def test_two_real_publishers_lose_no_request_when_one_backend_dies(
        hub, backend_factory, publish_factory):
    """`tether publish` sends pool and maxConcurrency; a backend that cannot be reached makes
    its publisher answer `retryable: true`, and the hub runs the task on the other member."""
    backends = [backend_factory(), backend_factory()]
    for backend in backends:
        publish_factory([{"name": "p", "model": "demo", "base_url": backend.base_url,
                          "max_concurrency": 2, "pool": True}])
    wait_until(lambda: [x["status"] for x in
                        hub.get("/api/v1/llms/p").json().get("members", [])]
               == ["active", "active"], timeout=20)
    assert [x["maxConcurrency"] for x in hub.llm("p")["members"]] == [2, 2]
    body = {"model": "p", "messages": [{"role": "user", "content": "hi"}],
            "demo_delay_s": 0.2}
    with cf.ThreadPoolExecutor(12) as pool:
        pending = [pool.submit(hub.post, "/v1/chat/completions", body) for _ in range(30)]
        wait_until(lambda: backends[0].stats().get("requests", 0) >= 2, timeout=10)
        backends[0].kill()  # mid-load: some tasks under way on it, more waiting at the hub
        answers = [p.result(timeout=60) for p in pending]
    assert [r.status_code for r in answers] == [200] * 30, [r.text for r in answers
                                                            if r.status_code != 200]


@pytest.mark.parametrize("grace_s", [0, 10])
def test_a_member_stopping_under_steady_load_ends_and_loses_no_request(
        hub_factory, backend_factory, publishing, grace_s):
    """SIGTERM to one member while requests keep coming: the hub keeps sending it tasks
    (it has free slots), each refused `retryable` and run by the other member, and the
    stopping publisher still ends soon after its drain (its wait for a quiet stream is
    bounded), every request answered 200. A task the hub sent to the member as its stream
    closed (its LlmActor had not heard yet) was answered 503 `publisher_offline` while the
    other member was free (1 run in about 20 under load, publisher_grace_s 0): it now goes
    to the other member. With a grace the stopping member's lost stream is waited for, and
    no request may wait on it."""
    hub = hub_factory(publisher_grace_s=grace_s)
    backends = [backend_factory(), backend_factory()]
    publishes = [publishing(hub.url, [{"name": "p", "model": "demo", "base_url": b.base_url,
                                       "max_concurrency": 2, "pool": True}],
                            drain_timeout_s=1)
                 for b in backends]
    wait_until(lambda: [x["status"] for x in
                        hub.get("/api/v1/llms/p").json().get("members", [])]
               == ["active", "active"], timeout=20)
    # A row is active from its register on, before its stream is open: a request in that
    # gap is rightly 503 with publisher_grace_s 0.
    wait_until(lambda: all("connected to " in p.logs() for p in publishes), timeout=20)
    body = {"model": "p", "messages": [{"role": "user", "content": "hi"}],
            "demo_delay_s": 0.05}
    stopped = threading.Event()

    def client() -> list[int | str]:
        codes: list[int | str] = []  # 200, or what came instead and when (from the SIGTERM)
        while not stopped.is_set():
            r = hub.post("/v1/chat/completions", body)
            codes.append(200 if r.status_code == 200 else
                         f"{time.monotonic() - started:.2f} s: {r.status_code} {r.text}")
        return codes

    started = time.monotonic()
    with cf.ThreadPoolExecutor(6) as pool:
        clients = [pool.submit(client) for _ in range(6)]
        wait_until(lambda: backends[0].stats()["requests"] >= 10, timeout=10)
        started = time.monotonic()
        publishes[0].proc.send_signal(signal.SIGTERM)
        assert publishes[0].proc.wait(15) == 0
        took = time.monotonic() - started
        served = backends[1].stats()["requests"]
        wait_until(lambda: backends[1].stats()["requests"] >= served + 10, timeout=10)
        stopped.set()
        codes = [code for c in clients for code in c.result(timeout=30)]
    assert set(codes) == {200}, [c for c in codes if c != 200]
    # The drain (1 s), then at most 3 s waiting for quiet, and the answers' posts: a wait
    # reset by every task the hub sent would have run to its 10 s bound.
    assert took < 8, took


def test_the_sweep_acts_per_member_and_the_name_goes_with_its_last(hub_factory,
                                                                   publisher_factory):
    hub = hub_factory(gc_interval_s=0.2, heartbeat_timeout_s=1.5, inactive_retention_s=0.5)
    a = publisher_factory(url=hub.url)
    a.register({"name": "p", "model": "m", **POOL})
    a.open()
    b = publisher_factory(url=hub.url)
    b.register({"name": "p", "model": "m", **POOL})
    b.open()

    def sessions() -> list[str]:
        r = hub.get("/api/v1/llms/p")
        return [x["providerSessionId"] for x in r.json()["members"]] if r.ok else []

    # b stops heartbeating: its member goes inactive, then is retired; a's heartbeats keep
    # the name (and a) alive.
    deadline = time.monotonic() + 10
    while sessions() != [a.session_id]:
        assert a.heartbeat().status_code == 200
        assert time.monotonic() < deadline, hub.llm("p")
        time.sleep(0.2)
    assert hub.llm("p")["status"] == "active"
    assert b.heartbeat().status_code == 404  # b's session owns nothing any more
    wait_until(lambda: hub.get("/api/v1/llms/p").status_code == 404, timeout=10)
