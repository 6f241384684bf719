"""Tether benchmarks (not tests):
`python -m bench.run [relay|stream|wake_storm|sessions|cpu|pools|pool_storm|cluster|
cluster_sessions|all]` (the cluster benches are in bench/cluster.py).

Every figure is measured in one run on this machine, beside its baseline: the demo backend
called directly, and LiteLLM's proxy in front of the same backend when it is installed.
Results: a table on stdout and bench/results/<bench>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Any

import gevent
import gevent.pool
import urllib3
from gevent import monkey

from bench.client import CHAT, Conn, post_json, relay_n, sse_frames, stream_once
from bench.processes import cpu_seconds, raise_fd_limit, rss_kib
from bench.report import cpu_targets
from bench.results import save, table
from bench.stack import BareServer, LiteLLM, PoolStack, Stack
from bench.wrk import wrk

# --- relay ------------------------------------------------------------------------------

def bench_relay(seconds: int) -> dict[str, Any]:
    results: dict[str, Any] = {"concurrency": {}}
    targets: dict[str, str] = {}
    with Stack() as stack:
        targets = {"direct": f"{stack.backend}/v1/chat/completions",
                   "tether": f"{stack.hub}/v1/chat/completions"}
        peer = LiteLLM(stack.backend) if LiteLLM.available() else None
        if peer is not None:
            try:
                peer.__enter__()
                targets["litellm"] = f"{peer.url}/v1/chat/completions"
            except RuntimeError as exc:
                print(f"bench: running without the LiteLLM arm: {exc}", file=sys.stderr)
                peer = None
        keys = {"litellm": LiteLLM.KEY}
        try:
            for name, url in targets.items():  # warm up every path once
                wrk(url, 4, 1, keys.get(name))
            for c in (1, 16, 64):
                row = {name: wrk(url, c, seconds, keys.get(name))
                       for name, url in targets.items()}
                direct = row["direct"]
                for name in targets:
                    row[name]["rps_ratio_to_direct"] = round(row[name]["rps"] / direct["rps"], 3)
                    row[name]["p50_ratio_to_direct"] = round(
                        row[name]["p50_us"] / direct["p50_us"], 2)
                    row[name]["p99_ratio_to_direct"] = round(
                        row[name]["p99_us"] / direct["p99_us"], 2)
                results["concurrency"][c] = row
            # Streaming: time to first chunk, one request at a time, same client for both.
            body = {**CHAT, "stream": True, "max_tokens": 16}
            ttfc = {}
            for name, base in (("direct", stack.backend), ("tether", stack.hub)):
                firsts = [stream_once(base, "/v1/chat/completions", body)[0] for _ in range(200)]
                ttfc[name] = {"p50_ms": round(statistics.median(firsts) * 1000, 3)}
            ttfc["tether"]["ratio_to_direct"] = round(
                ttfc["tether"]["p50_ms"] / ttfc["direct"]["p50_ms"], 2)
            results["ttfc"] = ttfc
        finally:
            if peer is not None:
                peer.__exit__()
    rows = []
    for c, row in results["concurrency"].items():
        for name, r in row.items():
            rows.append([c, name, r["rps"], f"{r['p50_us'] / 1000:.2f}",
                         f"{r['p95_us'] / 1000:.2f}", f"{r['p99_us'] / 1000:.2f}",
                         r["rps_ratio_to_direct"],
                         r["p50_ratio_to_direct"], r["errors"] + r["non2xx"]])
    table(f"relay ({seconds} s per cell, wrk, non-streaming)",
          ["conc.", "path", "req/s", "p50 ms", "p95 ms", "p99 ms", "req/s ÷ direct",
           "p50 ÷ direct", "errors"], rows)
    table("streaming time to first chunk (200 sequential requests)",
          ["path", "p50 ms", "÷ direct"],
          [["direct", ttfc["direct"]["p50_ms"], 1.0],
           ["tether", ttfc["tether"]["p50_ms"], ttfc["tether"]["ratio_to_direct"]]])
    results["litellm"] = "litellm" in targets
    save("relay", results)
    return results


# --- stream -----------------------------------------------------------------------------

def bench_stream(parallel: int = 64, chunks: int = 200) -> dict[str, Any]:
    body = {**CHAT, "stream": True, "max_tokens": chunks}
    out: dict[str, Any] = {"parallel": parallel, "chunks_each": chunks}
    with Stack() as stack:
        for name, base in (("direct", stack.backend), ("tether", stack.hub)):
            started = time.perf_counter()
            jobs = [gevent.spawn(stream_once, base, "/v1/chat/completions", body)
                    for _ in range(parallel)]
            gevent.joinall(jobs, raise_error=True)
            elapsed = time.perf_counter() - started
            total = sum(job.value[2] for job in jobs)
            out[name] = {"chunks": total, "seconds": round(elapsed, 3),
                         "chunks_per_s": round(total / elapsed, 1)}
    out["ratio_to_direct"] = round(out["tether"]["chunks_per_s"] / out["direct"]["chunks_per_s"], 3)
    table(f"stream ({parallel} parallel completions x {chunks} chunks)",
          ["path", "chunks", "seconds", "chunks/s", "÷ direct"],
          [["direct", out["direct"]["chunks"], out["direct"]["seconds"],
            out["direct"]["chunks_per_s"], 1.0],
           ["tether", out["tether"]["chunks"], out["tether"]["seconds"],
            out["tether"]["chunks_per_s"], out["ratio_to_direct"]]])
    save("stream", out)
    return out


# --- a protocol-level publisher for the wake storm and the idle sessions ----------------

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


# --- pools ------------------------------------------------------------------------------

POOL_ARMS = ("affinity", "round_robin")


def converse(hub: str, conversations: Any, turns: int, tag: str,
             latencies: list[tuple[int, float]], failures: list[int]) -> None:
    """Hold whole conversations, one after the other, over one keep-alive connection: turn
    k sends every earlier message plus the answer to turn k-1 and a new question, so its
    prefix is the whole of turn k-1 (a chat client's way)."""
    conn = Conn(hub)
    for c in conversations:
        messages: list[dict[str, Any]] = []
        for k in range(1, turns + 1):
            messages.append({"role": "user",
                             "content": f"{tag} conversation {c}: question {k}?"})
            body = json.dumps({"model": PoolStack.NAME, "messages": messages,
                               "max_tokens": 8}).encode()
            started = time.perf_counter()
            conn.send("POST", "/v1/chat/completions", body)
            status, headers = conn.head()
            answer = json.loads(conn.body(headers))
            latencies.append((k, time.perf_counter() - started))
            if status != 200:
                failures.append(status)
                break
            messages.append(answer["choices"][0]["message"])
    conn.close()


def pool_slice(stack: PoolStack, tag: str, conversations: int, turns: int,
               concurrency: int) -> dict[str, Any]:
    """One batch of conversations through `stack`: client latencies and what each backend
    counted meanwhile (its /stats before and after)."""
    before = stack.backend_stats()
    latencies: list[tuple[int, float]] = []  # (turn, seconds)
    failures: list[int] = []
    todo = iter(range(conversations))  # shared: each worker takes the next conversation
    workers = [gevent.spawn(converse, stack.hub, todo, turns, tag, latencies, failures)
               for _ in range(concurrency)]
    gevent.joinall(workers, raise_error=True)
    after = stack.backend_stats()
    members = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before, strict=True)]
    return {"latencies": latencies, "failures": failures, "members": members}


def routed_counts(hub: str) -> dict[str, float]:
    """The hub's tether_pool_routed_total by decision (/metrics; no key with auth off)."""
    text = urllib3.request("GET", f"{hub}/metrics", retries=False).data.decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("tether_pool_routed_total{"):
            decision = line.split('decision="', 1)[1].split('"', 1)[0]
            out[decision] = out.get(decision, 0) + float(line.rsplit(" ", 1)[1])
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def bench_pools(conversations: int = 200, turns: int = 6, concurrency: int = 16,
                members: int = 4, max_concurrency: int = 8, ms_per_message: float = 2.0,
                prefill_slots: int = 1, slices: int = 4) -> dict[str, Any]:
    """Affinity against plain round-robin on a pool of KV-cache backends (issue 14), in one
    run: both stacks up at once, each arm's conversations in `slices` slices run A B B A
    A B B A…, so a change in the shared machine's load falls on both arms alike."""
    size = conversations // slices
    order = [arm for i in range(slices) for arm in (POOL_ARMS[::-1] if i % 2 else POOL_ARMS)]
    done: dict[str, list[dict[str, Any]]] = {arm: [] for arm in POOL_ARMS}
    routed: dict[str, dict[str, float]] = {}
    with contextlib.ExitStack() as stacks:
        stack = {arm: stacks.enter_context(PoolStack(members, arm, max_concurrency,
                                                     ms_per_message, prefill_slots))
                 for arm in POOL_ARMS}
        for arm in POOL_ARMS:  # warm up connections and imports (other prompts: no hits)
            pool_slice(stack[arm], "warm-up", concurrency, 1, concurrency)
        warm = {arm: routed_counts(stack[arm].hub) for arm in POOL_ARMS}
        for n, arm in enumerate(order):
            done[arm].append(pool_slice(stack[arm], f"slice {n}", size, turns, concurrency))
        for arm in POOL_ARMS:
            routed[arm] = {k: v - warm[arm].get(k, 0)
                           for k, v in routed_counts(stack[arm].hub).items()}
    out: dict[str, Any] = {"conversations": size * slices, "turns": turns,
                           "concurrency": concurrency, "members": members,
                           "max_concurrency": max_concurrency,
                           "ms_per_uncached_message": ms_per_message,
                           "prefill_slots": prefill_slots, "order": order}
    for arm in POOL_ARMS:
        by_turn = [x for r in done[arm] for x in r["latencies"]]
        latencies = [x for _, x in by_turn]
        per_member = [{k: sum(r["members"][i][k] for r in done[arm])
                       for k in done[arm][0]["members"][i]} for i in range(members)]
        requests = [m["requests"] for m in per_member]
        cached = sum(m["cached"] for m in per_member)
        messages = sum(m["messages"] for m in per_member)
        out[arm] = {
            "requests": len(latencies),
            "failures": sum(len(r["failures"]) for r in done[arm]),
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            # Turn 1 has no prefix to reuse: the same prompt work in both arms; what differs
            # is what it waits behind (the relay, other requests' prefill).
            "turn_p50_ms": [round(percentile([x for k, x in by_turn if k == t], 0.50) * 1000, 2)
                            for t in range(1, turns + 1)],
            # Of the messages a backend could have cached (all but the newest of each
            # prompt), the share it had; and of all prompt messages (the newest can
            # never be cached, so this one is at most 1 - 1/(2k-1) per turn k).
            "prefix_hit_rate": round(cached / (messages - sum(requests)), 3),
            "prompt_hit_rate": round(cached / messages, 3),
            "member_prefix_hit_rates": [
                round(m["cached"] / max(m["messages"] - m["requests"], 1), 3)
                for m in per_member],
            "member_requests": requests,
            "spread_max_over_mean": round(max(requests) / statistics.mean(requests), 3),
            "prefill_s": round(sum(m["prefill_ms"] for m in per_member) / 1000, 2),
            "routed": routed[arm],
        }
    aff, rr = out["affinity"], out["round_robin"]
    out["p50_reduction"] = round(1 - aff["p50_ms"] / rr["p50_ms"], 3)
    out["p99_reduction"] = round(1 - aff["p99_ms"] / rr["p99_ms"], 3)
    table(f"pools: {members} members x KV-cache backend ({ms_per_message} ms per uncached "
          f"message, {prefill_slots or 'unbounded'} prefill at a time), {size * slices} "
          f"conversations x {turns} turns at concurrency {concurrency}, per routing (same "
          f"run, in {slices} slices each, alternated)",
          ["routing", "answered", "prefix hit rate", "prompt hit rate", "p50 ms", "p99 ms",
           "p50 ms by turn", "requests per member", "max/mean", "prefill s",
           "hub decisions"],
          [[arm, f"{out[arm]['requests'] - out[arm]['failures']}/{out[arm]['requests']}",
            out[arm]["prefix_hit_rate"], out[arm]["prompt_hit_rate"], out[arm]["p50_ms"],
            out[arm]["p99_ms"], " ".join(str(n) for n in out[arm]["turn_p50_ms"]),
            " ".join(str(n) for n in out[arm]["member_requests"]),
            out[arm]["spread_max_over_mean"], out[arm]["prefill_s"],
            ", ".join(f"{k} {int(v)}" for k, v in sorted(out[arm]["routed"].items()))]
           for arm in POOL_ARMS])
    save("pools", out)
    return out


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


# --- sessions ---------------------------------------------------------------------------

def open_sessions(base: str, pid: int, n: int) -> tuple[list[Conn], float, float, float]:
    """Open `n` publisher sessions on `base` as `tether publish` opens one: a register POST
    and a stream GET, each on a new connection, 50 sessions at a time. Returns the open
    streams, the seconds it took, and the CPU seconds the server's worker `pid` and this
    process (the client: it shares the machine's two cores with the server) spent."""
    streams: list[Conn] = []

    def open_session(i: int) -> None:
        conn = Conn(base)
        status, answer = post_json(conn, "/api/v1/llms/_provider-register", {
            "providerSessionId": f"s{i}", "providers": [
                {"name": f"m{i}", "type": "openai", "model": "m"}]})
        assert status == 200, (i, status, answer)
        conn.close()
        stream = Conn(base)
        stream.send("GET", "/api/v1/llms/_provider-stream", None,
                    f"X-Provider-Session-Id: s{i}\r\n")
        assert stream.head()[0] == 200
        streams.append(stream)

    started, cpu, own = time.perf_counter(), cpu_seconds(pid), cpu_seconds(os.getpid())
    gevent.pool.Pool(50).map(open_session, range(n))
    return (streams, time.perf_counter() - started, cpu_seconds(pid) - cpu,
            cpu_seconds(os.getpid()) - own)


def bench_sessions(counts: tuple[int, ...] = (1000, 10000)) -> dict[str, Any]:
    """Idle publisher sessions on one hub worker (issue 11.12), each count opened first on
    the bare server (bench/bare_server.py: the same gunicorn worker and falcon, none of
    Tether), then on the hub, in the same run."""
    out: dict[str, Any] = {}
    for n in counts:
        with BareServer() as bare:
            streams, bare_s, bare_cpu, _ = open_sessions(bare.url, bare.worker_pid(), n)
            for stream in streams:
                stream.close()
        with Stack(publisher=False, hub_env={"TETHER_HEARTBEAT_TIMEOUT_S": "600"}) as stack:
            pid = stack.hub_worker_pid()
            base_rss = rss_kib(pid)
            streams, opened_s, hub_cpu, client_cpu = open_sessions(stack.hub, pid, n)
            gevent.sleep(2)
            rss = rss_kib(pid)
            latencies: list[float] = []
            failures = 0

            def beat(i: int, latencies: list[float] = latencies) -> None:
                nonlocal failures
                conn = Conn(stack.hub)
                t = time.perf_counter()
                status, _ = post_json(conn, "/api/v1/llms/_provider-heartbeat",
                                      {"providerSessionId": f"s{i}"})
                latencies.append(time.perf_counter() - t)
                failures += status != 200
                conn.close()

            gevent.pool.Pool(50).map(beat, range(n))
            for stream in streams:
                stream.close()
            latencies.sort()
            out[n] = {"sessions": n, "open_s": round(opened_s, 1),
                      "open_ms_per_session": round(opened_s / n * 1000, 2),
                      "hub_cpu_ms_per_open": round(hub_cpu / n * 1000, 2),
                      "client_cpu_ms_per_open": round(client_cpu / n * 1000, 2),
                      "bare_open_s": round(bare_s, 1),
                      "bare_cpu_ms_per_open": round(bare_cpu / n * 1000, 2),
                      "rss_mib": round(rss / 1024, 1),
                      "rss_per_session_kib": round((rss - base_rss) / n, 1),
                      "heartbeats_ok": n - failures,
                      "heartbeat_p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
                      "heartbeat_p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2)}
    table("idle publisher sessions on one hub worker (bare: the same server and falcon, "
          "none of Tether)",
          ["sessions", "opened in (s)", "bare: opened in (s)", "hub CPU ms per open",
           "bare: CPU ms per open", "bench client CPU ms per open", "worker RSS (MiB)",
           "RSS per session (KiB)",
           "heartbeats answered", "heartbeat p50 ms", "p99 ms"],
          [[r["sessions"], r["open_s"], r["bare_open_s"], r["hub_cpu_ms_per_open"],
            r["bare_cpu_ms_per_open"], r["client_cpu_ms_per_open"], r["rss_mib"],
            r["rss_per_session_kib"],
            f"{r['heartbeats_ok']}/{r['sessions']}", r["heartbeat_p50_ms"],
            r["heartbeat_p99_ms"]] for r in out.values()])
    save("sessions", {"runs": out})
    return out


# --- cpu --------------------------------------------------------------------------------

def cpu_of(pids: dict[str, int], run: Any) -> tuple[dict[str, float], Any]:
    """User + system CPU seconds each process spent while `run()` ran, and its value."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    value = run()
    return {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}, value


def bench_cpu(requests_n: int = 4800, concurrency: int = 16, streams: int = 64,
              chunks: int = 200) -> dict[str, Any]:
    """CPU time per relayed request and per streamed chunk, per process, beside the backend's
    own (issue 13): steadier than wall-clock figures on a shared machine. The hub is the
    gunicorn worker (the master only supervises it); every thread counts (cpu_seconds)."""
    out: dict[str, Any] = {"requests": requests_n, "concurrency": concurrency,
                           "streams": streams, "chunks_each": chunks}
    with Stack() as stack:
        pids = {"backend": stack.backend_proc.pid, "publisher": stack.publisher_proc.pid,
                "hub": stack.hub_worker_pid()}
        relay_n(stack.hub, 200, concurrency)  # warm up: connections, caches, first imports
        started = time.perf_counter()
        used, _ = cpu_of(pids, lambda: relay_n(stack.hub, requests_n, concurrency))
        out["relay_seconds"] = round(time.perf_counter() - started, 2)
        out["per_request_us"] = {k: round(v / requests_n * 1e6, 1) for k, v in used.items()}

        body = {**CHAT, "stream": True, "max_tokens": chunks}

        def stream_all() -> int:
            jobs = [gevent.spawn(stream_once, stack.hub, "/v1/chat/completions", body)
                    for _ in range(streams)]
            gevent.joinall(jobs, raise_error=True)
            return sum(job.value[2] for job in jobs)

        started = time.perf_counter()
        used, received = cpu_of(pids, stream_all)
        out["stream_seconds"] = round(time.perf_counter() - started, 2)
        out["chunks"] = received
        out["per_chunk_us"] = {k: round(v / received * 1e6, 2) for k, v in used.items()}
    # The same relay with auth on (a key checked on every request), in this same run: the
    # hub's CPU per request should stay within 10 % of auth off (issues 11 and 13).
    with Stack(auth=True) as stack:
        hub_pid = {"hub": stack.hub_worker_pid()}
        relay_n(stack.hub, 200, concurrency, stack.client_headers)
        used, _ = cpu_of(hub_pid, lambda: relay_n(stack.hub, requests_n, concurrency,
                                                  stack.client_headers))
    out["auth_on_hub_per_request_us"] = round(used["hub"] / requests_n * 1e6, 1)
    out["auth_on_ratio"] = round(
        out["auth_on_hub_per_request_us"] / out["per_request_us"]["hub"], 3)
    for unit in ("per_request_us", "per_chunk_us"):
        figures = out[unit]
        out[unit.replace("_us", "_ratio")] = {
            k: round(figures[k] / figures["backend"], 2) for k in ("publisher", "hub")}
    table(f"CPU per relayed request ({requests_n} at concurrency {concurrency}) and per "
          f"streamed chunk ({streams} streams x {chunks} chunks), µs",
          ["process", "per request", "÷ backend", "per chunk", "÷ backend"],
          [[name, out["per_request_us"][name],
            out["per_request_ratio"].get(name, 1.0), out["per_chunk_us"][name],
            out["per_chunk_ratio"].get(name, 1.0)] for name in ("backend", "publisher", "hub")])
    table("hub CPU per relayed request, auth off and on (same run), µs",
          ["auth off", "auth on", "on ÷ off"],
          [[out["per_request_us"]["hub"], out["auth_on_hub_per_request_us"],
            out["auth_on_ratio"]]])
    table("CPU targets (issue 13)", ["target", "this run", "bound", "verdict"],
          [[name, value, f"≤ {bound:.2f}", "met" if met else "not met"]
           for name, value, bound, met in cpu_targets(out)])
    save("cpu", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("which", nargs="?", default="all",
                        choices=["relay", "stream", "wake_storm", "sessions", "cpu", "pools",
                                 "pool_storm", "cluster", "cluster_sessions", "all"])
    parser.add_argument("--seconds", type=int, default=10, help="wrk time per relay cell")
    parser.add_argument("--sessions", default="1000,10000")
    parser.add_argument("--cluster-sessions", type=int, default=20000,
                        help="cluster_sessions: idle sessions over 2 workers")
    parser.add_argument("--cell-seconds", type=int, default=5,
                        help="cluster: wrk time per alternated cell (4 cells per arm)")
    parser.add_argument("--ms-per-message", type=float, default=2.0,
                        help="pools: the KV backend's prefill time per uncached message")
    parser.add_argument("--prefill-slots", type=int, default=1,
                        help="pools: prompts a KV backend prefills at once (0: no bound)")
    args = parser.parse_args()
    raise_fd_limit()
    if args.which == "all":
        # Each benchmark in a fresh interpreter: no state (or gevent child watcher) carried
        # from one to the next.
        for which in ("relay", "stream", "wake_storm", "sessions", "cpu", "pools",
                      "pool_storm", "cluster", "cluster_sessions"):
            subprocess.run([sys.executable, "-m", "bench.run", which, "--seconds",
                            str(args.seconds), "--sessions", args.sessions,
                            "--cluster-sessions", str(args.cluster_sessions),
                            "--cell-seconds", str(args.cell_seconds),
                            "--ms-per-message", str(args.ms_per_message),
                            "--prefill-slots", str(args.prefill_slots)], check=True)
        return
    if args.which == "relay":
        if shutil.which("wrk") is None:
            sys.exit("bench: wrk is needed (apt-get install wrk; `make bench` does it)")
        bench_relay(args.seconds)
    if args.which in ("cluster", "cluster_sessions"):  # wrk and client processes: no gevent
        from bench import cluster

        # A SIGTERM (a timeout, an impatient user) unwinds like an error, so the bench still
        # stops its hubs and drops its database and Redis db rather than leaving them behind.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

        if args.which == "cluster":
            if shutil.which("wrk") is None:
                sys.exit("bench: wrk is needed (apt-get install wrk; `make bench` does it)")
            cluster.bench_cluster(args.cell_seconds)
        else:
            cluster.bench_cluster_sessions(args.cluster_sessions)
        return
    # The clients of these benches need concurrency: gevent. The relay bench runs wrk and
    # must not: gevent's child watcher was seen to miss wrk's exit under make.
    monkey.patch_all()
    if args.which == "stream":
        bench_stream()
    if args.which == "wake_storm":
        bench_wake_storm()
    if args.which == "sessions":
        bench_sessions(tuple(int(n) for n in args.sessions.split(",")))
    if args.which == "cpu":
        bench_cpu()
    if args.which == "pools":
        bench_pools(ms_per_message=args.ms_per_message, prefill_slots=args.prefill_slots)
    if args.which == "pool_storm":
        bench_pool_storm()


if __name__ == "__main__":
    main()
