"""`python -m bench.run pools`: affinity against plain round-robin on a pool of KV-cache
backends (issue 14), both hubs up at once, conversations alternated between them."""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from typing import Any

import gevent
import urllib3

from bench.client import Conn
from bench.results import save, table
from bench.stack import PoolStack

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
