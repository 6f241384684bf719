"""A session moves between hub processes (PROTOCOL.md, Several hub processes): a stream
that opens on another process takes the session over cluster-wide, and the old home ends
its stream without marking rows `inactive`; `tether publish` with the cluster's URLs moves
to the next one on a loss and is served through every process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.cluster.test_reads import shows
from tests.cluster.test_routing import in_background, online, result_of
from tests.support.chaos import ChaosProxy
from tests.support.hub import Hub, wait_until
from tests.support.procs import Publish
from tests.support.publisher import TestPublisher

pytestmark = pytest.mark.timeout(120)


def served_by(hub: Hub, name: str, pub: TestPublisher, stream: Any, body: Any) -> None:
    """A request on `hub` reaches `stream` and its answer comes back."""
    call = in_background(lambda: hub.infer(name, f"via {hub.port}"))
    task = stream.next_task("infer", timeout=10)
    assert task["request"]["messages"][0]["content"] == f"via {hub.port}"
    assert pub.result(task["taskId"], {"status": 200, "body": body}).status_code == 200
    answer = result_of(call)
    assert answer.status_code == 200, answer.text
    assert answer.json() == body


def test_a_stream_opening_on_another_process_takes_the_session_over_rows_stay_active(
        cluster: Callable[..., Hub]) -> None:
    a, b = cluster(), cluster()
    pa, sa = online(a, "m1")
    served_by(a, "m1", pa, sa, "before")
    # The same session opens a stream on b while its stream on a is still open.
    pb = TestPublisher(b.url, pa.session_id)
    sb = pb.open()
    sa.wait_closed(timeout=10)  # a ended its stream: b is the home now
    for hub in (a, b):
        served_by(hub, "m1", pb, sb, hub.port)
    for hub in (a, b):  # a's stream end was no stream loss: the row never went inactive
        row = hub.llm("m1")
        assert (row["status"], row["inactiveSince"]) == ("active", None), row
    for hub in (a, b):  # one session, its stream open on b, whichever process is asked
        wait_until(shows(hub, "m1", streamOpen=True, status="active"), timeout=10)
        totals = hub.get("/status/state").json()["totals"]
        assert (totals["sessions"], totals["streamsOpen"]) == (1, 1)
    pb.close()


@pytest.fixture
def publishers(tmp_path: Path) -> Iterator[Callable[..., Publish]]:
    made: list[Publish] = []

    def make(hubs: list[str], backends: list[dict[str, Any]]) -> Publish:
        publish = Publish(tmp_path, hubs, backends).start()  # type: ignore[arg-type]
        made.append(publish)
        return publish

    yield make
    for publish in made:
        publish.stop()


def chat(hub: Hub, name: str = "llama") -> requests.Response:
    return hub.post(f"/api/v1/llms/{name}/infer",
                    {"messages": [{"role": "user", "content": "Hello"}]}, timeout=30)


def test_the_publisher_moves_to_the_next_process_and_is_served_through_every_one(
        cluster: Callable[..., Hub], backend_factory, publishers) -> None:
    a, b = cluster(), cluster()
    backend = backend_factory()
    to_a = ChaosProxy(a.port)  # the publisher's way to a, which the test can cut
    try:
        publish = publishers([to_a.url, b.url], [{"name": "llama", "model": "demo-model",
                                                  "base_url": backend.base_url}])
        wait_until(lambda: f"connected to {to_a.url}\n" in publish.logs(), timeout=20)
        for hub in (a, b):
            wait_until(lambda h=hub: h.llm("llama")["status"] == "active", timeout=10)
            assert chat(hub).json()["model"] == "demo-model"
        session = a.llm("llama")["providerSessionId"]
        to_a.cut()  # the stream to a breaks: the publisher goes on to b
        wait_until(lambda: f"connected to {b.url}\n" in publish.logs(), timeout=20)
        assert f"moving to the next hub: {b.url}" in publish.logs()
        for hub in (b, a):  # served through both, under the same session
            wait_until(lambda h=hub: h.llm("llama")["status"] == "active", timeout=10)
            r = chat(hub)
            assert r.status_code == 200, r.text
            assert r.json()["model"] == "demo-model"
            assert hub.llm("llama")["providerSessionId"] == session
        assert backend.stats()["completed"] == 4
    finally:
        to_a.close()
