"""Register: create, update, conflicts, atomicity, sticky re-register (docs/protocol.md,
Register)."""

from __future__ import annotations

from tests.support.hub import wait_until


def test_register_creates_active_virtual_rows_with_a_fresh_session(hub, publisher):
    body = publisher.register("llama3-laptop", "qwen:7b", tier="slow", description="d")
    assert body["providerSessionId"]
    rows = {row["name"]: row for row in body["llms"]}
    assert set(rows) == {"llama3-laptop", "qwen:7b"}
    for row in rows.values():
        assert row["kind"] == "virtual"
        assert row["status"] == "active"
        assert row["providerSessionId"] == body["providerSessionId"]
        assert row["inactiveSince"] is None
        assert row["lastHeartbeatAt"].endswith("Z")
        assert row["tier"] == "slow" and row["description"] == "d"
    listed = hub.get("/api/v1/llms").json()["llms"]
    assert [row["name"] for row in listed] == ["llama3-laptop", "qwen:7b"]  # sorted by name


def test_register_keeps_a_given_session_id_and_updates_own_rows(hub, publisher_factory):
    pub = publisher_factory("laptop-1")
    first = pub.register("m1")["llms"][0]
    again = pub.register(
        {"name": "m1", "type": "llamacpp", "model": "llama3.1:8b", "initialStatus": "hibernating",
         "extraConfig": {"ctx": 8192}}
    )
    assert again["providerSessionId"] == "laptop-1"
    row = again["llms"][0]
    assert row["id"] == first["id"]
    assert (row["type"], row["model"], row["status"]) == ("llamacpp", "llama3.1:8b", "hibernating")
    assert row["extraConfig"] == {"ctx": 8192}
    assert row["tier"] == "fast"  # untouched optional fields keep their value


def test_another_sessions_live_row_is_a_conflict(hub, publisher_factory):
    owner = publisher_factory()
    owner.register("shared")
    owner.register({"name": "sleepy", "type": "openai", "model": "m",
                    "initialStatus": "hibernating"})
    intruder = publisher_factory()
    for name in ("shared", "sleepy"):
        r = intruder.register(name, expect=409)
        assert r["error"]["code"] == "llm_owned_by_other_session"
        assert r["error"]["type"] == "invalid_request_error"
        assert hub.llm(name)["providerSessionId"] == owner.session_id


def test_registration_is_atomic(hub, publisher_factory):
    owner = publisher_factory()
    owner.register("taken")
    intruder = publisher_factory("intruder")
    intruder.register("fresh-one", "taken", expect=409)
    assert hub.get("/api/v1/llms/fresh-one").status_code == 404


def test_sticky_reregister_takes_over_an_inactive_row(hub, publisher_factory):
    old = publisher_factory()
    row_id = old.register("roaming")["llms"][0]["id"]
    stream = old.open()
    stream.close()
    wait_until(lambda: hub.llm("roaming")["status"] == "inactive")
    new = publisher_factory()
    row = new.register("roaming")["llms"][0]
    assert row["id"] == row_id
    assert row["providerSessionId"] == new.session_id
    assert row["status"] == "active" and row["inactiveSince"] is None


def test_bad_register_bodies_are_400_naming_the_field(hub):
    cases = [
        ({"providers": []}, "providers"),
        ({"providers": [{"name": "a", "type": "openai"}]}, "providers[0].model"),
        ({"providers": [{"name": "-bad", "type": "o", "model": "m"}]}, "providers[0].name"),
        ({"providers": [{"name": "a", "type": "o", "model": "m", "initialStatus": "inactive"}]},
         "providers[0].initialStatus"),
        ({"providerSessionId": 7, "providers": [{"name": "a", "type": "o", "model": "m"}]},
         "providerSessionId"),
        ({"providers": [{"name": "a", "type": "o", "model": "m"},
                        {"name": "a", "type": "o", "model": "m"}]}, "providers[1].name"),
    ]
    for body, field in cases:
        r = hub.post("/api/v1/llms/_provider-register", body)
        assert r.status_code == 400, (body, r.text)
        error = r.json()["error"]
        assert error["code"] == "invalid_request"
        assert error["param"] == field, (body, error)
        assert field in error["message"]
    r = hub.post("/api/v1/llms/_provider-register", data=b"{not json",
                 headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_request"
    assert hub.get("/api/v1/llms").json() == {"llms": []}
