"""The board gauges a worker copies into prometheus_client's multiprocess files, read back as
a scrape sees them. In a fresh interpreter: the files' directory must be named before
prometheus_client is first imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = """
import json
from prometheus_client.core import GaugeMetricFamily
from tether.observability import multiproc_metrics

# Stands in for tether.observability.metrics' board collector: a family per call, as it does.
class Board:
    def __init__(self):
        self.rows = {}
    def collect(self):
        family = GaugeMetricFamily("tether_in_flight", "Tasks under way per Llm.",
                                   labels=["llm"])
        for name, value in self.rows.items():
            family.add_metric([name], value)
        yield family

def scrape():
    out = {}
    for line in multiproc_metrics.exposition().decode().splitlines():
        if line.startswith("tether_in_flight{"):
            out[line.split('"')[1]] = float(line.rsplit(" ", 1)[1])
    return out

board = Board()
gauges = multiproc_metrics.BoardGauges(board)
seen = []
board.rows = {f"m{i}": 0.0 for i in range(2500)}  # more than one turn of YIELD_EVERY
board.rows["a"] = 3.0
gauges.refresh(); seen.append(scrape())
board.rows["a"] = 1.0  # changed
board.rows["m7"] = 2.0
gauges.refresh(); seen.append(scrape())
gauges.refresh(); seen.append(scrape())  # nothing changed
del board.rows["a"]  # gone: 0, not its last value
gauges.refresh(); seen.append(scrape())
board.rows["a"] = 4.0  # back
gauges.refresh(); seen.append(scrape())
print(json.dumps([{k: v for k, v in s.items() if k in ("a", "m7", "m2499")} | {"n": len(s)}
                  for s in seen]))
"""


def test_board_gauges_show_each_value_as_it_is_now(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT)], env=env,
                         capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [
        {"a": 3.0, "m7": 0.0, "m2499": 0.0, "n": 2501},
        {"a": 1.0, "m7": 2.0, "m2499": 0.0, "n": 2501},
        {"a": 1.0, "m7": 2.0, "m2499": 0.0, "n": 2501},
        {"a": 0.0, "m7": 2.0, "m2499": 0.0, "n": 2501},
        {"a": 4.0, "m7": 2.0, "m2499": 0.0, "n": 2501},
    ]
