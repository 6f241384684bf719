"""Discovery (docs/protocol.md, Discovery): a real `tether publish` next to a fake backend
whose model list the test changes while it runs, behind a real hub."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.support.hub import wait_until
from tests.support.listing_backend import ListingBackend
from tests.support.procs import TETHER, Publish, _spawn, stop, wait_status

pytestmark = pytest.mark.timeout(120)

INTERVAL = 0.3  # probe_interval_s: how often the list is read


@pytest.fixture
def fake() -> Iterator[Any]:
    made: list[ListingBackend] = []

    def build(*models: str, **kw: Any) -> ListingBackend:
        backend = ListingBackend(list(models), **kw).start()
        made.append(backend)
        return backend

    yield build
    for backend in made:
        backend.stop()


def names(hub) -> list[str]:
    return sorted(row["name"] for row in hub.get("/api/v1/llms").json()["llms"])


def members(hub, name: str) -> int:
    r = hub.get(f"/api/v1/llms/{name}")
    return len(r.json()["members"]) if r.status_code == 200 else 0


def listed_again(backend: ListingBackend, times: int = 2) -> None:
    """Wait until the publisher read the list `times` more times (a whole interval went by
    with the list as it is now)."""
    seen = backend.listings
    wait_until(lambda: backend.listings >= seen + times, timeout=10)


def chat(hub, name: str) -> requests.Response:
    return requests.post(f"{hub.url}/v1/chat/completions", timeout=30, json={
        "model": name, "messages": [{"role": "user", "content": "hi"}]})


def test_pulled_models_appear_and_removed_ones_are_withdrawn(hub, fake, publish_factory):
    backend = fake("llama3.1:8b", "qwen2.5:7b")
    publish = publish_factory([{"base_url": backend.base_url, "prefix": "gpu-"}],
                              probe_interval_s=INTERVAL)
    wait_until(lambda: names(hub) == ["gpu-llama3.1:8b", "gpu-qwen2.5:7b"], timeout=20)
    wait_status(hub, "gpu-llama3.1:8b", "active")
    r = chat(hub, "gpu-qwen2.5:7b")
    assert r.status_code == 200, r.text
    # The backend was asked for its own id; the client sees the Llm name.
    assert backend.asked[-1] == "qwen2.5:7b"
    assert r.json()["model"] == "gpu-qwen2.5:7b"
    backend.models.append("mistral:7b")  # pulled
    wait_until(lambda: "gpu-mistral:7b" in names(hub), timeout=10)
    backend.models.remove("qwen2.5:7b")  # removed: withdrawn, not left to go inactive
    wait_until(lambda: "gpu-qwen2.5:7b" not in names(hub), timeout=10)
    assert names(hub) == ["gpu-llama3.1:8b", "gpu-mistral:7b"]
    assert chat(hub, "gpu-qwen2.5:7b").json()["error"]["code"] == "llm_not_found"
    wait_status(hub, "gpu-mistral:7b", "active")
    assert chat(hub, "gpu-mistral:7b").status_code == 200
    assert "withdrew gpu-qwen2.5:7b" in publish.logs()


def test_invalid_ids_are_skipped_with_one_warning_and_a_failing_listing_changes_nothing(
        hub, fake, publish_factory):
    backend = fake("good", "bad/id", "_reserved")
    publish = publish_factory([{"base_url": backend.base_url}], probe_interval_s=INTERVAL)
    wait_until(lambda: names(hub) == ["good"], timeout=20)
    listed_again(backend, 3)
    logs = publish.logs()
    assert logs.count("no valid Llm name, skipped: bad/id, _reserved") == 1, logs
    # The listing fails (the backend answers 500): what is published stays, and one line
    # says so however many intervals it lasts.
    backend.failing = True
    listed_again(backend, 4)
    assert names(hub) == ["good"]
    wait_status(hub, "good", "active")
    assert publish.logs().count("could not list the models of") == 1, publish.logs()
    backend.models = ["other"]
    backend.failing = False  # back, with another list: the change applies at once
    wait_until(lambda: names(hub) == ["other"], timeout=10)
    assert publish.logs().count("can be listed again") == 1
    assert publish.proc is not None and publish.proc.poll() is None  # never a crash


def test_a_backend_down_at_start_is_published_once_it_lists(hub, fake, publish_factory):
    backend = fake("late")
    backend.failing = True
    publish = publish_factory([{"base_url": backend.base_url}], probe_interval_s=INTERVAL)
    listed_again(backend, 3)
    assert names(hub) == []
    backend.failing = False
    wait_until(lambda: names(hub) == ["late"], timeout=10)
    wait_status(hub, "late", "active")
    # Probed like any backend that is down: one line, not one per probe.
    assert publish.logs().count("lists (down for now)") == 1
    assert len(publish.logs().splitlines()) < 10, publish.logs()


def test_a_sleeping_backend_with_a_wake_recipe_is_woken_once_to_read_its_list(
        hub, fake, publish_factory):
    backend = fake("woken")
    backend.failing = True  # asleep: its list cannot be read
    publish_factory([{"base_url": backend.base_url,
                      "wake": {"http": {"url": f"http://127.0.0.1:{backend.port}/_wake"}}}],
                    probe_interval_s=INTERVAL)
    wait_until(lambda: names(hub) == ["woken"], timeout=20)
    wait_status(hub, "woken", "active")
    assert backend.wakes == 1


def test_one_wake_wakes_every_model_of_the_backend(hub, fake, publish_factory):
    backend = fake("a", "b")
    recipe = f"http://127.0.0.1:{backend.port}"
    publish_factory([{"base_url": backend.base_url, "idle_sleep_s": 2,
                      "wake": {"http": {"url": f"{recipe}/_wake"}},
                      "sleep": {"http": {"url": f"{recipe}/_sleep"}}}],
                    probe_interval_s=INTERVAL)
    # Idle: the backend process sleeps once, and both its names hibernate.
    for name in ("a", "b"):
        wait_status(hub, name, "hibernating", timeout=20)
    assert backend.sleeps == 1
    assert chat(hub, "a").status_code == 200  # wakes the backend
    # The other model lives in that same process: awake too, without a wake of its own
    # (nobody asked for b: only the publisher's report can make it active).
    wait_status(hub, "b", "active")
    assert backend.wakes == 1


def test_more_than_64_models_are_registered_in_several_calls(hub, fake, publish_factory):
    many = [f"model-{i:03d}" for i in range(150)]
    backend = fake(*many)
    publish_factory([{"base_url": backend.base_url}], probe_interval_s=INTERVAL)
    wait_until(lambda: names(hub) == many, timeout=30)
    backend.models = many[:10]  # 140 withdrawn: three withdraw calls
    wait_until(lambda: names(hub) == many[:10], timeout=30)


def test_a_restarted_publisher_withdraws_what_went_while_it_was_away(
        hub, fake, tmp_path):
    backend = fake("stays", "goes")
    publish = Publish(tmp_path, hub.url, [{"base_url": backend.base_url}],
                      probe_interval_s=INTERVAL).start()
    try:
        wait_until(lambda: names(hub) == ["goes", "stays"], timeout=20)
        wait_status(hub, "goes", "active")
        publish.stop()
        wait_until(lambda: hub.llm("goes")["status"] == "inactive", timeout=10)
        backend.models = ["stays"]
        # The same config and session file: the same session. Its register names only
        # "stays"; the hello lists "goes" too, which it withdraws at once (a heartbeat
        # would otherwise revive it).
        publish.start()
        wait_until(lambda: names(hub) == ["stays"], timeout=20)
        wait_status(hub, "stays", "active")
        assert "the hub still lists goes for this session: withdrawing" in publish.logs()
    finally:
        publish.stop()


def test_a_pool_member_whose_backend_drops_the_model_leaves_the_pool(
        hub, fake, publish_factory):
    one, two = fake("shared", "only-one"), fake("shared")
    publish_factory([{"base_url": one.base_url, "pool": True}], probe_interval_s=INTERVAL)
    publish_factory([{"base_url": two.base_url, "pool": True}], probe_interval_s=INTERVAL)
    wait_until(lambda: members(hub, "shared") == 2, timeout=20)
    one.models = ["only-one"]
    wait_until(lambda: members(hub, "shared") == 1, timeout=10)
    wait_status(hub, "shared", "active")
    for _ in range(3):  # every request now goes to the member left
        assert chat(hub, "shared").status_code == 200
    assert two.asked == ["shared"] * 3 and one.asked == []


def test_one_backend_process_bounds_its_tasks_across_all_its_models(
        hub, fake, publish_factory):
    backend = fake("a", "b")
    publish_factory([{"base_url": backend.base_url, "max_concurrency": 1}],
                    probe_interval_s=INTERVAL)
    for name in ("a", "b"):
        wait_status(hub, name, "active")
    backend.hold.clear()
    with cf.ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(chat, hub, name) for name in ("a", "b", "a", "b")]
        wait_until(lambda: backend.inflight == 1, timeout=10)
        backend.hold.set()
        assert [x.result().status_code for x in answers] == [200] * 4
    # Each model's hub limit is 1, but four requests over two models still ran one at a
    # time: the publisher queued them behind the backend's one slot.
    assert backend.max_inflight == 1
    assert sorted(backend.asked) == ["a", "a", "b", "b"]


def test_an_ollama_backend_describes_its_models_on_the_hubs_api_tags(
        hub, fake, publish_factory):
    backend = fake("llama3.1:8b", ollama=True)
    publish_factory([{"base_url": backend.base_url}], probe_interval_s=INTERVAL)
    wait_until(lambda: names(hub) == ["llama3.1:8b"], timeout=20)
    row = hub.llm("llama3.1:8b")
    assert row["description"] == "llama 8.0B Q4_K_M"
    tags = hub.get("/api/tags").json()["models"]
    assert tags[0]["name"] == "llama3.1:8b"
    assert tags[0]["details"] == backend.details("llama3.1:8b")


def test_flags_alone_publish_every_model_a_backend_lists(hub, fake, tmp_path):
    backend = fake("llama3.1:8b", "qwen2.5:7b")
    log = tmp_path / "flags.log"
    proc = _spawn([*TETHER, "publish", "--hub", hub.url, "--backend", backend.base_url,
                   "--prefix", "laptop-", "--session-file", str(tmp_path / "f.session")], log)
    try:
        wait_until(lambda: names(hub) == ["laptop-llama3.1:8b", "laptop-qwen2.5:7b"],
                   timeout=20)
        wait_status(hub, "laptop-llama3.1:8b", "active")
        assert chat(hub, "laptop-llama3.1:8b").json()["model"] == "laptop-llama3.1:8b"
        assert backend.asked == ["llama3.1:8b"]
    finally:
        stop(proc)
