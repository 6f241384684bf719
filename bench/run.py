"""Tether benchmarks (not tests):
`python -m bench.run [relay|stream|wake_storm|sessions|cpu|alias|pools|pool_storm|cluster|
cluster_sessions|bodies|all]`, each bench in the module of its name (bench/relay.py, …).

Every figure is measured in one run on this machine, beside its baseline: the demo backend
called directly, and LiteLLM's proxy in front of the same backend when it is installed.
Results: a table on stdout and bench/results/<bench>.json.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys

from gevent import monkey

from bench import (
    alias,
    bodies,
    cluster,
    cluster_sessions,
    cpu,
    pool_storm,
    pools,
    relay,
    sessions,
    stream,
    wake_storm,
)
from bench.processes import raise_fd_limit

# In the order `all` runs them.
BENCHES = ("relay", "stream", "wake_storm", "sessions", "cpu", "alias", "pools",
           "pool_storm", "cluster", "cluster_sessions", "bodies")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("which", nargs="?", default="all", choices=[*BENCHES, "all"])
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
    return parser.parse_args()


def need_wrk() -> None:
    if shutil.which("wrk") is None:
        sys.exit("bench: wrk is needed (apt-get install wrk; `make bench` does it)")


def main() -> None:
    args = arguments()
    raise_fd_limit()
    if args.which == "all":
        # Each benchmark in a fresh interpreter: no state (or gevent child watcher) carried
        # from one to the next.
        for which in BENCHES:
            subprocess.run([sys.executable, "-m", "bench.run", which, "--seconds",
                            str(args.seconds), "--sessions", args.sessions,
                            "--cluster-sessions", str(args.cluster_sessions),
                            "--cell-seconds", str(args.cell_seconds),
                            "--ms-per-message", str(args.ms_per_message),
                            "--prefill-slots", str(args.prefill_slots)], check=True)
        return
    if args.which == "relay":
        need_wrk()
        relay.bench_relay(args.seconds)
        return
    if args.which in ("cluster", "cluster_sessions"):  # wrk and client processes: no gevent
        # A SIGTERM (a timeout, an impatient user) unwinds like an error, so the bench still
        # stops its hubs and drops its database and Redis db rather than leaving them behind.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        if args.which == "cluster":
            need_wrk()
            cluster.bench_cluster(args.cell_seconds)
        else:
            cluster_sessions.bench_cluster_sessions(args.cluster_sessions)
        return
    # The clients of these benches need concurrency: gevent. The relay bench runs wrk and
    # must not: gevent's child watcher was seen to miss wrk's exit under make.
    monkey.patch_all()
    if args.which == "stream":
        stream.bench_stream()
    if args.which == "wake_storm":
        wake_storm.bench_wake_storm()
    if args.which == "sessions":
        sessions.bench_sessions(tuple(int(n) for n in args.sessions.split(",")))
    if args.which == "cpu":
        cpu.bench_cpu()
    if args.which == "alias":
        alias.bench_alias()
    if args.which == "pools":
        pools.bench_pools(ms_per_message=args.ms_per_message,
                          prefill_slots=args.prefill_slots)
    if args.which == "pool_storm":
        pool_storm.bench_pool_storm()
    if args.which == "bodies":
        bodies.bench_bodies()


if __name__ == "__main__":
    main()
