"""Where the test services are, and whether they answer: the PostgreSQL and Redis that the
cluster suite (tests/cluster) runs on.

Standard library only: `.ci/run` runs this file with the system Python, before any virtualenv
exists, to decide whether the cluster suite must run (exit 0: both services answer).
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlsplit

POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379"

# Set by .ci/run when both services answer: a cluster test that cannot reach one then fails
# instead of skipping, so a broken service or fixture cannot pass CI as "skipped".
REQUIRE_ENV = "TETHER_REQUIRE_CLUSTER"


def postgres_url() -> str:
    return os.environ.get("TETHER_TEST_POSTGRES_URL") or POSTGRES_URL


def redis_url() -> str:
    return os.environ.get("TETHER_TEST_REDIS_URL") or REDIS_URL


def required() -> bool:
    return os.environ.get(REQUIRE_ENV) == "1"


def absent(reason: str) -> None:
    """A service a test needs does not answer: skip, saying why, or fail when required."""
    import pytest

    if required():
        pytest.fail(f"{reason} ({REQUIRE_ENV}=1: .ci/run saw PostgreSQL and Redis answer, so "
                    "the cluster suite must run, not skip)")
    pytest.skip(reason)


def answers(url: str, default_port: int, timeout: float = 2.0) -> bool:
    """Whether something accepts a TCP connection at `url`'s host and port."""
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1",
                                       parts.port or default_port), timeout=timeout):
            return True
    except OSError:
        return False


def main() -> int:
    found = {"PostgreSQL": answers(postgres_url(), 5432), "Redis": answers(redis_url(), 6379)}
    for name, up in found.items():
        print(f"{name}: {'answers' if up else 'does not answer'}", file=sys.stderr)
    return 0 if all(found.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
