"""`python -m bench.run bodies`: what a maximum-size request body costs the hub worker while
it is in flight (issue 27, item 4), and whether the worker gives it back after.

Each shape is a body of `max_body_bytes` (4 MiB) the hub accepts (or, the last, refuses):
EIGHT of them in flight at once on one Llm whose publisher holds every task (it reads its
stream and never answers). The worker's peak RSS (VmHWM, reset through
/proc/<pid>/clear_refs before each shape) above its RSS before, per body, against the
body's size: the target is at most 4x. Then the clients leave (their tasks are cancelled)
and the RSS a few seconds later says what was given back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gevent

from bench.client import Conn, post_json, sse_frames
from bench.processes import rss_kib
from bench.results import save, table
from bench.stack import Stack

IN_FLIGHT = 8
BODY = 4 * 1024 * 1024  # max_body_bytes' default
TARGET = 4.0  # peak RSS per in-flight body, in body sizes


def _fill(head: dict[str, Any], filler: str) -> bytes:
    """`head` with `filler` text added to make the body exactly BODY bytes."""
    body = {**head, "messages": [{**head["messages"][0], "pad": ""}]}
    room = BODY - len(json.dumps(body).encode())
    body["messages"][0]["pad"] = (filler * (room // len(filler) + 1))[:room]
    raw = json.dumps(body).encode()
    assert len(raw) == BODY, len(raw)
    return raw


def shapes() -> dict[str, tuple[bytes, int]]:
    """name -> (body, the status the hub answers it with)."""
    user = {"role": "user"}
    values = 65536 - 16  # max_json_values, less the few values around them
    return {
        # One long text: the common case of a big prompt.
        "one 4 MiB text": (_fill({"messages": [{**user, "content": ""}]}, "lorem ipsum "),
                           200),
        # As many values as the bound allows, each a short string, filling the bytes.
        "65k short strings": (json.dumps({"messages": [{**user, "content": [
            "x" * (BODY // values - 4) for _ in range(values)]}]}).encode().ljust(BODY, b" "),
                              200),
        # The most costly values per byte: empty objects (`{}`: 3 bytes, ~64 in memory).
        "65k empty objects": (_fill({"messages": [{**user, "content": [
            {} for _ in range(values)]}]}, "a"), 200),
        # Over the value bound: refused from its bytes, before anything is parsed.
        "4 MiB of {} (refused)": (b"[" + b",".join([b"{}"] * (BODY // 3 - 1)) + b"]", 400),
    }


def hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def reset_hwm(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def _in_flight(base: str) -> int:
    conn = Conn(base)
    conn.send("GET", "/status/state")
    status, headers = conn.head()
    state = json.loads(conn.body(headers))
    conn.close()
    return sum(row["inFlight"] + row["queued"] for row in state["llms"])


def _held_stream(base: str, seen: list[int]) -> Conn:
    """Register Llm `hold` and read its task stream, answering nothing."""
    conn = Conn(base)
    status, answer = post_json(conn, "/api/v1/llms/_provider-register", {
        "providerSessionId": "hold", "providers": [
            {"name": "hold", "type": "openai", "model": "m"}]})
    assert status == 200, answer
    conn.close()
    stream = Conn(base)
    stream.send("GET", "/api/v1/llms/_provider-stream", None,
                "X-Provider-Session-Id: hold\r\n")
    assert stream.head()[0] == 200

    def read() -> None:
        for event, _ in sse_frames(stream):
            if event == "task":
                seen.append(1)

    gevent.spawn(read)
    return stream


def measure(base: str, pid: int, body: bytes, status: int, seen: list[int]) -> dict[str, Any]:
    gevent.sleep(1)
    before = rss_kib(pid)
    reset_hwm(pid)
    tasks_before = len(seen)
    conns = [Conn(base) for _ in range(IN_FLIGHT)]
    for conn in conns:
        conn.send("POST", "/api/v1/llms/hold/infer", body)
    if status == 200:  # in flight: every task reached the publisher
        deadline = time.monotonic() + 60
        while len(seen) - tasks_before < IN_FLIGHT and time.monotonic() < deadline:
            gevent.sleep(0.05)
        assert len(seen) - tasks_before == IN_FLIGHT, "not every body was dispatched"
    else:
        for conn in conns:
            got, _ = conn.head()
            assert got == status, got
    gevent.sleep(0.5)
    peak = hwm_kib(pid)
    for conn in conns:  # the clients leave: the hub cancels their tasks
        conn.close()
    deadline = time.monotonic() + 30
    while _in_flight(base) and time.monotonic() < deadline:
        gevent.sleep(0.1)
    gevent.sleep(1)
    after = rss_kib(pid)
    per_body = (peak - before) * 1024 / IN_FLIGHT
    return {"status": status, "bytes": len(body), "rssBeforeKiB": before, "peakKiB": peak,
            "afterKiB": after, "peakPerBodyBytes": int(per_body),
            "peakPerBodyX": round(per_body / len(body), 2),
            "keptAfterKiB": after - before}


def bench_bodies() -> dict[str, Any]:
    out: dict[str, Any] = {"inFlight": IN_FLIGHT, "targetX": TARGET, "shapes": {}}
    for name, (body, status) in shapes().items():
        # Each shape on a fresh hub (warmed by one round of small bodies), so none is
        # measured in memory an earlier one freed. A long infer timeout: the tasks stay in
        # flight until their clients leave.
        with Stack(publisher=False, hub_env={"TETHER_INFER_TIMEOUT_S": "600"}) as stack:
            pid = stack.hub_worker_pid()
            seen: list[int] = []
            stream = _held_stream(stack.hub, seen)
            warm = json.dumps({"messages": [{"role": "user", "content": "warm"}]}).encode()
            measure(stack.hub, pid, warm, 200, seen)  # imports, caches, first arenas
            out["shapes"][name] = measure(stack.hub, pid, body, status, seen)
            stream.close()
    rows = [[name, r["status"], f"{r['peakPerBodyBytes'] / 2**20:.1f} MiB",
             f"{r['peakPerBodyX']}x", "yes" if r["peakPerBodyX"] <= TARGET else "NO",
             f"{r['keptAfterKiB'] / 1024:.1f} MiB"]
            for name, r in out["shapes"].items()]
    table(f"Peak worker RSS per in-flight 4 MiB body ({IN_FLIGHT} at once; target "
          f"<= {TARGET}x)", ["body", "answer", "peak per body", "x body", "within",
                             "kept after they left"], rows)
    save("bodies", out)
    return out
