"""`tether status [--hub URL] [--key-env VAR]`: the status page's table in a terminal.

It reads GET /status/state, the same live state the page shows (the actors' in-memory
state: `waking`, in-flight and queue counts are there, not in the rows of GET /api/v1/llms).
Colour only when stdout is a terminal (and NO_COLOR is unset).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

COLOURS = {"active": "32", "hibernating": "34", "waking": "33", "inactive": "31"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--hub", default=os.environ.get("TETHER_HUB", "http://127.0.0.1:8080"),
                        help="the hub's URL (default $TETHER_HUB or http://127.0.0.1:8080)")
    parser.add_argument("--key-env", metavar="VAR",
                        help="env var holding a client or admin key (needed with auth on)")


def run(args: argparse.Namespace) -> int:
    headers = {"Accept": "application/json"}
    if args.key_env:
        key = os.environ.get(args.key_env, "").strip()
        if not key:
            print(f"tether status: ${args.key_env} is empty or unset", file=sys.stderr)
            return 2
        headers["Authorization"] = f"Bearer {key}"
    url = args.hub.rstrip("/") + "/status/state"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=10) as response:
            state = json.load(response)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            hint = ("pass --key-env VAR, VAR holding a client or admin key" if not args.key_env
                    else f"the key in ${args.key_env} was refused")
            print(f"tether status: {args.hub} answered {exc.code}: {hint}", file=sys.stderr)
            return 2
        print(f"tether status: {url} answered {exc.code}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"tether status: cannot read {url}: {getattr(exc, 'reason', exc)}",
              file=sys.stderr)
        return 1
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    print(render(state, args.hub, colour))
    return 0


def _clock(epoch: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) if epoch else "-"


def _wake(llm: dict[str, Any]) -> str:
    if llm["status"] == "waking":
        return f"waking since {_clock(llm['lastWakeAt'])}"
    if not llm.get("lastWakeAt"):
        return "-"
    parts = [_clock(llm["lastWakeAt"])]
    if llm.get("lastWakeSeconds") is not None:
        parts.append(f"{llm['lastWakeSeconds']:.1f} s")
    if llm.get("lastWakeOutcome"):
        parts.append(llm["lastWakeOutcome"])
    return " ".join(parts)


def _table(head: list[str], rows: list[list[str]], paint: dict[int, Any]) -> list[str]:
    """Columns padded on the plain text; colour (if any) wraps the padded cell."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    lines = []
    for n, row in enumerate([head, *rows]):
        cells = []
        for i, text in enumerate(row):
            padded = text.ljust(widths[i]) if i < len(row) - 1 else text
            if n and i in paint:
                padded = paint[i](text, padded)
            cells.append(padded)
        lines.append("  ".join(cells).rstrip())
    return lines


def render(state: dict[str, Any], hub: str, colour: bool) -> str:
    t = state["totals"]
    by = t.get("byStatus", {})
    counts = ", ".join(f"{by[s]} {s}" for s in ("active", "hibernating", "waking", "inactive")
                       if by.get(s))
    out = [
        f"Tether hub {hub}: {t['llms']} Llm{'s' * (t['llms'] != 1)}"
        + (f" ({counts})" if counts else ""),
        f"{t['sessions']} publisher session(s), {t['streamsOpen']} stream(s) open, "
        f"{t['inFlight']} in flight, {t['queued']} queued, {t['requests']} request(s), "
        f"{t['errors']} error(s)",
        "",
    ]

    def status(text: str, padded: str) -> str:
        code = COLOURS.get(text)
        return f"\x1b[{code}m{padded}\x1b[0m" if colour and code else padded

    rows = [[llm["name"], llm["status"], llm["kind"], llm.get("session") or "-",
             str(llm["inFlight"]), str(llm["queued"]), _wake(llm)] for llm in state["llms"]]
    if rows:
        out += _table(["NAME", "STATUS", "KIND", "SESSION", "IN-FLIGHT", "QUEUED", "LAST WAKE"],
                      rows, {1: status})
    else:
        out.append("No Llm is registered.")
    errors = state.get("errors") or []
    if errors:
        out += ["", "Recent errors:"]
        out += _table(["WHEN", "LLM", "STATUS", "CODE"],
                      [[_clock(e["at"]), e["llm"], str(e["status"]), e["code"]]
                       for e in errors[:10]], {})
    return "\n".join(out)
