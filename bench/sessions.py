"""`python -m bench.run sessions`: idle publisher sessions on one hub worker, beside the bare
server (the same gunicorn worker and falcon, none of Tether); memory, CPU per open,
heartbeats."""

from __future__ import annotations

import os
import time
from typing import Any

import gevent
import gevent.pool

from bench.client import Conn, post_json
from bench.processes import cpu_seconds, rss_kib
from bench.results import save, table
from bench.stack import BareServer, Stack


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
