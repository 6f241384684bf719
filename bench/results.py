"""What every bench leaves: its figures in bench/results/<bench>.json and its tables, in
markdown, on stdout."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def save(name: str, data: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    data = {"bench": name, "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "cpus": os.cpu_count(), **data}
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2))


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    print(f"\n## {title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")
    sys.stdout.flush()


def skipped(name: str, reason: str) -> dict[str, Any]:
    """A bench that could not run here: said on stdout, and saved as its result."""
    print(f"\n## {name}: not measured\n\n{reason}\n", flush=True)
    out = {"skipped": reason}
    save(name, out)
    return out
