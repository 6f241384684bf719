"""tether/http/python_gc.py in a fresh interpreter each (it changes the collector process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest

from tests.support.hub import Hub

PRELUDE = """
import gc, json, weakref
from tether.http import python_gc

class Node:
    pass

def cycle():
    node = Node()
    node.me = node  # freed only by the cyclic collector
    return node
"""


def run(body: str) -> Any:
    """Run PRELUDE + body in a new interpreter; it prints one JSON value."""
    out = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
                         capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_full_collections_leave_what_survived_the_last_one_unscanned() -> None:
    seen = run("""
        python_gc.install("freeze")
        boot = gc.get_freeze_count()
        kept = [Node() for _ in range(5000)]
        gc.collect()
        print(json.dumps({"boot": boot, "frozen": gc.get_freeze_count(),
                          "scanned_next": len(gc.get_objects(generation=2))}))
    """)
    assert seen["boot"] > 0  # what booting made is frozen at install
    assert seen["frozen"] >= seen["boot"] + 5000  # the survivors joined it
    assert seen["scanned_next"] < 100  # the next full collection scans none of them


def test_a_garbage_cycle_among_frozen_objects_is_freed_once_the_frozen_set_doubles() -> None:
    seen = run("""
        python_gc.install("freeze")
        garbage = cycle()
        freed = []
        probe = weakref.ref(garbage, lambda _: freed.append(True))
        gc.collect()  # it survives: frozen
        del garbage
        at_start = gc.get_freeze_count()
        kept = [Node() for _ in range(at_start // 2)]
        gc.collect()  # grown by half: still frozen
        freed_by_half = bool(freed)
        kept += [Node() for _ in range(at_start // 2 + 1)]
        gc.collect()  # doubled: thawed ...
        gc.collect()  # ... and scanned
        print(json.dumps({"freed_by_half": freed_by_half, "freed": bool(freed)}))
    """)
    assert not seen["freed_by_half"]  # the trade: a frozen cycle waits...
    assert seen["freed"]  # ...until the frozen set has doubled, not forever


def test_default_is_cpythons_own_schedule() -> None:
    seen = run("""
        policy = python_gc.install("default")
        garbage = cycle()
        freed = []
        probe = weakref.ref(garbage, lambda _: freed.append(True))
        gc.collect()
        del garbage
        gc.collect()
        print(json.dumps({"policy": repr(policy), "frozen": gc.get_freeze_count(),
                          "freed": bool(freed)}))
    """)
    assert seen == {"policy": "None", "frozen": 0, "freed": True}


@pytest.mark.parametrize("schedule", ["freeze", "default"])
def test_the_hub_worker_runs_the_setting(hub_factory: Callable[..., Hub],
                                         schedule: str) -> None:
    hub = hub_factory(python_gc=schedule)
    said = "freeze (" if schedule == "freeze" else "CPython's default schedule"
    assert f"python_gc: {said}" in hub.logs()
