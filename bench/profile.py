"""Where a process of the relay spends its CPU (issue 13):
`python -m bench.profile [hub|publisher|backend] [--requests N] [--stream] [--sessions N]`.

py-spy samples the threads that are running or runnable: on this loaded 2-core machine it
charged the hub's socket sends with the time the worker, preempted there, waited for a CPU.
This profile counts CPU time only: bench/cpuprof/sitecustomize.py samples the Python stack
after every few ms of the process's user + system time. It relays N non-streamed requests
(or 64-stream rounds of 200 chunks, or opens N idle publisher sessions as bench/sessions.py
does) through a fresh stack and prints the top functions by
self and by total share; the collapsed stacks (flamegraph.pl or speedscope input) are in
bench/results/profile-<process>.txt.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
PROCESS_ARGV = {"hub": "serve", "publisher": "publish", "backend": "demo-backend"}


def read(path: Path) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    if path.exists():
        for line in path.read_text().splitlines():
            stack, _, n = line.rpartition(" ")
            counts[stack] += int(n)
    return counts


def top(counts: collections.Counter[str], k: int = 30) -> str:
    total = sum(counts.values()) or 1
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for stack, n in counts.items():
        frames = stack.split(";")
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"{total} samples", "", "self:"]
    lines += [f"{n / total * 100:5.1f} %  {frame}" for frame, n in own.most_common(k)]
    lines += ["", "total (the function and what it calls):"]
    lines += [f"{n / total * 100:5.1f} %  {frame}" for frame, n in inclusive.most_common(k)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("process", nargs="?", default="hub", choices=sorted(PROCESS_ARGV))
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--stream", action="store_true", help="64 streams x 200 chunks, 6 times")
    parser.add_argument("--sessions", type=int, default=0,
                        help="open this many idle publisher sessions instead (hub only)")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    out = HERE / "results" / f"profile-{args.process}.txt"
    out.parent.mkdir(exist_ok=True)
    out.unlink(missing_ok=True)
    # Read by bench/cpuprof/sitecustomize.py in the processes the stack starts.
    os.environ.update({"TETHER_CPUPROF_MATCH": PROCESS_ARGV[args.process],
                       "TETHER_CPUPROF_OUT": str(out),
                       "PYTHONPATH": os.pathsep.join(
                           [str(HERE / "cpuprof"), os.environ.get("PYTHONPATH", "")])})
    from gevent import monkey

    monkey.patch_all()
    import gevent

    from bench.client import CHAT, relay_n, stream_once
    from bench.sessions import open_sessions
    from bench.stack import Stack

    with Stack(publisher=not args.sessions) as stack:
        if not args.sessions:
            relay_n(stack.hub, 400, 16)  # warm up
        time.sleep(2.5)  # the sampler's next write holds the warm-up: subtracted below
        before = read(out)
        if args.sessions:
            streams, *_ = open_sessions(stack.hub, stack.hub_worker_pid(), args.sessions)
            for conn in streams:
                conn.close()
        elif args.stream:
            body = {**CHAT, "stream": True, "max_tokens": 200}
            for _ in range(6):
                jobs = [gevent.spawn(stream_once, stack.hub, "/v1/chat/completions", body)
                        for _ in range(64)]
                gevent.joinall(jobs, raise_error=True)
        else:
            relay_n(stack.hub, args.requests, 16)
        time.sleep(2.5)
        counts = read(out)
    counts.subtract(before)
    counts = collections.Counter({k: n for k, n in counts.items() if n > 0})
    out.write_text("".join(f"{stack} {n}\n" for stack, n in counts.items()))
    print(top(counts, args.top))
    print(f"\ncollapsed stacks: {out}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
