"""register_rate_per_min: registrations per publisher key (per address with auth off) are
limited, 429 with Retry-After past it; each key counts on its own."""

from __future__ import annotations

from tests.e2e.test_security import make_key
from tests.support.publisher import TestPublisher


def test_registers_past_the_rate_get_429_with_retry_after(hub_factory):
    hub = hub_factory(register_rate_per_min=3)
    for _ in range(3):  # a new session each time: what an unbounded caller would grow
        TestPublisher(hub.url).register("llama", pool=True)
    refused = TestPublisher(hub.url).register("llama", pool=True, expect=429)
    assert refused["error"]["code"] == "rate_limited"
    r = hub.post("/api/v1/llms/_provider-register",
                 {"providers": [{"name": "other", "type": "openai", "model": "m"}]})
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 60


def test_the_rate_is_per_publisher_key_with_auth_on(hub_factory):
    hub = hub_factory(auth="on", register_rate_per_min=1)
    keys = [make_key(hub, "publisher", f"pub{i}") for i in range(2)]
    for key in keys:
        assert _register(hub, key, f"llm-{key[-4:]}").status_code == 200
    assert _register(hub, keys[0], "another").status_code == 429
    assert _register(hub, keys[1], "another").status_code == 429


def _register(hub, key: str, name: str):
    return hub.post("/api/v1/llms/_provider-register",
                    {"providers": [{"name": name, "type": "openai", "model": "m"}]},
                    headers={"Authorization": f"Bearer {key}"})
