"""Several hub processes on one PostgreSQL and one Redis (issue 15, docs/protocol.md, Several hub
processes): `python -m bench.run cluster` (bench/cluster_sessions.py has the other).

- hop: two `tether serve` processes, the publisher's stream on A (so A owns the name);
  wrk sends the same requests to A (the owner) and to B (each request forwarded to A over
  Redis, its answer back), cells alternated A B B A… in one run. The bus hop's cost is the
  difference of the p50s at concurrency 1, paired within each round.
- workers: one `tether serve --workers 1` against one `--workers 2` (both on the bus), both
  up at once, cells alternated, relayed req/s through each.
"""

from __future__ import annotations

import os
import statistics
from contextlib import ExitStack
from typing import Any

from bench.cluster_stack import ClusterStack, Unavailable
from bench.hub_logs import log_problems, print_problems
from bench.processes import cpu_seconds
from bench.results import save, skipped, table
from bench.wrk import wrk

PATH = "/v1/chat/completions"
HOP_TARGET_MS = 1.0


def cells(arms: dict[str, str], concurrency: int, rounds: int, seconds: int,
          pids: dict[str, list[int]]) -> dict[str, list[dict[str, Any]]]:
    """`rounds` wrk cells per arm at `concurrency`, alternated A B, B A, A B…, each with the
    CPU seconds its arm's hub workers (`pids[arm]`) spent meanwhile."""
    out: dict[str, list[dict[str, Any]]] = {arm: [] for arm in arms}
    names = list(arms)
    for r in range(rounds):
        for arm in names if r % 2 == 0 else names[::-1]:
            before = [cpu_seconds(pid) for pid in pids[arm]]
            cell = wrk(arms[arm], concurrency, seconds)
            cell["hub_cpu_s"] = round(sum(cpu_seconds(pid) for pid in pids[arm])
                                      - sum(before), 3)
            out[arm].append(cell)
    return out


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One arm's cells: req/s over all of them, the median of their p50s and p99s, hub CPU
    per request, errors."""
    requests = sum(c["requests"] for c in runs)
    return {"rps": round(requests / (sum(c["duration_us"] for c in runs) / 1e6), 1),
            "p50_ms": round(statistics.median(c["p50_us"] for c in runs) / 1000, 3),
            "p99_ms": round(statistics.median(c["p99_us"] for c in runs) / 1000, 3),
            "hub_cpu_us_per_request": round(sum(c["hub_cpu_s"] for c in runs)
                                            / max(requests, 1) * 1e6, 1),
            "requests": requests, "errors": sum(c["errors"] + c["non2xx"] for c in runs),
            "cells": runs}


def bench_hop(seconds: int = 5, rounds: int = 4, levels: tuple[int, ...] = (1, 16)) \
        -> dict[str, Any]:
    try:
        stack = ClusterStack(hubs=2, tag="hop").__enter__()
    except Unavailable as exc:
        return skipped("cluster", str(exc))
    out: dict[str, Any] = {"seconds_per_cell": seconds, "rounds": rounds, "levels": {}}
    try:
        arms = {"owner": f"{stack.hubs[0]}{PATH}", "non_owner": f"{stack.hubs[1]}{PATH}"}
        # The owner's CPU counts in both arms; the non-owner's only when it relays.
        pids = {"owner": stack.worker_pids(0),
                "non_owner": stack.worker_pids(0) + stack.worker_pids(1)}
        for url in arms.values():
            wrk(url, 4, 1)  # warm up: connections, imports, the owner lookup's script
        stack.mark_logs()
        for c in levels:
            runs = cells(arms, c, rounds, seconds, pids)
            level = {arm: summary(runs[arm]) for arm in arms}
            # Paired by round: both arms of a round ran within seconds of each other.
            hops = [(b["p50_us"] - a["p50_us"]) / 1000
                    for a, b in zip(runs["owner"], runs["non_owner"], strict=True)]
            level["hop_p50_ms"] = round(statistics.median(hops), 3)
            level["hop_p50_ms_by_round"] = [round(h, 3) for h in hops]
            level["rps_ratio"] = round(level["non_owner"]["rps"] / level["owner"]["rps"], 3)
            out["levels"][c] = level
        out["log_problems"] = log_problems(stack)
    finally:
        stack.__exit__()
    one = out["levels"][min(levels)]
    out["hop_p50_ms"] = one["hop_p50_ms"]
    out["target_ms"] = HOP_TARGET_MS
    table(f"cluster: through the name's owner (A) or another process (B), same run "
          f"({rounds} alternated {seconds} s cells per arm, wrk)",
          ["conc.", "path", "req/s", "p50 ms", "p99 ms", "hub CPU µs/req", "errors",
           "hop p50 ms (B − A, per round)"],
          [[c, arm, lv[arm]["rps"], lv[arm]["p50_ms"], lv[arm]["p99_ms"],
            lv[arm]["hub_cpu_us_per_request"], lv[arm]["errors"],
            "" if arm == "owner" else
            f"{lv['hop_p50_ms']} ({' '.join(map(str, lv['hop_p50_ms_by_round']))})"]
           for c, lv in out["levels"].items() for arm in ("owner", "non_owner")])
    print_problems(out["log_problems"])
    return out


def bench_workers(seconds: int = 5, rounds: int = 4, levels: tuple[int, ...] = (16, 64)) \
        -> dict[str, Any]:
    out: dict[str, Any] = {"seconds_per_cell": seconds, "rounds": rounds, "levels": {},
                           "cpus": os.cpu_count()}
    with ExitStack() as stacks:
        try:
            stack = {w: stacks.enter_context(ClusterStack(hubs=1, workers=w, tag=f"w{w}"))
                     for w in (1, 2)}
        except Unavailable as exc:
            return {"skipped": str(exc)}
        arms = {f"{w} worker{'s' * (w > 1)}": f"{s.hubs[0]}{PATH}" for w, s in stack.items()}
        pids = {arm: stack[w].worker_pids() for arm, w in zip(arms, stack, strict=True)}
        for url in arms.values():
            wrk(url, 4, 1)
        for s in stack.values():
            s.mark_logs()
        for c in levels:
            runs = cells(arms, c, rounds, seconds, pids)
            level = {arm: summary(runs[arm]) for arm in arms}
            first, second = arms
            level["rps_ratio"] = round(level[second]["rps"] / level[first]["rps"], 3)
            out["levels"][c] = level
        out["log_problems"] = [p for s in stack.values() for p in log_problems(s)]
    table(f"cluster: one hub process with 1 or 2 gunicorn workers, both on the bus, same run "
          f"({rounds} alternated {seconds} s cells per arm, wrk; {os.cpu_count()} cores "
          "shared with wrk, the backend, the publisher and Redis)",
          ["conc.", "workers", "req/s", "p50 ms", "p99 ms", "hub CPU µs/req (all workers)",
           "errors", "2 ÷ 1 req/s"],
          [[c, arm, lv[arm]["rps"], lv[arm]["p50_ms"], lv[arm]["p99_ms"],
            lv[arm]["hub_cpu_us_per_request"], lv[arm]["errors"],
            lv["rps_ratio"] if arm != next(iter(arms)) else ""]
           for c, lv in out["levels"].items() for arm in arms])
    print_problems(out["log_problems"])
    return out


def bench_cluster(seconds: int = 5) -> dict[str, Any]:
    hop = bench_hop(seconds)
    if "skipped" in hop:
        return hop
    out = {"hop": hop, "workers": bench_workers(seconds)}
    save("cluster", out)
    return out
