"""`python -m bench.run relay`: non-streamed chat completions through wrk at concurrency 1, 16
and 64, direct to the demo backend, through Tether and (when installed) through LiteLLM's
proxy, in one run; then streaming's time to first chunk, direct and through Tether."""

from __future__ import annotations

import statistics
import sys
from typing import Any

from bench.client import CHAT, stream_once
from bench.results import save, table
from bench.stack import LiteLLM, Stack
from bench.wrk import wrk


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
