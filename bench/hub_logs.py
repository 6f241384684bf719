"""The warnings and errors a cluster's hub processes logged while a bench ran, and their
count by kind."""

from __future__ import annotations

import re

from bench.cluster_stack import ClusterStack


def log_problems(stack: ClusterStack) -> list[str]:
    """Every warning, error and traceback line the hub processes logged (they log at
    `warning`), each cut to 300 characters, so a run that hid errors behind its figures
    shows them."""
    lines = []
    for i in range(len(stack.hubs)):
        lines += [f"hub{i}: {line[:300]}" for line in stack.log(f"hub{i}").splitlines()
                  if any(w in line for w in ("WARNING", "ERROR", "Traceback", "CRITICAL"))]
    return lines


def problem_kinds(lines: list[str]) -> dict[str, int]:
    """The logged problems counted by kind: logger and message, minus timestamps, request
    ids and name lists."""
    kinds: dict[str, int] = {}
    for line in lines:
        parts = line.split(" ", 4)  # hubN: date time LEVEL logger: message
        text = parts[4] if len(parts) == 5 else line
        text = re.sub(r"\[req [0-9a-f]+\]|\[.*|process [0-9a-f]+", "…", text)
        kinds[text[:120]] = kinds.get(text[:120], 0) + 1
    return dict(sorted(kinds.items(), key=lambda kv: -kv[1]))


def print_problems(lines: list[str]) -> None:
    print(f"hub warnings and errors logged: {len(lines)}", flush=True)
    for kind, n in problem_kinds(lines).items():
        print(f"  {n} × {kind}")
