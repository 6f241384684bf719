"""Turn bench/results/*.json into docs/performance-latency.png and a markdown summary of
every target (met or not). `python -m bench.report`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.results import load

PLOT = Path(__file__).parent.parent / "docs" / "performance-latency.png"


def plot(relay: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(int(c) for c in relay["concurrency"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for path in relay["concurrency"][str(levels[0])]:
        p50 = [relay["concurrency"][str(c)][path]["p50_us"] / 1000 for c in levels]
        rps = [relay["concurrency"][str(c)][path]["rps"] for c in levels]
        left.plot(levels, p50, marker="o", label=path)
        right.plot(levels, rps, marker="o", label=path)
    for ax, label in ((left, "p50 latency (ms)"), (right, "requests/s")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(levels, [str(c) for c in levels])
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("Non-streaming chat completions: direct vs relayed (same run, same machine)")
    fig.tight_layout()
    PLOT.parent.mkdir(exist_ok=True)
    fig.savefig(PLOT, dpi=110)


# Issue 13's targets: ratios of CPU time measured in one run of `bench.run cpu`.
CPU_TARGETS: tuple[tuple[str, tuple[str, ...], float], ...] = (
    ("hub CPU per relayed request ÷ backend's", ("per_request_ratio", "hub"), 2.0),
    ("publisher CPU per relayed request ÷ backend's", ("per_request_ratio", "publisher"), 1.5),
    ("publisher's, at its default log level (info)", ("publisher_at_info_ratio",), 1.5),
    ("hub CPU per streamed chunk ÷ backend's", ("per_chunk_ratio", "hub"), 2.0),
    ("hub CPU per relayed request, auth on ÷ auth off", ("auth_on_ratio",), 1.10),
)


def cpu_targets(cpu: dict[str, Any]) -> list[tuple[str, float, float, bool]]:
    """(target, measured ratio, bound, met) for each CPU target the results hold."""
    out = []
    for name, path, bound in CPU_TARGETS:
        value: Any = cpu
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None:
            out.append((name, value, bound, value <= bound))
    return out


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def targets() -> list[str]:
    out = []
    relay, stream = load("relay"), load("stream")
    wake, sessions = load("wake_storm"), load("sessions")
    cpu = load("cpu")
    if relay:
        c = relay["concurrency"]
        one = c["1"]["tether"]
        out.append(f"- concurrency 1, relayed/direct p50 {one['p50_ratio_to_direct']} "
                   f"(target ≤ 3.0): {verdict(one['p50_ratio_to_direct'] <= 3.0)}; "
                   f"p99 {one['p99_ratio_to_direct']} (≤ 4.0): "
                   f"{verdict(one['p99_ratio_to_direct'] <= 4.0)}")
        for level in ("16", "64"):
            ratio = c[level]["tether"]["rps_ratio_to_direct"]
            out.append(f"- concurrency {level}, relayed/direct req/s {ratio} (≥ 0.25): "
                       f"{verdict(ratio >= 0.25)}")
        if "litellm" in c["1"]:
            for level in ("16", "64"):
                x = c[level]["tether"]["rps"] / c[level]["litellm"]["rps"]
                out.append(f"- concurrency {level}, Tether/LiteLLM req/s {x:.1f}x (≥ 10x): "
                           f"{verdict(x >= 10)}")
            x = c["1"]["tether"]["p50_us"] / c["1"]["litellm"]["p50_us"]
            out.append(f"- concurrency 1, Tether p50 / LiteLLM p50 {x:.3f} (≤ 0.1): "
                       f"{verdict(x <= 0.1)}")
        else:
            out.append("- LiteLLM: not installed in this run (pip install 'tether[bench]')")
        ttfc = relay["ttfc"]["tether"]["ratio_to_direct"]
        out.append(f"- streaming time to first chunk, relayed/direct {ttfc} (≤ 3.0): "
                   f"{verdict(ttfc <= 3.0)}")
    if stream:
        out.append(f"- 64 parallel streams relay {stream['ratio_to_direct']} of the backend's "
                   f"direct chunk rate (≥ 0.25): {verdict(stream['ratio_to_direct'] >= 0.25)}")
    if sessions:
        for n, run in sessions["runs"].items():
            ok = run["rss_mib"] <= 1024 and run["heartbeats_ok"] == run["sessions"]
            out.append(f"- {n} idle sessions: worker RSS {run['rss_mib']} MiB, heartbeats "
                       f"{run['heartbeats_ok']}/{run['sessions']} (≤ 1 GiB, all): "
                       f"{verdict(ok)}")
            if int(n) >= 10000:
                # Registration must not grow with the number of sessions (it was quadratic).
                out.append(f"- {n} sessions (register + stream each, 50 at a time) open in "
                           f"{run['open_s']} s (≤ 10 s): {verdict(run['open_s'] <= 10)}; hub "
                           f"CPU {run.get('hub_cpu_ms_per_open', '?')} ms per session; the "
                           f"bare server (no Tether) {run.get('bare_open_s', '?')} s, "
                           f"{run.get('bare_cpu_ms_per_open', '?')} ms")
            hub, bare = run.get("hub_cpu_ms_per_open"), run.get("bare_cpu_ms_per_open")
            if hub and bare:  # issue 26, part 4: in the same run
                out.append(f"- {n} sessions: hub CPU per session opened {hub / bare:.2f}x "
                           f"the bare server's (≤ 2x): {verdict(hub <= 2 * bare)}")
    if cpu:
        # Issue 13: the hub's CPU per request and per chunk against the backend's own.
        us = cpu["per_request_us"]
        out.append(f"- CPU per relayed request: backend {us['backend']} µs, publisher "
                   f"{us['publisher']} µs, hub {us['hub']} µs")
        for name, value, bound, met in cpu_targets(cpu):
            out.append(f"- {name} {value} (≤ {bound:.2f}): {verdict(met)}")
    if wake:
        ok = wake["wake_frames"] == 1 and wake["answered"] == wake["clients"]
        out.append(f"- wake storm: {wake['wake_frames']} wake, {wake['answered']}/"
                   f"{wake['clients']} answered: {verdict(ok)}")
    return out + pool_targets() + cluster_targets()


def pool_targets() -> list[str]:
    """Issue 14: affinity against round-robin on a pool of KV-cache backends, and storms on
    pools of hibernating members."""
    out = []
    pools, storm = load("pools"), load("pool_storm")
    if pools:
        aff, rr = pools["affinity"], pools["round_robin"]
        out.append(f"- pools, affinity: prefix cache hit rate {aff['prefix_hit_rate']} "
                   f"(round-robin {rr['prefix_hit_rate']}; ≥ 0.9): "
                   f"{verdict(aff['prefix_hit_rate'] >= 0.9)}")
        out.append(f"- pools, affinity p50 {aff['p50_ms']} ms against round-robin "
                   f"{rr['p50_ms']} ms in the same run: {pools['p50_reduction']:.0%} lower "
                   f"(≥ 30 %): {verdict(pools['p50_reduction'] >= 0.3)}; backend prefill "
                   f"{aff['prefill_s']} s against {rr['prefill_s']} s")
        out.append(f"- pools, affinity spread over members, max/mean "
                   f"{aff['spread_max_over_mean']} (≤ 1.5): "
                   f"{verdict(aff['spread_max_over_mean'] <= 1.5)}")
        failed = aff["failures"] + rr["failures"]
        out.append(f"- pools, every request answered in both arms ({failed} failed): "
                   f"{verdict(failed == 0)}")
    if storm:
        cap = storm["max_concurrency"]
        for n, run in storm["storms"].items():
            ok = (run["answered"] == run["requests"] and run["max_wakes_in_flight"] == 1
                  and sum(run["wake_frames"]) == run["expected_wakes"]
                  and max(run["wake_frames"]) == 1 and max(run["max_in_flight"]) <= cap)
            out.append(f"- pool storm of {n} on {storm['members']} hibernating members: "
                       f"{sum(run['wake_frames'])} wakes (needed {run['expected_wakes']}), "
                       f"at most {run['max_wakes_in_flight']} at a time, "
                       f"{run['answered']}/{run['requests']} answered, at most "
                       f"{max(run['max_in_flight'])} in flight per member (≤ {cap}): "
                       f"{verdict(ok)}")
    return out


def cluster_targets() -> list[str]:
    """Issue 15: the bus hop, 1 against 2 workers, idle sessions over 2 workers."""
    out = []
    cluster, sessions = load("cluster"), load("cluster_sessions")
    if cluster and "skipped" in cluster:
        out.append(f"- cluster: not measured ({cluster['skipped']})")
    elif cluster:
        hop = cluster["hop"]
        levels = hop["levels"]
        one = levels[min(levels, key=int)]
        out.append(f"- cluster, bus hop at concurrency {min(levels, key=int)}: p50 through a "
                   f"non-owner {one['non_owner']['p50_ms']} ms against the owner "
                   f"{one['owner']['p50_ms']} ms, +{hop['hop_p50_ms']} ms (≤ "
                   f"{hop['target_ms']} ms): {verdict(hop['hop_p50_ms'] <= hop['target_ms'])}")
        for c, level in levels.items():
            out.append(f"- cluster, concurrency {c}: req/s through a non-owner ÷ through the "
                       f"owner {level['rps_ratio']} ({level['non_owner']['rps']} against "
                       f"{level['owner']['rps']}; reported, no target)")
        workers = cluster.get("workers", {})
        if "skipped" in workers:
            out.append(f"- cluster, 1 against 2 workers: not measured ({workers['skipped']})")
        for c, level in workers.get("levels", {}).items():
            one_w, two_w = (level[k]["rps"] for k in level if k.endswith(("worker", "workers")))
            out.append(f"- cluster, concurrency {c}: 2 workers ÷ 1 worker req/s "
                       f"{level['rps_ratio']} ({two_w} against {one_w} on {cluster['cpus']} "
                       f"shared cores; reported, no target)")
        errors = sum(level[arm]["errors"] for part in (hop, workers)
                     for level in part.get("levels", {}).values()
                     for arm in level if isinstance(level[arm], dict))
        out.append(f"- cluster, every relayed request answered 200 ({errors} errors): "
                   f"{verdict(errors == 0)}")
    if sessions and "skipped" in sessions:
        out.append(f"- cluster sessions: not measured ({sessions['skipped']})")
    elif sessions:
        n = sessions["sessions"]
        sent = sessions.get("heartbeats_sent", sessions["opened"])
        ok = sessions["opened"] == n and sessions["heartbeats_ok"] == sent == n
        rss = ", ".join(f"{w['rss_mib']} MiB" for w in sessions["per_worker"])
        stopped = (f" (opening stopped: {'; '.join(sessions['open_stopped'])})"
                   if sessions.get("open_stopped") else "")
        out.append(f"- {n} idle sessions over {sessions['workers']} workers: "
                   f"{sessions['opened']}/{n} opened in {sessions['open_s']} s{stopped}, "
                   f"heartbeats {sessions['heartbeats_ok']}/{sent} of those answered (all "
                   f"{n} opened, every heartbeat answered): {verdict(ok)}; RSS per worker "
                   f"{rss}")
        lowest = sessions.get("liveness_ttl_lowest_ms")
        if lowest:
            out.append(f"- {n} idle sessions: lowest liveness TTL seen {min(lowest.values())} ms "
                       f"of 5000 (at 0 the other processes bury a live one; reported)")
    return out


def main() -> None:
    relay = load("relay")
    if relay:
        plot(relay)
        print(f"plot: {PLOT}")
    print("\n## Targets\n")
    print("\n".join(targets()))


if __name__ == "__main__":
    main()
