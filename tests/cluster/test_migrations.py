"""Hub processes that start together on one fresh PostgreSQL database all come up: each
migrates under an advisory lock (docs/protocol.md, Several hub processes: Startup)."""

from __future__ import annotations

import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from tests.support.hub import Hub

# Each child connects first, then waits for one shared instant before migrating, so the
# migrations overlap (process start-up alone varies by more than a migration takes).
MIGRATE_AT = """
import sys, time
from tether.store import db, migrations
db.init(sys.argv[1])
with db.connection() as conn:
    conn.execute_sql("SELECT 1")
while time.time() < float(sys.argv[2]):
    pass
print(migrations.migrate())
"""


def test_processes_migrating_one_fresh_database_at_once_all_succeed(postgres_db):
    from tether.store.migrations import CURRENT_VERSION

    at = time.time() + 3
    children = [subprocess.Popen([sys.executable, "-c", MIGRATE_AT, postgres_db.url, str(at)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(4)]
    results = [child.communicate(timeout=30) for child in children]
    for child, (_out, err) in zip(children, results, strict=True):
        assert child.returncode == 0, err[-2000:]
    # One made the schema; the others waited for it and found it current.
    assert sorted(int(out) for out, _ in results) == [0] + [CURRENT_VERSION] * 3


def test_two_hubs_starting_on_one_fresh_database_both_serve(tmp_path, postgres_db):
    hubs = [Hub(tmp_path, database_url=postgres_db.url) for _ in range(2)]
    with ThreadPoolExecutor(2) as pool:  # both start at once; start() waits for /healthz
        started = list(pool.map(Hub.start, hubs))
    for hub in started:
        assert hub.get("/api/v1/llms").status_code == 200
    for hub in hubs:
        assert hub.stop() == 0
