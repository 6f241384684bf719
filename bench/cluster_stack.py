"""The cluster a benchmark runs against: hub processes on one PostgreSQL database and one
Redis database of the bench's own, claimed and dropped around the run."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
from typing import TYPE_CHECKING, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import urllib3

from bench.processes import TETHER, Processes, free_port, wait_http, worker_pids

if TYPE_CHECKING:
    import redis


POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379"
# Redis database numbers are shared with the test suite on this machine (tests/support/
# redisdb.py): whoever uses one claims it first with SET NX on this key in database 0.
REDIS_CLAIMS = "tether-test:redis-db:"
REDIS_CLAIM_S = 3 * 3600  # longer than any bench; a killed bench's claim lapses after this


def postgres_url() -> str:
    return os.environ.get("TETHER_BENCH_POSTGRES_URL") or POSTGRES_URL


def redis_url() -> str:
    return os.environ.get("TETHER_BENCH_REDIS_URL") or REDIS_URL


def with_database(url: str, name: str) -> str:
    """`url` naming the database `name` (a Redis database number, a PostgreSQL database)
    instead of whichever it named, if any: appending to a URL that names one already
    (redis://host:6379/3) made redis://host:6379/3/15. Redis's other way to name one, a
    `db=` option, is dropped too (it would win over the path, and over a `db=` argument)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "db"]
    return urlunsplit(parts._replace(path=f"/{name}", query=urlencode(query)))


class Unavailable(RuntimeError):
    """PostgreSQL or Redis does not answer: the cluster bench cannot run here."""


class Services:
    """A fresh PostgreSQL database and an empty Redis database number, for one cluster;
    dropped and emptied again on exit."""

    def __init__(self) -> None:
        self.pg_name = f"tether_bench_{secrets.token_hex(6)}"
        self.database_url = ""
        self.bus_url = ""
        self._redis_db: int | None = None
        self._token = secrets.token_hex(8)

    def _pg(self, sql: str) -> None:
        import psycopg2

        try:
            conn = psycopg2.connect(postgres_url(), connect_timeout=3)
        except psycopg2.OperationalError as exc:
            raise Unavailable(f"no PostgreSQL answers at {postgres_url()} (set "
                              f"TETHER_BENCH_POSTGRES_URL): {' '.join(str(exc).split())}") \
                from None
        try:
            conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(sql)
        finally:
            conn.close()

    def _redis(self, db: int) -> redis.Redis:
        import redis

        # Not from_url(..., db=db): a database named in the URL would win over it.
        return redis.Redis.from_url(with_database(redis_url(), str(db)), socket_timeout=5,
                                    socket_connect_timeout=3)

    def __enter__(self) -> Services:
        import redis

        self._pg(f'CREATE DATABASE "{self.pg_name}"')
        self.database_url = with_database(postgres_url(), self.pg_name)
        try:
            with self._redis(0) as admin:
                for number in range(15, 0, -1):  # from the top: tests claim from 1 up
                    if admin.set(f"{REDIS_CLAIMS}{number}", self._token, nx=True,
                                 ex=REDIS_CLAIM_S):
                        self._redis_db = number
                        break
                else:
                    raise Unavailable("every Redis database 1..15 is claimed (tests?)")
            with self._redis(self._redis_db) as db:
                db.flushdb()
        except (redis.RedisError, Unavailable) as exc:
            self.__exit__()
            if isinstance(exc, Unavailable):
                raise
            raise Unavailable(f"no Redis answers at {redis_url()} (set "
                              f"TETHER_BENCH_REDIS_URL): {exc}") from None
        self.bus_url = with_database(redis_url(), str(self._redis_db))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._redis_db is not None:
            with self._redis(self._redis_db) as db:
                db.flushdb()
            with self._redis(0) as admin:
                admin.eval("if redis.call('GET', KEYS[1]) == ARGV[1] then "
                           "return redis.call('DEL', KEYS[1]) end return 0",
                           1, f"{REDIS_CLAIMS}{self._redis_db}", self._token)
            self._redis_db = None
        if self.database_url:
            self._pg(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            self.database_url = ""


class ClusterStack(Processes):
    """`hubs` `tether serve` processes (each `--workers workers`) on one fresh PostgreSQL
    database and Redis database, and, with `publisher`, the demo backend and one `tether
    publish` whose stream is on hub 0 (so hub 0 owns the name `demo`: its stream's home
    takes the lease). `hubs[i]` is each process's URL."""

    def __init__(self, hubs: int = 2, workers: int = 1, publisher: bool = True,
                 hub_env: dict[str, str] | None = None, max_concurrency: int = 64,
                 tag: str = "cluster") -> None:
        super().__init__(f"tether-bench-{tag}-")
        self.workers = workers
        self.ports = [free_port() for _ in range(hubs)]
        self.hubs = [f"http://127.0.0.1:{p}" for p in self.ports]
        self.backend_port = free_port()
        self.backend = f"http://127.0.0.1:{self.backend_port}"
        self.with_publisher = publisher
        self.max_concurrency = max_concurrency
        # Benches open sessions by the thousand: no register rate (a limit under test elsewhere).
        self.hub_env = {"TETHER_LOG_LEVEL": "warning", "TETHER_REGISTER_RATE_PER_MIN": "0",
                        **(hub_env or {})}
        self.hub_procs: list[subprocess.Popen] = []
        self.services = Services()
        self._marks: dict[str, int] = {}

    def __enter__(self) -> Self:
        try:
            self.services.__enter__()
        except Unavailable:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return super().__enter__()

    def _start(self) -> None:
        if self.with_publisher:
            self.backend_proc = self._spawn(
                [*TETHER, "demo-backend", "--port", str(self.backend_port)], "backend")
        for i, port in enumerate(self.ports):
            self.hub_procs.append(self._spawn(
                [*TETHER, "serve", "--port", str(port), "--workers", str(self.workers),
                 "--database-url", self.services.database_url,
                 "--bus-url", self.services.bus_url], f"hub{i}", self.hub_env))
            # One at a time: the first process of a cluster prepares the schema.
            wait_http(f"{self.hubs[i]}/healthz", timeout=60)
        for i in range(len(self.hubs)):  # every worker of every process up (and on the bus)
            deadline = time.monotonic() + 60
            while len(worker_pids(self.hub_procs[i].pid)) < self.workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"hub {i} did not start {self.workers} workers")
                time.sleep(0.1)
        if not self.with_publisher:
            return
        wait_http(f"{self.backend}/v1/models")
        self.publisher_proc = self._spawn(
            [*TETHER, "publish", "--hub", self.hubs[0], "--name", "demo",
             "--model", "demo-model", "--backend", f"{self.backend}/v1",
             "--max-concurrency", str(self.max_concurrency),
             "--session-file", str(self.tmp / "session"), "--log-level", "warning"],
            "publisher", {"PYTHONUNBUFFERED": "1"})
        body = json.dumps({"model": "demo", "max_tokens": 4,
                           "messages": [{"role": "user", "content": "up?"}]})
        deadline = time.monotonic() + 60
        while True:  # servable through every process: a relayed answer from each
            try:
                if all(urllib3.request("POST", f"{hub}/v1/chat/completions", body=body,
                                       headers={"Content-Type": "application/json"},
                                       timeout=5, retries=False).status == 200
                       for hub in self.hubs):
                    return
            except urllib3.exceptions.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the publisher did not come up through {self.hubs}")
            time.sleep(0.2)

    def worker_pids(self, hub: int = 0) -> list[int]:
        return worker_pids(self.hub_procs[hub].pid)

    def mark_logs(self) -> None:
        """From here on `log()` returns only what is logged after this call (the start's
        own warnings, such as a request refused before the publisher was up, are not the
        bench's)."""
        self._marks = {path.name: path.stat().st_size for path in self.tmp.glob("*.log")}

    def log(self, name: str) -> str:
        path = self.tmp / f"{name}.log"
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(self._marks.get(path.name, 0))
            return f.read().decode(errors="replace")

    def __exit__(self, *exc: object) -> None:
        super().__exit__()  # the hubs first: then their database and Redis db go
        self.services.__exit__()
