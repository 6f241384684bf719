"""Several hub processes on one PostgreSQL and one Redis (issue 15, docs/protocol.md, Several hub
processes): `python -m bench.run cluster` and `python -m bench.run cluster_sessions`.

- hop: two `tether serve` processes, the publisher's stream on A (so A owns the name);
  wrk sends the same requests to A (the owner) and to B (each request forwarded to A over
  Redis, its answer back), cells alternated A B B A… in one run. The bus hop's cost is the
  difference of the p50s at concurrency 1, paired within each round.
- workers: one `tether serve --workers 1` against one `--workers 2` (both on the bus), both
  up at once, cells alternated, relayed req/s through each.
- sessions: idle publisher sessions on one `tether serve --workers 2`, heartbeats for all,
  RSS per worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench.cluster_stack import ClusterStack, Unavailable
from bench.processes import cpu_seconds, rss_kib
from bench.results import save, skipped, table
from bench.wrk import wrk

PATH = "/v1/chat/completions"
HOP_TARGET_MS = 1.0


def log_problems(stack: ClusterStack) -> list[str]:
    """Every warning, error and traceback line the hub processes logged (they log at
    `warning`), each cut to 300 characters, so a run that hid errors behind its figures
    shows them."""
    lines = []
    for i in range(len(stack.hubs)):
        lines += [f"hub{i}: {line[:300]}" for line in stack.log(f"hub{i}").splitlines()
                  if any(w in line for w in ("WARNING", "ERROR", "Traceback", "CRITICAL"))]
    return lines


def problem_kinds(lines: list[str]) -> dict[str, int]:
    """The logged problems counted by kind: logger and message, minus timestamps, request
    ids and name lists."""
    kinds: dict[str, int] = {}
    for line in lines:
        parts = line.split(" ", 4)  # hubN: date time LEVEL logger: message
        text = parts[4] if len(parts) == 5 else line
        text = re.sub(r"\[req [0-9a-f]+\]|\[.*|process [0-9a-f]+", "…", text)
        kinds[text[:120]] = kinds.get(text[:120], 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def print_problems(lines: list[str]) -> None:
    print(f"hub warnings and errors logged: {len(lines)}", flush=True)
    for kind, n in problem_kinds(lines).items():
        print(f"  {n} × {kind}")


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


# --- idle sessions over two workers -----------------------------------------------------

class LivenessWatch:
    """Reads every hub process's liveness key (`tether:<db>:alive:<id>`, a 5 s TTL renewed
    every second: docs/protocol.md) ten times a second on a thread, and keeps the lowest
    time to live seen per process: 5 s minus it is the longest that process went without
    renewing. Near 0, the other processes take it for dead."""

    def __init__(self, bus_url: str) -> None:
        import redis

        from tether.cluster.redis_client import prefix_of

        self._redis = redis.Redis.from_url(bus_url, decode_responses=True, socket_timeout=5)
        self._pattern = f"{prefix_of(bus_url)}:alive:*"  # the hubs' own key names
        self.lowest_ms: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LivenessWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            try:
                for key in self._redis.scan_iter(self._pattern):
                    ttl = self._redis.pttl(key)
                    process = key.rsplit(":", 1)[1]
                    if ttl >= 0:
                        self.lowest_ms[process] = min(self.lowest_ms.get(process, ttl), ttl)
            except Exception:  # noqa: BLE001 - a missed reading is only a missed reading
                pass

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._redis.close()


def socket_count(pid: int) -> int:
    n = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed meanwhile
            n += os.readlink(fd).startswith("socket:")
    return n


def bench_cluster_sessions(total: int = 20000, clients: int = 2, workers: int = 2,
                           deadline_s: float = 1800, stall_s: float = 120) -> dict[str, Any]:
    """`total` idle sessions (register + stream each) on one `tether serve --workers
    workers`, opened by `clients` processes at once (each under its own file limit), then
    one heartbeat per session opened; RSS and sockets per worker. Opening stops after
    `deadline_s`, or when no session has opened for `stall_s`: then the figures are those of
    the count reached, and the table says so."""
    try:
        stack = ClusterStack(hubs=1, workers=workers, publisher=False, tag="sessions",
                             hub_env={"TETHER_HEARTBEAT_TIMEOUT_S": "3600"}).__enter__()
    except Unavailable as exc:
        return skipped("cluster_sessions", str(exc))
    out: dict[str, Any] = {"sessions": total, "workers": workers, "clients": clients}
    procs: list[subprocess.Popen] = []
    try:
        pids = stack.worker_pids()
        stack.mark_logs()
        base = {pid: (rss_kib(pid), socket_count(pid), cpu_seconds(pid)) for pid in pids}
        share = [total // clients + (i < total % clients) for i in range(clients)]
        first = [sum(share[:i]) for i in range(clients)]
        watch = LivenessWatch(stack.services.bus_url).__enter__()
        started = time.perf_counter()
        for i in range(clients):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "bench.session_client", "--hub", stack.hubs[0],
                 "--first", str(first[i]), "--count", str(share[i]),
                 "--deadline-s", str(deadline_s), "--stall-s", str(stall_s)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        opened = [json.loads(p.stdout.readline() or "{}") for p in procs]  # type: ignore[union-attr]
        out["open_s"] = round(time.perf_counter() - started, 1)
        out["opened"] = sum(o.get("opened", 0) for o in opened)
        out["open_failures"] = [f for o in opened for f in o.get("failures", [])]
        out["open_failed"] = sum(o.get("failed", 0) for o in opened)
        out["open_stopped"] = [o["stopped"] for o in opened if o.get("stopped")]
        time.sleep(2)  # let the last registrations settle before reading memory
        out["per_worker"] = [{
            "pid": pid, "rss_mib": round(rss_kib(pid) / 1024, 1),
            "rss_growth_mib": round((rss_kib(pid) - base[pid][0]) / 1024, 1),
            "sockets_opened": socket_count(pid) - base[pid][1],
            "cpu_s_opening": round(cpu_seconds(pid) - base[pid][2], 1)} for pid in pids]
        cpu_before_beats = {pid: cpu_seconds(pid) for pid in pids}
        for p in procs:
            p.stdin.write("beat\n")  # type: ignore[union-attr]
            p.stdin.flush()  # type: ignore[union-attr]
        beats = [json.loads(p.stdout.readline() or "{}") for p in procs]  # type: ignore[union-attr]
        latencies = sorted(x for b in beats for x in b.get("latencies_ms", []))
        statuses: dict[str, int] = {}
        for b in beats:
            for k, v in b.get("statuses", {}).items():
                statuses[k] = statuses.get(k, 0) + v
        out["heartbeats_sent"] = sum(b.get("sent", 0) for b in beats)
        out["heartbeats_ok"] = sum(b.get("ok", 0) for b in beats)
        out["heartbeat_statuses"] = statuses
        out["heartbeat_s"] = max((b.get("seconds", 0) for b in beats), default=0)
        if latencies:
            out["heartbeat_p50_ms"] = latencies[len(latencies) // 2]
            out["heartbeat_p99_ms"] = latencies[int(len(latencies) * 0.99)]
        for w in out["per_worker"]:
            w["rss_after_beats_mib"] = round(rss_kib(w["pid"]) / 1024, 1)
            w["cpu_s_heartbeats"] = round(cpu_seconds(w["pid"]) - cpu_before_beats[w["pid"]], 2)
        out["hub_cpu_ms_per_heartbeat"] = round(
            sum(w["cpu_s_heartbeats"] for w in out["per_worker"]) / max(total, 1) * 1000, 2)
        watch.__exit__()
        out["liveness_ttl_lowest_ms"] = watch.lowest_ms
        out["log_problems"] = log_problems(stack)
    finally:
        for p in procs:
            if p.stdin is not None and not p.stdin.closed:
                with contextlib.suppress(OSError):  # a client that died already
                    p.stdin.close()  # end of input: the client closes its streams and exits
        for p in procs:
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
        stack.__exit__()
    table(f"cluster: {total} idle publisher sessions on one hub process with {workers} "
          f"workers (register + stream each, opened by {clients} client processes, 25 at a "
          "time each)",
          ["opened", "in (s)", "heartbeats answered", "heartbeat p50 / p99 ms",
           "per worker: RSS MiB (growth), sockets, CPU s while opening"],
          [[f"{out['opened']}/{total}", out["open_s"],
            f"{out['heartbeats_ok']}/{out['heartbeats_sent']}",
            f"{out.get('heartbeat_p50_ms')} / {out.get('heartbeat_p99_ms')}",
            "; ".join(f"{w['rss_mib']} ({w['rss_growth_mib']}), {w['sockets_opened']}, "
                      f"{w['cpu_s_opening']}" for w in out["per_worker"])]])
    if out["open_stopped"]:
        print(f"opening stopped early: {out['open_stopped']}")
    if out["open_failures"]:
        print(f"open failures: {out['open_failed']} (first: {out['open_failures'][:5]})")
    print(f"heartbeat statuses: {out['heartbeat_statuses']}; {out['heartbeat_s']} s for all "
          f"(50 at a time); hub CPU {out['hub_cpu_ms_per_heartbeat']} ms per heartbeat")
    print(f"lowest liveness TTL seen per process (5000 ms, renewed every second; near 0 the "
          f"others take it for dead): {out['liveness_ttl_lowest_ms']}")
    print_problems(out["log_problems"])
    save("cluster_sessions", out)
    return out
