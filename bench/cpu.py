"""`python -m bench.run cpu`: CPU time per relayed request and per streamed chunk, per
process, beside the backend's own; and the hub's with auth on against auth off (issue 13)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import gevent

from bench.client import CHAT, relay_n, stream_once
from bench.processes import cpu_seconds
from bench.report import cpu_targets
from bench.results import save, table
from bench.stack import Stack


def cpu_of(pids: dict[str, int], run: Any) -> tuple[dict[str, float], Any]:
    """User + system CPU seconds each process spent while `run()` ran, and its value."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    value = run()
    return {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}, value


CHANNEL_ARMS = {"channel": (), "no_channel": ("--no-result-channel",)}
# The publisher at its default log level (`info`: a line per task) against the benches'
# `warning` (bench/stack.py): issue 26's publisher target is at the default.
LOG_LEVEL_ARMS = {"warning": (), "info": ("--log-level", "info")}


def pids_of(stack: Stack) -> dict[str, int]:
    """The processes whose CPU counts: the hub is its gunicorn worker (the master only
    supervises it)."""
    return {"backend": stack.backend_proc.pid, "publisher": stack.publisher_proc.pid,
            "hub": stack.hub_worker_pid()}


def alternate(arms: dict[str, tuple[str, ...]], rounds: int, warm_up: Callable[[str], Any],
              measure: Callable[[str], Any]) -> tuple[dict[str, dict[str, float]],
                                                     dict[str, list[Any]]]:
    """Each arm (the publisher's extra flags) on a fresh stack, the arms taking turns
    `rounds` times so that a drift of the machine's speed falls on all of them:
    `warm_up(hub)`, then `measure(hub)` counted. The CPU seconds of each process per arm,
    summed, and what `measure` returned each time."""
    totals = {arm: {"backend": 0.0, "publisher": 0.0, "hub": 0.0} for arm in arms}
    values: dict[str, list[Any]] = {arm: [] for arm in arms}
    for _ in range(rounds):
        for arm, flags in arms.items():
            with Stack(publisher_flags=flags) as stack:
                warm_up(stack.hub)
                used, value = cpu_of(pids_of(stack), lambda s=stack: measure(s.hub))
            values[arm].append(value)
            for name, seconds in used.items():
                totals[arm][name] += seconds
    return totals, values


def channel_ab(requests_n: int, concurrency: int, rounds: int = 2,
               arms: dict[str, tuple[str, ...]] = CHANNEL_ARMS) -> dict[str, Any]:
    """CPU µs per relayed request of each process, per arm (CHANNEL_ARMS by default)."""
    totals, _ = alternate(arms, rounds, lambda hub: relay_n(hub, 200, concurrency),
                          lambda hub: relay_n(hub, requests_n, concurrency))
    return {f"{arm}_per_request_us": {k: round(v / (requests_n * rounds) * 1e6, 1)
                                      for k, v in figures.items()}
            for arm, figures in totals.items()}


def stream_all(hub: str, streams: int, chunks: int) -> int:
    """`streams` streamed chats of `chunks` chunks each, all at once: the chunks received."""
    body = {**CHAT, "stream": True, "max_tokens": chunks}
    jobs = [gevent.spawn(stream_once, hub, "/v1/chat/completions", body)
            for _ in range(streams)]
    gevent.joinall(jobs, raise_error=True)
    return sum(job.value[2] for job in jobs)


def stream_channel_ab(streams: int, chunks: int, rounds: int = 2) -> dict[str, Any]:
    """CPU µs per streamed chunk and per stream of each process, a stream's lines on the
    result channel or on an upload of their own (CHANNEL_ARMS)."""
    totals, received = alternate(CHANNEL_ARMS, rounds,
                                 lambda hub: stream_all(hub, 16, chunks),
                                 lambda hub: stream_all(hub, streams, chunks))
    return {arm: {"per_chunk_us": {k: round(v / sum(received[arm]) * 1e6, 2)
                                   for k, v in figures.items()},
                  "per_stream_us": {k: round(v / (streams * rounds) * 1e6, 1)
                                    for k, v in figures.items()}}
            for arm, figures in totals.items()}


def bench_cpu(requests_n: int = 4800, concurrency: int = 16, streams: int = 64,
              chunks: int = 200) -> dict[str, Any]:
    """CPU time per relayed request and per streamed chunk, per process, beside the backend's
    own (issue 13): steadier than wall-clock figures on a shared machine. The hub is the
    gunicorn worker (the master only supervises it); every thread counts (cpu_seconds)."""
    out: dict[str, Any] = {"requests": requests_n, "concurrency": concurrency,
                           "streams": streams, "chunks_each": chunks}
    with Stack() as stack:
        pids = pids_of(stack)
        relay_n(stack.hub, 200, concurrency)  # warm up: connections, caches, first imports
        started = time.perf_counter()
        used, _ = cpu_of(pids, lambda: relay_n(stack.hub, requests_n, concurrency))
        out["relay_seconds"] = round(time.perf_counter() - started, 2)
        out["per_request_us"] = {k: round(v / requests_n * 1e6, 1) for k, v in used.items()}

        started = time.perf_counter()
        used, received = cpu_of(pids, lambda: stream_all(stack.hub, streams, chunks))
        out["stream_seconds"] = round(time.perf_counter() - started, 2)
        out["chunks"] = received
        out["per_chunk_us"] = {k: round(v / received * 1e6, 2) for k, v in used.items()}
    # The same relay with results on the channel (the default) and with each result on its
    # own POST (issue 26, part 1: the channel's A/B), in this same run: the arms alternate,
    # two stacks each, so that a drift of the machine's speed meanwhile falls on both.
    out.update(channel_ab(requests_n, concurrency))
    info = channel_ab(requests_n, concurrency, arms=LOG_LEVEL_ARMS)["info_per_request_us"]
    out["publisher_at_info_ratio"] = round(info["publisher"] / info["backend"], 2)
    # A stream's lines on the channel (the default) or on an upload of their own (issue 26,
    # part 1's rest), the arms alternating: long streams (the cost per chunk) and short ones
    # (where the upload's own HTTP request weighs).
    out["stream_ab"] = {f"{n}x{size}": stream_channel_ab(n, size)
                        for n, size in ((streams, chunks), (4 * streams, 8))}
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
    channel, each = out["channel_per_request_us"], out["no_channel_per_request_us"]
    table("CPU per relayed request, results on the channel and one POST each (same run, "
          "arms alternating), µs",
          ["process", "channel", "POST each", "channel ÷ POST each", "÷ backend, channel",
           "÷ backend, POST each"],
          [[name, channel[name], each[name], round(channel[name] / each[name], 3),
            round(channel[name] / channel["backend"], 2),
            round(each[name] / each["backend"], 2)]
           for name in ("backend", "publisher", "hub")])
    table("CPU per streamed chunk and per stream, a stream's lines on the channel or on an "
          "upload of its own (same run, arms alternating), µs",
          ["streams x chunks", "process", "per chunk, channel", "per chunk, own upload",
           "channel ÷ own upload", "per stream, channel", "per stream, own upload"],
          [[shape, name, arms["channel"]["per_chunk_us"][name],
            arms["no_channel"]["per_chunk_us"][name],
            round(arms["channel"]["per_chunk_us"][name] /
                  arms["no_channel"]["per_chunk_us"][name], 3),
            arms["channel"]["per_stream_us"][name], arms["no_channel"]["per_stream_us"][name]]
           for shape, arms in out["stream_ab"].items()
           for name in ("backend", "publisher", "hub")])
    table("hub CPU per relayed request, auth off and on (same run), µs",
          ["auth off", "auth on", "on ÷ off"],
          [[out["per_request_us"]["hub"], out["auth_on_hub_per_request_us"],
            out["auth_on_ratio"]]])
    table("CPU targets (issue 13)", ["target", "this run", "bound", "verdict"],
          [[name, value, f"≤ {bound:.2f}", "met" if met else "not met"]
           for name, value, bound, met in cpu_targets(out)])
    save("cpu", out)
    return out
