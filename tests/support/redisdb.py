"""Fresh Redis databases for tests, on the machine's server (or TETHER_TEST_REDIS_URL).

Each test takes a database number of its own (1 and up; 0 is left to people), emptied before
and after, so tests running at once never see each other's keys. Pub/sub ignores database
numbers; Tether's channel names carry the number (the cluster prefix comes from the bus URL),
which keeps channels apart too.

Numbers are handed out through Redis itself (`SET NX` on a claim key in database 0, with an
expiry in case a test process is killed), so the tests of every worktree and every xdist
worker on one machine share the server without colliding. A database that holds keys but
not the tests' mark is someone else's (a benchmark, a developer's hub): it is left alone.
"""

from __future__ import annotations

import secrets
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from tests.support import services

CLAIMS = "tether-test:redis-db:"
MARK = "tether-test:in-use"  # in each database a test took: whatever is there is a test's
HOLD_S = 900  # longer than any test; a killed test's claim lapses after this
WAIT_S = 60  # every number taken: wait this long for one to come free


def _client(url: str, db: int) -> redis.Redis:
    # Not from_url(url, db=db): a database the URL names wins over that argument, and every
    # test would then flush the one TETHER_TEST_REDIS_URL names.
    return redis.Redis.from_url(with_db(url, db), socket_timeout=5, socket_connect_timeout=3)


def with_db(url: str, number: int) -> str:
    """`url` naming database `number`, whatever database it named (path or `db=` option)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "db"]
    return urlunsplit(parts._replace(path=f"/{number}", query=urlencode(query)))


class Database:
    def __init__(self, server: str, number: int, token: str) -> None:
        self.server = server
        self.number = number
        self.url = with_db(server, number)
        self._token = token

    def client(self) -> redis.Redis:
        return _client(self.server, self.number)

    def release(self, flush: bool = True) -> None:
        """Empty the database and give its number back (if the claim is still ours)."""
        if flush:
            with self.client() as db:
                db.flushdb()
        with _client(self.server, 0) as admin:
            admin.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                       "return redis.call('DEL', KEYS[1]) end return 0",
                       1, f"{CLAIMS}{self.number}", self._token)


def create() -> Database:
    """An empty database of its own; skips the test when no Redis answers (fails instead
    under TETHER_REQUIRE_CLUSTER=1)."""
    server = services.redis_url()
    token = secrets.token_hex(8)
    admin = _client(server, 0)
    try:
        try:
            count = int(admin.config_get("databases")["databases"])
        except redis.ResponseError:  # CONFIG disabled (a managed Redis): the default
            count = 16
    except redis.ConnectionError as exc:
        services.absent(f"no Redis answers at {server} (set TETHER_TEST_REDIS_URL to test "
                        f"against one): {exc}")
    try:
        deadline = time.monotonic() + WAIT_S
        while True:
            for number in range(1, count):
                if admin.set(f"{CLAIMS}{number}", token, nx=True, ex=HOLD_S):
                    made = Database(server, number, token)
                    with made.client() as db:
                        if db.dbsize() and not db.exists(MARK):
                            made.release(flush=False)  # not a test's: leave it alone
                            continue
                        db.flushdb()  # whatever a killed test left behind
                        db.set(MARK, "1")
                    return made
            if time.monotonic() > deadline:
                raise RuntimeError(f"every Redis database 1..{count - 1} at {server} stayed "
                                   f"taken (by other tests, or holding keys that are not a "
                                   f"test's) for {WAIT_S} s")
            time.sleep(0.1)
    finally:
        admin.close()


class Server:
    """A redis-server of the test's own on a free port, to stop and start at will (the
    machine's Redis is shared with every other test running)."""

    def __init__(self, tmp: Path) -> None:
        import shutil

        from tests.support.hub import free_port

        self.binary = shutil.which("redis-server")
        if self.binary is None:
            services.absent("no redis-server on PATH (apt-get install redis-server)")
        self.tmp = tmp
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Server:
        assert self.binary is not None
        with open(self.tmp / f"redis-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.tmp)],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.05)
        return self

    def answers(self) -> bool:
        try:
            with _client(self.url, 0) as probe:
                return bool(probe.ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """Gone at once, as a crash would leave it (nothing is saved: --save "")."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
