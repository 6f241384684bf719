"""PostgreSQL specifics: queries yield to the gevent loop, and a database that cannot be
opened stops `tether serve` with one line and status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import postgres, services
from tests.support.hub import free_port
from tests.support.procs import TETHER

# Run under gevent in a child process (monkey-patching the test process would change every
# other test): while greenlets wait on pg_sleep, another must keep ticking. The store is
# imported before patching, as in `tether serve` (its master opens the database first), and
# two greenlets query at once: each must get its own connection.
COOPERATIVE = """
import sys
from tether.store import db
from gevent import monkey
monkey.patch_all()
import gevent

db.init(sys.argv[1])
ticks = []

def tick():
    while True:
        ticks.append(1)
        gevent.sleep(0.02)

def query():
    with db.connection() as conn:
        conn.execute_sql("SELECT pg_sleep(0.5)")

ticker = gevent.spawn(tick)
gevent.sleep(0)
before = len(ticks)
gevent.joinall([gevent.spawn(query), gevent.spawn(query)], raise_error=True)
print(len(ticks) - before)
"""


@pytest.fixture
def pg():
    made = postgres.create()
    yield made
    made.drop()


def test_a_postgres_query_lets_other_greenlets_run(pg):
    done = subprocess.run([sys.executable, "-c", COOPERATIVE, pg.url], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) >= 10, "the query blocked the gevent loop"


@pytest.mark.parametrize("url, reason", [
    ("postgresql://postgres@127.0.0.1:{closed}/tether", "Connection refused"),
    ("postgresql://postgres:s3cret@{host}:{port}/no_such_database_here", "does not exist"),
    ("sqlite:////nonexistent-dir/tether.db", "unable to open database file"),
    ("mysql://db/tether", "Tether supports sqlite:///path and postgresql://"),
])
def test_a_database_that_cannot_be_opened_is_one_line_and_status_2(tmp_path, url, reason):
    from urllib.parse import urlsplit

    server = urlsplit(postgres.server_url())
    if "{host}" in url and not services.answers(postgres.server_url(), 5432):
        # "does not exist" is a running server's answer; without one this case cannot be made
        services.absent(f"no PostgreSQL answers at {postgres.server_url()}")
    url = url.format(closed=free_port(), host=server.hostname, port=server.port or 5432)
    done = subprocess.run([*TETHER, "serve", "--port", str(free_port()), "--database-url", url],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tether serve: cannot open the database ")
    assert reason in lines[0]
    assert "s3cret" not in lines[0]
    # The operator's key commands say the same.
    keys = subprocess.run([*TETHER, "keys", "list", "--database-url", url],
                          capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert keys.returncode == 2 and len(keys.stderr.splitlines()) == 1, keys.stderr
    assert reason in keys.stderr


def test_a_database_the_hub_may_not_write_is_one_line_and_status_2(tmp_path, pg):
    """A role that may connect but not create tables (PostgreSQL 15's default for a role
    that does not own the database): the migration fails before gunicorn starts."""
    from urllib.parse import urlsplit, urlunsplit

    role = f"tether_test_ro_{pg.name[-12:]}"
    postgres._admin(lambda cur: cur.execute(f'CREATE ROLE "{role}" LOGIN'))
    try:
        # Already so on PostgreSQL 15+; said explicitly for older servers (in that database).
        postgres._admin(lambda cur: cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
                        pg.url)
        parts = urlsplit(pg.url)
        host = parts.netloc.rpartition("@")[2]
        url = urlunsplit(parts._replace(netloc=f"{role}@{host}"))
        done = subprocess.run([*TETHER, "serve", "--port", str(free_port()),
                               "--database-url", url],
                              capture_output=True, text=True, timeout=30, cwd=tmp_path)
    finally:
        pg.drop()
        postgres._admin(lambda cur: cur.execute(f'DROP ROLE IF EXISTS "{role}"'))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("tether serve: cannot prepare the database ")
    assert "permission denied" in done.stderr
