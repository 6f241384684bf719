"""`python -m bench.run stream`: parallel streamed completions, direct and through Tether;
chunks per second."""

from __future__ import annotations

import time
from typing import Any

import gevent

from bench.client import CHAT, stream_once
from bench.results import save, table
from bench.stack import Stack


def bench_stream(parallel: int = 64, chunks: int = 200) -> dict[str, Any]:
    body = {**CHAT, "stream": True, "max_tokens": chunks}
    out: dict[str, Any] = {"parallel": parallel, "chunks_each": chunks}
    with Stack() as stack:
        for name, base in (("direct", stack.backend), ("tether", stack.hub)):
            started = time.perf_counter()
            jobs = [gevent.spawn(stream_once, base, "/v1/chat/completions", body)
                    for _ in range(parallel)]
            gevent.joinall(jobs, raise_error=True)
            elapsed = time.perf_counter() - started
            total = sum(job.value[2] for job in jobs)
            out[name] = {"chunks": total, "seconds": round(elapsed, 3),
                         "chunks_per_s": round(total / elapsed, 1)}
    out["ratio_to_direct"] = round(out["tether"]["chunks_per_s"] / out["direct"]["chunks_per_s"], 3)
    table(f"stream ({parallel} parallel completions x {chunks} chunks)",
          ["path", "chunks", "seconds", "chunks/s", "÷ direct"],
          [["direct", out["direct"]["chunks"], out["direct"]["seconds"],
            out["direct"]["chunks_per_s"], 1.0],
           ["tether", out["tether"]["chunks"], out["tether"]["seconds"],
            out["tether"]["chunks_per_s"], out["ratio_to_direct"]]])
    save("stream", out)
    return out
