"""wrk, the load generator the relay and cluster benches drive: one run, its figures as a
dict (bench/wrk_report.lua prints them as one JSON line)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

REPORT = Path(__file__).parent / "wrk_report.lua"


def wrk(url: str, concurrency: int, seconds: int, key: str | None = None) -> dict[str, Any]:
    env = {**os.environ, **({"BENCH_AUTH": key} if key else {})}
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "30s",
         "-s", str(REPORT), url],
        capture_output=True, text=True, check=True, env=env).stdout
    line = next(line for line in out.splitlines() if line.startswith("BENCH "))
    data = json.loads(line[6:])
    data["rps"] = round(data["requests"] / (data["duration_us"] / 1e6), 1)
    return data
