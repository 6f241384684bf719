"""`python -m bench.run pool_storm`: storms on pools of hibernating members (issue 14), each
member a raw SSE session the bench plays: wakes counted and timed, every request answered."""

from __future__ import annotations

import json
import time
from typing import Any

import gevent
import gevent.pool

from bench.client import CHAT, Conn, post_json, sse_frames
from bench.results import save, table
from bench.stack import Stack


def pool_storm(hub: str, name: str, n: int, members: int, cap: int, wake_s: float,
               service_s: float) -> dict[str, Any]:
    """`n` requests at once on pool `name` of `members` hibernating members, each a raw SSE
    session (so every wake frame is counted and its timing held): a wake is answered after
    `wake_s`, an infer after `service_s`. Counters move before a result is posted, so an
    overlap the hub allowed is never hidden by the bench's own delay."""
    sids = [f"{name}-m{i}" for i in range(members)]
    wakes = dict.fromkeys(sids, 0)
    infers = dict.fromkeys(sids, 0)
    in_flight = dict.fromkeys(sids, 0)
    most = dict.fromkeys(sids, 0)
    waking = {"now": 0, "most": 0}
    timeline: list[tuple[float, str, str]] = []  # (when, member, "wake" | "woke")
    idle: list[Conn] = []
    handlers = gevent.pool.Group()  # one greenlet per task, answering it
    started = time.perf_counter()

    def post_result(task_id: str, body: bytes) -> None:
        conn = idle.pop() if idle else Conn(hub)
        conn.send("POST", f"/api/v1/llms/_provider-task/{task_id}/result", body)
        status, headers = conn.head()
        conn.body(headers)
        assert status == 200, status
        idle.append(conn)

    answer = json.dumps({"status": 200, "body": {"ok": True}}).encode()

    def wake(sid: str, task_id: str) -> None:
        gevent.sleep(wake_s)
        waking["now"] -= 1
        timeline.append((time.perf_counter() - started, sid, "woke"))
        post_result(task_id, answer)

    def infer(sid: str, task_id: str) -> None:
        gevent.sleep(service_s)
        in_flight[sid] -= 1
        post_result(task_id, answer)

    def run_member(sid: str, frames: Any) -> None:
        for event, data in frames:
            task = json.loads(data) if event == "task" else {}
            if task.get("kind") == "wake":
                wakes[sid] += 1
                waking["now"] += 1
                waking["most"] = max(waking["most"], waking["now"])
                timeline.append((time.perf_counter() - started, sid, "wake"))
                handlers.spawn(wake, sid, task["taskId"])
            elif task.get("kind") == "infer":
                infers[sid] += 1
                in_flight[sid] += 1
                most[sid] = max(most[sid], in_flight[sid])
                handlers.spawn(infer, sid, task["taskId"])

    streams, readers = [], []
    for sid in sids:
        status, reg = post_json(Conn(hub), "/api/v1/llms/_provider-register", {
            "providerSessionId": sid, "providers": [
                {"name": name, "type": "openai", "model": "m", "pool": True,
                 "maxConcurrency": cap, "initialStatus": "hibernating"}]})
        assert status == 200, reg
        stream = Conn(hub)
        stream.send("GET", "/api/v1/llms/_provider-stream", None,
                    f"X-Provider-Session-Id: {sid}\r\n")
        assert stream.head()[0] == 200
        frames = sse_frames(stream)
        assert next(frames)[0] == "hello"
        streams.append(stream)
        readers.append(gevent.spawn(run_member, sid, frames))
    answered: list[float] = []
    refused: list[int] = []

    def client() -> None:
        conn = Conn(hub)
        status, _ = post_json(conn, f"/api/v1/llms/{name}/infer", CHAT)
        if status == 200:
            answered.append(time.perf_counter() - started)
        else:
            refused.append(status)
        conn.close()

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(client) for _ in range(n)], timeout=120)
    handlers.join(timeout=wake_s + 10)  # a wake sent late still gets its answer
    gevent.killall(readers)
    for conn in [*streams, *idle]:
        conn.close()
    return {"requests": n, "answered": len(answered), "refused": refused,
            "wake_frames": [wakes[s] for s in sids], "max_wakes_in_flight": waking["most"],
            "infers": [infers[s] for s in sids], "max_in_flight": [most[s] for s in sids],
            "last_answer_s": round(max(answered, default=0.0), 3),
            "timeline": [(round(t, 3), s, what) for t, s, what in timeline]}


def bench_pool_storm(sizes: tuple[int, ...] = (8, 12, 1000), members: int = 3, cap: int = 8,
                     wake_s: float = 0.5, service_s: float = 0.02) -> dict[str, Any]:
    """Storms on pools of hibernating members (issue 14): one wake at a time, every request
    answered, and members woken only while requests still wait when a wake ends. A wake
    takes `wake_s` (0.5 s), far longer than an answer (`service_s`), so how many wakes each
    size needs is known: 8 fit the first member's slots (1 wake); of 12, 4 wait when it
    wakes, so a second is woken, while the first drains them before that second wake ends
    (2 wakes); 1,000 still wait after two wakes (3)."""
    expected = {n: 1 if n <= cap else 2 if n <= 2 * cap else members for n in sizes}
    out: dict[str, Any] = {"members": members, "max_concurrency": cap, "wake_s": wake_s,
                           "service_s": service_s, "storms": {}}
    with Stack(publisher=False,
               hub_env={"TETHER_MAX_QUEUE_PER_LLM": str(max(sizes) + 10)}) as stack:
        for n in sizes:
            run = pool_storm(stack.hub, f"storm{n}", n, members, cap, wake_s, service_s)
            run["expected_wakes"] = expected[n]
            out["storms"][n] = run
    table(f"pool storms: {members} hibernating members, maxConcurrency {cap}, a wake takes "
          f"{wake_s} s, an answer {service_s} s",
          ["requests", "answered", "wake frames per member", "expected wakes",
           "wakes in flight at most", "in flight per member at most", "served per member",
           "last answer (s)"],
          [[n, f"{r['answered']}/{n}", " ".join(map(str, r["wake_frames"])),
            r["expected_wakes"], r["max_wakes_in_flight"],
            " ".join(map(str, r["max_in_flight"])), " ".join(map(str, r["infers"])),
            r["last_answer_s"]] for n, r in out["storms"].items()])
    save("pool_storm", out)
    return out
