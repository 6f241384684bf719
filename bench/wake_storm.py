"""`python -m bench.run wake_storm`: many infers at once on one hibernating Llm, whose
publisher the bench plays on the wire (a raw SSE session): one wake frame, every request
answered."""

from __future__ import annotations

import json
import time
from typing import Any

import gevent
import gevent.pool

from bench.client import CHAT, Conn, post_json, sse_frames
from bench.results import save, table
from bench.stack import Stack


def bench_wake_storm(n: int = 1000) -> dict[str, Any]:
    with Stack(publisher=False, hub_env={"TETHER_MAX_QUEUE_PER_LLM": str(n + 10)}) as stack:
        control = Conn(stack.hub)
        status, reg = post_json(control, "/api/v1/llms/_provider-register", {
            "providerSessionId": "storm", "providers": [
                {"name": "sleepy", "type": "openai", "model": "m",
                 "initialStatus": "hibernating"}]})
        assert status == 200, reg
        stream = Conn(stack.hub)
        stream.send("GET", "/api/v1/llms/_provider-stream", None,
                    "X-Provider-Session-Id: storm\r\n")
        assert stream.head()[0] == 200
        frames = sse_frames(stream)
        assert next(frames)[0] == "hello"
        answered: list[float] = []
        answer = json.dumps({"status": 200, "body": {"ok": True}}).encode()

        def client() -> None:
            conn = Conn(stack.hub)
            status, _ = post_json(conn, "/api/v1/llms/sleepy/infer", CHAT)
            assert status == 200, status
            answered.append(time.perf_counter())
            conn.close()

        clients = [gevent.spawn(client) for _ in range(n)]
        wakes, infers = 0, 0
        woke_at = 0.0
        pool = gevent.pool.Pool(64)
        posters = [Conn(stack.hub) for _ in range(64)]

        def post_result(task_id: str) -> None:
            conn = posters.pop()
            try:
                conn.send("POST", f"/api/v1/llms/_provider-task/{task_id}/result", answer)
                status, headers = conn.head()
                conn.body(headers)
            finally:
                posters.append(conn)

        for _event, data in frames:
            task = json.loads(data)
            if task["kind"] == "wake":
                wakes += 1
                gevent.sleep(0.5)  # let every client arrive while the wake is pending
                post_result(task["taskId"])
                woke_at = time.perf_counter()
            elif task["kind"] == "infer":
                infers += 1
                pool.spawn(post_result, task["taskId"])
                if infers == n:
                    break
        pool.join()
        gevent.joinall(clients, timeout=60)
        out = {"clients": n, "wake_frames": wakes, "answered": len(answered),
               "wake_to_last_answer_s": round(max(answered) - woke_at, 3)}
    table(f"wake storm ({n} concurrent infers on one hibernating Llm)",
          ["wake frames", "answered", "wake result → last answer (s)"],
          [[out["wake_frames"], f"{out['answered']}/{n}", out["wake_to_last_answer_s"]]])
    save("wake_storm", out)
    return out
