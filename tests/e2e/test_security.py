"""Keys, roles, ownership and limits with auth on, against a real hub (docs/protocol.md,
Conventions). Every refusal is checked together with the proof that nothing changed."""

from __future__ import annotations

import concurrent.futures as cf
import socket
import subprocess
import threading
import time

import pytest
import requests

from tests.conftest import DATABASES
from tests.support.hub import wait_until
from tests.support.procs import TETHER, wait_status
from tests.support.publisher import Stream, TestPublisher

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def make_key(hub, role: str, name: str) -> str:
    """`tether keys create` against the running hub's database, as an operator would."""
    done = subprocess.run(
        [*TETHER, "keys", "create", "--role", role, "--name", name,
         "--database-url", hub.settings["database_url"]],
        capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip().splitlines()[-1]


class KeyedPublisher(TestPublisher):
    """The test publisher, sending a bearer key."""

    def __init__(self, url: str, key: str, session_id: str | None = None) -> None:
        super().__init__(url, session_id)
        self.key = key
        self._patch = {"Authorization": f"Bearer {key}"}

    def _headers(self, extra: dict | None = None) -> dict:
        return {"Connection": "close", **self._patch, **(extra or {})}

    def register(self, *providers, expect: int = 200, **spec):
        specs = [{"name": p, "type": "openai", "model": "m", **spec} if isinstance(p, str)
                 else p for p in providers]
        r = requests.post(f"{self.url}/api/v1/llms/_provider-register", timeout=10,
                          json={"providerSessionId": self.session_id, "providers": specs},
                          headers=self._headers())
        assert r.status_code == expect, r.text
        if r.status_code == 200:
            self.session_id = r.json()["providerSessionId"]
        return r.json()

    def post(self, path: str, body: dict, session: str | None = None) -> requests.Response:
        extra = {"X-Provider-Session-Id": session} if session else {}
        return requests.post(f"{self.url}{path}", json=body, timeout=10,
                             headers=self._headers(extra))

    def heartbeat(self) -> requests.Response:
        return self.post("/api/v1/llms/_provider-heartbeat",
                         {"providerSessionId": self.session_id})

    def status(self, **statuses: str) -> requests.Response:
        return self.post("/api/v1/llms/_provider-status", {
            "providerSessionId": self.session_id,
            "llms": [{"name": n, "status": s} for n, s in statuses.items()]})

    def result(self, task_id: str, body, session: str | None = None) -> requests.Response:
        return self.post(f"/api/v1/llms/_provider-task/{task_id}/result", body, session)

    def open(self, last_event_id: str | None = None) -> Stream:
        stream = Stream(self.url, self.session_id, last_event_id,
                        headers={"Authorization": f"Bearer {self.key}"})
        assert stream.status == 200, stream.response.data
        assert stream.next().event == "hello"
        self.streams.append(stream)
        return stream


@pytest.fixture
def secured(hub_factory, request):
    hub = hub_factory(auth="on", database=getattr(request, "param", "sqlite"))
    keys = {name: make_key(hub, role, name) for name, role in (
        ("pub-a", "publisher"), ("pub-b", "publisher"), ("client", "client"),
        ("root", "admin"))}
    return hub, keys


def call(hub, method: str, path: str, key: str | None = None, **kw) -> requests.Response:
    headers = {"Connection": "close", **kw.pop("headers", {})}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return requests.request(method, hub.url + path, headers=headers, timeout=20, **kw)


def test_missing_unknown_and_malformed_keys_are_401(secured):
    hub, keys = secured
    for key in (None, "nonsense", "tk_000000000000_" + "x" * 43, keys["client"] + "x"):
        for method, path, body in (("GET", "/api/v1/llms", None),
                                   ("POST", "/v1/chat/completions", {"model": "m", **CHAT}),
                                   ("POST", "/api/v1/llms/_provider-register",
                                    {"providers": [{"name": "x", "type": "o", "model": "m"}]})):
            r = call(hub, method, path, key, json=body)
            assert r.status_code == 401, (key, path, r.text)
            assert r.json()["error"]["type"] == "authentication_error"
            assert r.json()["error"]["code"] == "unauthorized"
    assert call(hub, "GET", "/api/v1/llms", keys["root"]).json() == {"llms": []}  # nothing made
    # Open routes need no key.
    assert call(hub, "GET", "/healthz").status_code == 200
    assert call(hub, "GET", "/openapi.json").json()["openapi"] == "3.1.0"


@pytest.mark.parametrize("secured", DATABASES, indirect=True)
def test_a_revoked_key_is_refused_within_one_second(secured):
    """Keys are verified from memory; `tether keys revoke` (another process, the same
    database) still shuts a key out within a second, while it is in constant use."""
    hub, keys = secured
    seen: list[tuple[float, int]] = []
    stop = threading.Event()

    def use() -> None:
        while not stop.is_set():
            seen.append((time.monotonic(), call(hub, "GET", "/api/v1/llms",
                                                keys["client"]).status_code))
            time.sleep(0.02)

    user = threading.Thread(target=use, daemon=True)
    user.start()
    try:
        wait_until(lambda: len(seen) >= 5)
        revoking = time.monotonic()
        subprocess.run([*TETHER, "keys", "revoke", "client", "--database-url",
                        hub.settings["database_url"]], check=True, capture_output=True,
                       timeout=30)
        revoked = time.monotonic()
        # The key was in use, and valid, just before the command began (it may commit the
        # revocation at any moment of its run, which takes seconds on a loaded machine).
        assert any(status == 200 and at > revoking - 1.0 for at, status in seen)
        refused = wait_until(lambda: next((at for at, status in seen if status == 401), None),
                             timeout=5)
        wait_until(lambda: seen[-1][0] > refused + 1.0)
    finally:
        stop.set()
        user.join(5)
    assert refused - revoked < 1.0
    assert {status for at, status in seen if at >= refused} == {401}  # and stays refused
    assert {status for at, status in seen if at < refused} == {200}
    assert call(hub, "GET", "/api/v1/llms", keys["root"]).status_code == 200  # others unaffected


def test_roles_keep_to_their_routes(secured):
    hub, keys = secured
    r = call(hub, "POST", "/api/v1/llms/_provider-register", keys["client"],
             json={"providers": [{"name": "sneaky", "type": "o", "model": "m"}]})
    assert r.status_code == 403 and r.json()["error"]["type"] == "permission_error"
    assert call(hub, "GET", "/api/v1/llms/sneaky", keys["root"]).status_code == 404
    for method, path, body in (("GET", "/api/v1/llms", None),
                               ("POST", "/api/v1/llms/x/infer", CHAT),
                               ("GET", "/v1/models", None)):
        r = call(hub, method, path, keys["pub-a"], json=body)
        assert r.status_code == 403, (path, r.text)
    assert call(hub, "GET", "/metrics", keys["client"]).status_code == 403
    metrics = call(hub, "GET", "/metrics", keys["root"])
    assert metrics.status_code == 200 and "tether_publisher_sessions" in metrics.text


def test_a_session_belongs_to_the_key_that_registered_it(secured):
    hub, keys = secured
    owner = KeyedPublisher(hub.url, keys["pub-a"], "session-a")
    owner.register("model-a")
    stream = owner.open()
    before = call(hub, "GET", "/api/v1/llms/model-a", keys["root"]).json()

    thief = KeyedPublisher(hub.url, keys["pub-b"], "session-a")  # presents A's session id
    for r in (thief.register("model-a", expect=403), thief.register("other", expect=403)):
        assert r["error"]["code"] == "forbidden"
    assert thief.heartbeat().status_code == 403
    assert thief.status(**{"model-a": "hibernating"}).status_code == 403
    hijack = Stream(hub.url, "session-a", headers={"Authorization": f"Bearer {keys['pub-b']}"})
    assert hijack.status == 403
    after = call(hub, "GET", "/api/v1/llms/model-a", keys["root"]).json()
    assert after == before  # owner, status and heartbeat untouched
    assert call(hub, "GET", "/api/v1/llms/other", keys["root"]).status_code == 404

    # B's own session cannot take A's live name either (409), nor answer A's tasks (403).
    rival = KeyedPublisher(hub.url, keys["pub-b"])
    assert rival.register("model-a", expect=409)["error"]["code"] == \
        "llm_owned_by_other_session"
    rival.register("model-b")
    with cf.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(call, hub, "POST", "/api/v1/llms/model-a/infer", keys["client"],
                              json=CHAT)
        task = stream.next_task("infer")
        for session in (None, rival.session_id):
            r = rival.result(task["taskId"], {"status": 200, "body": {"forged": True}},
                             session=session)
            assert r.status_code == 403, r.text
        # The task is still pending: its real owner answers it.
        assert owner.result(task["taskId"], {"status": 200, "body": {"real": True}}).json() \
            == {"ok": True}
        assert pending.result().json() == {"real": True}


def test_only_a_register_claims_a_session_id(secured):
    """Issue 10.7: presenting an unclaimed id on stream, heartbeat or status used to claim it
    for that key, and the rightful publisher's register then got 403."""
    hub, keys = secured
    squatter = KeyedPublisher(hub.url, keys["pub-b"], "victim-session")
    for r in (squatter.heartbeat(), squatter.status(**{"model-v": "hibernating"})):
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "session_not_found"
    stream = Stream(hub.url, "victim-session",
                    headers={"Authorization": f"Bearer {keys['pub-b']}"})
    assert stream.status == 404 and b"session_not_found" in stream.response.data
    victim = KeyedPublisher(hub.url, keys["pub-a"], "victim-session")
    victim.register("model-v")  # still free: the id is the first registrant's
    victim.open()
    assert victim.heartbeat().status_code == 200
    assert squatter.heartbeat().status_code == 403


def test_admin_may_act_on_any_session(secured):
    hub, keys = secured
    KeyedPublisher(hub.url, keys["pub-a"], "session-a").register("model-a")
    admin = KeyedPublisher(hub.url, keys["root"], "session-a")
    assert admin.heartbeat().status_code == 200
    assert admin.status(**{"model-a": "hibernating"}).status_code == 200


def test_rate_limit_and_inflight_limit_are_429_with_retry_after(hub_factory):
    hub = hub_factory(auth="on", rate_limit_per_min=3, max_inflight_per_key=1)
    client = make_key(hub, "client", "c")
    publisher = make_key(hub, "publisher", "p")
    pub = KeyedPublisher(hub.url, publisher)
    pub.register("m")
    stream = pub.open()
    with cf.ThreadPoolExecutor(2) as pool:
        first = pool.submit(call, hub, "POST", "/api/v1/llms/m/infer", client, json=CHAT)
        task = stream.next_task("infer")
        r = call(hub, "POST", "/api/v1/llms/m/infer", client, json=CHAT)
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert r.json()["error"]["type"] == "rate_limit_error"
        assert int(r.headers["Retry-After"]) >= 1
        pub.result(task["taskId"], {"status": 200, "body": {}})
        assert first.result().status_code == 200
    # Three requests a minute: the limit is hit, with a wait of about 20 s to the next.
    statuses = [call(hub, "POST", "/api/v1/llms/nope/infer", client, json=CHAT).status_code
                for _ in range(3)]
    assert statuses[-1] == 429 and 404 in statuses
    r = call(hub, "POST", "/api/v1/llms/nope/infer", client, json=CHAT)
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 20
    # Other keys have their own budget.
    other = make_key(hub, "client", "c2")
    assert call(hub, "POST", "/api/v1/llms/nope/infer", other, json=CHAT).status_code == 404


def test_open_streams_per_publisher_key_are_bounded(hub_factory):
    hub = hub_factory(auth="on", max_streams_per_key=1)
    key = make_key(hub, "publisher", "p")
    one = KeyedPublisher(hub.url, key, "s1")
    one.register("m1")
    one.open()
    two = KeyedPublisher(hub.url, key, "s2")
    two.register("m2")
    r = Stream(hub.url, "s2", headers={"Authorization": f"Bearer {key}"})
    assert r.status == 429


def test_a_100_mb_body_is_refused_without_being_read(hub):
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/llms/m/infer HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: 104857600\r\n\r\n" + b"{" * 1024)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert time.monotonic() - started < 5  # answered at once, not after 100 MB
        while b"body_too_large" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        assert b"body_too_large" in answer


def test_prompts_and_completions_are_never_logged_or_stored(
        hub, backend_factory, publish_factory):
    canary = "CANARY-7f3a9c-do-not-log"
    backend = backend_factory()
    publish = publish_factory([{"name": "m", "model": "demo-model",
                                "base_url": backend.base_url}])
    wait_status(hub, "m", "active")
    body = {"model": "m", "messages": [{"role": "user", "content": f"say {canary}"}],
            "demo_reply": f"here is {canary} back"}
    r = call(hub, "POST", "/v1/chat/completions", json=body)
    assert canary in r.json()["choices"][0]["message"]["content"]  # it did travel both ways
    streamed = call(hub, "POST", "/v1/chat/completions", json={**body, "stream": True})
    assert canary.split("-")[0] in streamed.text
    bad = call(hub, "POST", "/v1/chat/completions",
               json={"model": "m", "messages": [{"role": canary * 10}]})
    assert bad.status_code == 400
    hub.stop()
    publish.stop()
    for path in [hub.log_path, publish.log, *hub.tmp.glob("hub.db*")]:
        assert canary.encode() not in path.read_bytes(), path
