"""A key's scope changed by `tether keys update` is in force on every hub process within a
second, as a revocation is (docs/protocol.md, Conventions: key scopes; Several hub processes)."""

from __future__ import annotations

import subprocess
import threading
import time

from tests.e2e.test_security import call
from tests.support.hub import wait_until
from tests.support.procs import TETHER


def test_a_scope_update_reaches_every_process_within_a_second(cluster, redis_db):
    a, b = cluster(auth="on"), cluster(auth="on")
    made = subprocess.run([*TETHER, "keys", "create", "--role", "client", "--name", "app",
                           "--llms", "one", "--database-url", a.settings["database_url"]],
                          capture_output=True, text=True, timeout=30, check=True)
    key = made.stdout.strip().splitlines()[-1]
    # Statuses for GET /api/v1/llms/one and /two: nothing is published, so an allowed
    # name is 404 and a refused one 403.
    seen: dict[str, list[tuple[float, int, int]]] = {"a": [], "b": []}
    stop = threading.Event()

    def use(name, hub) -> None:
        while not stop.is_set():
            at = time.monotonic()
            seen[name].append((at, call(hub, "GET", "/api/v1/llms/one", key).status_code,
                               call(hub, "GET", "/api/v1/llms/two", key).status_code))
            time.sleep(0.02)

    users = [threading.Thread(target=use, args=item, daemon=True)
             for item in (("a", a), ("b", b))]
    for user in users:
        user.start()
    try:
        wait_until(lambda: len(seen["a"]) >= 5 and len(seen["b"]) >= 5)
        done = subprocess.run([*TETHER, "keys", "update", "app", "--llms", "two",
                               "--database-url", a.settings["database_url"],
                               "--bus-url", redis_db.url],
                              capture_output=True, text=True, timeout=30, check=True)
        updated = time.monotonic()
        switched = {name: wait_until(lambda name=name: next(
            (at for at, one, two in seen[name] if (one, two) == (403, 404)), None), timeout=5)
            for name in seen}
        wait_until(lambda: min(s[-1][0] for s in seen.values()) > max(switched.values()) + 0.5)
    finally:
        stop.set()
        for user in users:
            user.join(5)
    # Both processes follow the channel revocations use: they heard it, not a re-read.
    assert "told 2 hub process(es)" in done.stdout, done.stdout
    for name, at in switched.items():
        assert at - updated < 1.0, name
        assert {(one, two) for t, one, two in seen[name] if t >= at} == {(403, 404)}, name
        assert {(one, two) for t, one, two in seen[name] if t < at} <= {(404, 403), (404, 404)}
