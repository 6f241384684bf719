"""Fresh PostgreSQL databases for tests, on the machine's server (or TETHER_TEST_POSTGRES_URL).

Each test gets its own database (CREATE DATABASE tether_test_<random>), dropped afterwards,
so tests never see each other's rows and never touch a database they did not make.
"""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

from tests.support import services
from tests.support.services import postgres_url as server_url


class Database:
    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name

    def drop(self) -> None:
        _admin(lambda cur: cur.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))


def _admin(action, url: str | None = None) -> None:
    """Run `action(cursor)` as the server's admin user (in `url`'s database if given)."""
    import psycopg2

    try:
        conn = psycopg2.connect(url or server_url(), connect_timeout=3)
    except psycopg2.OperationalError as exc:
        reason = " ".join(str(exc).split())
        services.absent(f"no PostgreSQL answers at {server_url()} (set "
                        f"TETHER_TEST_POSTGRES_URL to test against one): {reason}")
    try:
        conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
        with conn.cursor() as cur:
            action(cur)
    finally:
        conn.close()


def create() -> Database:
    """A new, empty database; skips the test when no PostgreSQL server answers (fails
    instead under TETHER_REQUIRE_CLUSTER=1)."""
    name = f"tether_test_{secrets.token_hex(6)}"
    _admin(lambda cur: cur.execute(f'CREATE DATABASE "{name}"'))
    parts = urlsplit(server_url())
    return Database(urlunsplit(parts._replace(path=f"/{name}")), name)
