"""`python -m bench.run cluster_sessions`: idle publisher sessions on one `tether serve
--workers 2` (issue 15), opened by client processes (bench/session_client.py), heartbeats for
all, RSS and sockets per worker, and how long each hub process went without renewing its
liveness key."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.cluster_stack import ClusterStack, Unavailable
from bench.hub_logs import log_problems, print_problems
from bench.processes import cpu_seconds, rss_kib
from bench.results import save, skipped, table


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
