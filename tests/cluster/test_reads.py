"""Reads show the whole cluster (docs/protocol.md, Several hub processes): `GET /api/v1/llms…`
and `/status/state` on any process show every Llm with its live in-flight counts, whichever
process owns it."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from tests.cluster.test_routing import in_background, online, result_of
from tests.support.hub import Hub, wait_until

pytestmark = pytest.mark.timeout(90)


def member_in_flight(hub: Hub, name: str) -> int:
    return hub.llm(name)["members"][0]["inFlight"]


def listed_in_flight(hub: Hub, name: str) -> int:
    rows = hub.get("/api/v1/llms").json()["llms"]
    return next(row["members"][0]["inFlight"] for row in rows if row["name"] == name)


def status_row(hub: Hub, name: str) -> dict[str, Any] | None:
    state = hub.get("/status/state").json()
    return next((row for row in state["llms"] if row["name"] == name), None)


def shows(hub: Hub, name: str, **expected: Any) -> Callable[[], bool]:
    def check() -> bool:
        row = status_row(hub, name)
        return row is not None and all(row[k] == v for k, v in expected.items())
    return check


def test_every_process_shows_every_llm_with_its_live_in_flight_counts(
        cluster: Callable[..., Hub]) -> None:
    a, b = cluster(), cluster()
    pa, sa = online(a, "on-a")  # a owns on-a (its stream is there), b owns on-b
    pb, sb = online(b, "on-b")
    ca = in_background(lambda: b.infer("on-a", "x"))
    ta = sa.next_task("infer", timeout=10)
    cb = in_background(lambda: a.infer("on-b", "y"))
    tb = sb.next_task("infer", timeout=10)
    for hub in (a, b):
        for name, session in (("on-a", pa.session_id), ("on-b", pb.session_id)):
            wait_until(lambda h=hub, n=name: member_in_flight(h, n) == 1, timeout=10)
            assert listed_in_flight(hub, name) == 1
            wait_until(shows(hub, name, inFlight=1, status="active", streamOpen=True,
                             session=session), timeout=10)
        totals = hub.get("/status/state").json()["totals"]
        assert (totals["sessions"], totals["streamsOpen"], totals["inFlight"]) == (2, 2, 2)
    # Answered: 0 everywhere again.
    pa.result(ta["taskId"], {"status": 200, "body": "a"})
    pb.result(tb["taskId"], {"status": 200, "body": "b"})
    assert (result_of(ca).json(), result_of(cb).json()) == ("a", "b")
    for hub in (a, b):
        for name in ("on-a", "on-b"):
            wait_until(lambda h=hub, n=name: member_in_flight(h, n) == 0, timeout=10)
            wait_until(shows(hub, name, inFlight=0), timeout=10)
    # A stream that goes shows on the other process too (its row goes inactive).
    sb.close()
    wait_until(shows(a, "on-b", status="inactive", streamOpen=False), timeout=10)
    pa.close()


def hold_open(hub: Hub, name: str) -> socket.socket:
    """A streaming request whose client reads nothing: in flight until the socket closes."""
    body = json.dumps({"messages": [{"role": "user", "content": "slow"}], "stream": True,
                       "demo_chunks": 1000, "demo_delay_s": 0.05}).encode()
    sock = socket.create_connection(("127.0.0.1", hub.port))
    sock.sendall(f"POST /api/v1/llms/{name}/infer HTTP/1.1\r\nHost: x\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
                 .encode() + body)
    return sock


def test_a_public_llm_shows_its_calls_on_every_process_summed(
        cluster: Callable[..., Hub], backend_factory, tmp_path) -> None:
    backend = backend_factory()
    conf = tmp_path / "public.toml"
    conf.write_text(f'[[llms]]\nname = "cloud"\ntype = "openai"\nmodel = "demo-model"\n'
                    f'base_url = "{backend.base_url}"\n')
    a, b = cluster(config=str(conf)), cluster(config=str(conf))
    held = [hold_open(a, "cloud")]
    for hub in (a, b):
        wait_until(shows(hub, "cloud", inFlight=1), timeout=10)
    held.append(hold_open(b, "cloud"))
    for hub in (a, b):
        wait_until(shows(hub, "cloud", inFlight=2, kind="public"), timeout=10)
    for sock in held:
        sock.close()
    for hub in (a, b):
        wait_until(shows(hub, "cloud", inFlight=0), timeout=10)
