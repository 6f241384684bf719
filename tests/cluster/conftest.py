"""The cluster suite: several `tether serve` processes on one PostgreSQL and one Redis
(docs/protocol.md, Several hub processes).

Each test gets a fresh PostgreSQL database and a fresh Redis database number, on the servers
named by TETHER_TEST_POSTGRES_URL and TETHER_TEST_REDIS_URL (default: the standard ports on
127.0.0.1). A test whose service does not answer is skipped, saying which; under
TETHER_REQUIRE_CLUSTER=1 (set by .ci/run when both answer) it fails instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support import postgres, redisdb
from tests.support.hub import Hub


@pytest.fixture
def postgres_db() -> Iterator[postgres.Database]:
    made = postgres.create()
    yield made
    made.drop()


@pytest.fixture
def redis_db() -> Iterator[redisdb.Database]:
    made = redisdb.create()
    yield made
    made.release()


@pytest.fixture
def cluster(postgres_db: postgres.Database, redis_db: redisdb.Database,
            hub_factory: Callable[..., Hub]) -> Callable[..., Hub]:
    """Start a hub process on the test's database and bus: `cluster(**settings)`.

    hub_factory comes last among the fixtures, so its hubs stop before the database is
    dropped and the Redis database emptied."""

    def start(**settings: Any) -> Hub:
        settings.setdefault("database_url", postgres_db.url)
        settings.setdefault("bus_url", redis_db.url)
        return hub_factory(**settings)

    return start


@pytest.fixture
def redis_server(tmp_path) -> Iterator[redisdb.Server]:
    """A redis-server of the test's own, for tests that stop it (never the shared one)."""
    server = redisdb.Server(tmp_path).start()
    yield server
    server.stop()
