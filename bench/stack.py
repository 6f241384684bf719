"""The processes a benchmark runs against: demo backend, hub, publisher (and LiteLLM); for
pools, a hub and several KV-cache backends each with its publisher; for the cluster, hub
processes on one PostgreSQL database and one Redis database of the bench's own."""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Self
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import urllib3

if TYPE_CHECKING:
    import redis

TETHER = [sys.executable, "-m", "tether.cli"]


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if urllib3.request("GET", url, timeout=1, retries=False).status < 500:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class Processes:
    """What a bench runs against: processes each logging to a folder of its own
    (tmp/<name>.log), stopped in reverse order on exit, and the folder removed. A start
    that fails part-way stops what it had started."""

    def __init__(self, prefix: str) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self.procs: list[subprocess.Popen] = []

    def _spawn(self, args: list[str], name: str, env: dict[str, str] | None = None) -> \
            subprocess.Popen:
        with open(self.tmp / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **(env or {})})
        self.procs.append(proc)
        return proc

    def __enter__(self) -> Self:
        try:
            self._start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def __exit__(self, *exc: object) -> None:
        for proc in reversed(self.procs):
            stop(proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


class Stack(Processes):
    """Backend + hub + publisher, each its own process, torn down in reverse."""

    def __init__(self, hub_env: dict[str, str] | None = None, publisher: bool = True,
                 max_concurrency: int = 64, auth: bool = False) -> None:
        super().__init__("tether-bench-")
        self.backend_port, self.hub_port = free_port(), free_port()
        self.backend = f"http://127.0.0.1:{self.backend_port}"
        self.hub = f"http://127.0.0.1:{self.hub_port}"
        self.hub_env = {"TETHER_LOG_LEVEL": "warning", **(hub_env or {})}
        self.with_publisher = publisher
        self.max_concurrency = max_concurrency
        # auth on: the publisher and the clients present keys (clients: `client_headers`),
        # so the hub checks a key on every request, as it does off loopback.
        self.auth = auth
        self.client_headers: dict[str, str] = {}
        if auth:
            # Limits stay on (their cost counts) but high enough never to refuse the bench.
            self.hub_env.update({"TETHER_AUTH": "on", "TETHER_RATE_LIMIT_PER_MIN": "10000000",
                                 "TETHER_MAX_INFLIGHT_PER_KEY": "100000"})

    def _start(self) -> None:
        self.backend_proc = self._spawn(
            [*TETHER, "demo-backend", "--port", str(self.backend_port)], "backend")
        self.hub_proc = self._spawn(
            [*TETHER, "serve", "--port", str(self.hub_port),
             "--database-url", f"sqlite:///{self.tmp / 'hub.db'}"], "hub", self.hub_env)
        wait_http(f"{self.backend}/v1/models")
        wait_http(f"{self.hub}/healthz")
        publisher_env = {"PYTHONUNBUFFERED": "1"}
        key_flags: list[str] = []
        if self.auth:
            publisher_env["TETHER_BENCH_KEY"] = self.create_key("publisher")
            key_flags = ["--key-env", "TETHER_BENCH_KEY"]
            self.client_headers = {"Authorization": f"Bearer {self.create_key('client')}"}
        if self.with_publisher:
            self.publisher_proc = self._spawn(
                [*TETHER, "publish", "--hub", self.hub, "--name", "demo",
                 "--model", "demo-model", "--backend", f"{self.backend}/v1",
                 "--max-concurrency", str(self.max_concurrency),
                 "--session-file", str(self.tmp / "session"), "--log-level", "warning",
                 *key_flags], "publisher",
                publisher_env)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if self._servable():
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError("the publisher did not come up")

    def _servable(self) -> bool:
        """The demo Llm is active with its publisher's stream open (the row turns active at
        register, a moment before the stream opens; requests in between get 503)."""
        r = urllib3.request("GET", f"{self.hub}/status/state", retries=False,
                            headers=self.client_headers)
        return r.status == 200 and any(
            row["name"] == "demo" and row["status"] == "active" and row["streamOpen"]
            for row in r.json()["llms"])

    def create_key(self, role: str) -> str:
        """A key of `role` in the hub's database (`tether keys create` prints it last)."""
        out = subprocess.run(
            [*TETHER, "keys", "create", "--role", role, "--name", f"bench-{role}",
             "--database-url", f"sqlite:///{self.tmp / 'hub.db'}"],
            capture_output=True, text=True, check=True).stdout
        return out.strip().splitlines()[-1]

    def hub_worker_pid(self) -> int:
        out = subprocess.run(["pgrep", "-P", str(self.hub_proc.pid)], capture_output=True,
                             text=True).stdout.split()
        return int(out[0])

class PoolStack(Processes):
    """A hub and `members` machines serving one pooled name (docs/protocol.md, Pools): each
    machine a KV-cache backend (bench/kv_backend.py) and a `tether publish --pool` in front
    of it, every process its own. `routing` is the hub's `pool_routing` setting."""

    NAME = "pool"

    def __init__(self, members: int = 4, routing: str = "affinity", max_concurrency: int = 8,
                 ms_per_message: float = 2.0, prefill_slots: int = 1) -> None:
        super().__init__(f"tether-bench-pool-{routing}-")
        self.members, self.routing = members, routing
        self.max_concurrency, self.ms_per_message = max_concurrency, ms_per_message
        self.prefill_slots = prefill_slots
        self.hub_port = free_port()
        self.hub = f"http://127.0.0.1:{self.hub_port}"
        self.backends = [f"http://127.0.0.1:{free_port()}" for _ in range(members)]

    def _start(self) -> None:
        for i, backend in enumerate(self.backends):
            self._spawn([sys.executable, "-m", "bench.kv_backend", "--port",
                         backend.rsplit(":", 1)[1], "--ms-per-message",
                         str(self.ms_per_message), "--prefill-slots",
                         str(self.prefill_slots)], f"backend{i}")
        self._spawn([*TETHER, "serve", "--port", str(self.hub_port),
                     "--database-url", f"sqlite:///{self.tmp / 'hub.db'}"], "hub",
                    {"TETHER_LOG_LEVEL": "warning", "TETHER_POOL_ROUTING": self.routing})
        for backend in self.backends:
            wait_http(f"{backend}/v1/models")
        wait_http(f"{self.hub}/healthz")
        for i, backend in enumerate(self.backends):
            self._spawn([*TETHER, "publish", "--hub", self.hub, "--name", self.NAME,
                         "--model", "kv-model", "--backend", f"{backend}/v1", "--pool",
                         "--max-concurrency", str(self.max_concurrency),
                         "--session-file", str(self.tmp / f"session{i}"),
                         "--log-level", "warning"], f"publisher{i}",
                        {"PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + 60
        while not self._servable():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pool's {self.members} members did not come up")
            time.sleep(0.1)

    def _servable(self) -> bool:
        """Every member active, and every member's task stream open."""
        llm = urllib3.request("GET", f"{self.hub}/api/v1/llms/{self.NAME}", retries=False)
        if llm.status != 200:
            return False
        members = llm.json()["members"]
        state = urllib3.request("GET", f"{self.hub}/status/state", retries=False).json()
        return (len(members) == self.members and state["totals"]["streamsOpen"] == self.members
                and all(m["status"] == "active" for m in members))

    def backend_stats(self) -> list[dict[str, float]]:
        """Each backend's own counters (GET /stats), in member order."""
        return [urllib3.request("GET", f"{b}/stats", retries=False).json()
                for b in self.backends]

class BareServer(Processes):
    """bench/bare_server.py under the hub's gunicorn settings and worker class: the floor
    that opening a session costs before any of Tether runs."""

    def __init__(self) -> None:
        super().__init__("tether-bench-bare-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def _start(self) -> None:
        conf = Path(__file__).resolve().parent.parent / "conf" / "gunicorn.conf.py"
        self.proc = self._spawn([
            sys.executable, "-m", "gunicorn", "--config", str(conf),
            "--worker-class", "tether.http.worker.Worker", "--workers", "1",
            "--bind", f"127.0.0.1:{self.port}", "--log-level", "warning",
            "--no-control-socket", "bench.bare_server:app"], "bare")
        deadline = time.monotonic() + 30
        while not worker_pids(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        wait_http(f"{self.url}/api/v1/llms/_provider-register")  # 405 for GET: it answers

    def worker_pid(self) -> int:
        return worker_pids(self.proc.pid)[0]

def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL; polled, so no child watcher has to see the exit."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()


def worker_pids(master: int) -> list[int]:
    """The gunicorn workers of the master `master` (its children), in pid order."""
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout
    return sorted(int(pid) for pid in out.split())


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process `pid`, all its live threads, in nanoseconds' precision:
    the scheduler's run time from /proc/<pid>/task/*/schedstat. /proc/<pid>/stat counts
    10 ms ticks, too coarse for 12,800 streamed chunks of a few µs each. Falls back to it
    where schedstat is missing."""
    total_ns = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        for task in tasks:
            try:
                total_ns += int((task / "schedstat").read_text().split()[0])
            except FileNotFoundError:  # a thread that ended meanwhile
                continue
    except (FileNotFoundError, ValueError, IndexError):
        total_ns = 0
    if total_ns:
        return total_ns / 1e9
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class LiteLLM:
    """LiteLLM's proxy in front of the same backend, when `litellm[proxy]` is installed."""

    KEY = "sk-tether-bench-only"

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    @staticmethod
    def command() -> str | None:
        """`litellm` beside this interpreter (make bench runs the venv's python), else PATH."""
        local = Path(sys.executable).parent / "litellm"
        return str(local) if local.exists() else shutil.which("litellm")

    @classmethod
    def available(cls) -> bool:
        return cls.command() is not None

    def __enter__(self) -> LiteLLM:
        self.tmp = Path(tempfile.mkdtemp(prefix="litellm-"))
        config = self.tmp / "config.yaml"
        config.write_text(
            "model_list:\n  - model_name: demo\n    litellm_params:\n"
            f"      model: openai/demo-model\n      api_base: {self.backend}/v1\n"
            "      api_key: unused\n")
        with open(self.tmp / "litellm.log", "wb") as log:
            self.proc = subprocess.Popen(
                [self.command() or "litellm", "--config", str(config), "--port", str(self.port),
                 "--num_workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "LITELLM_MASTER_KEY": self.KEY})
        try:
            wait_http(f"{self.url}/health/liveliness", timeout=120)
        except RuntimeError:
            tail = (self.tmp / "litellm.log").read_text(errors="replace")[-600:]
            self.__exit__()
            raise RuntimeError(f"LiteLLM did not start:\n{tail}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop(self.proc)
        shutil.rmtree(self.tmp, ignore_errors=True)


# --- the cluster: hub processes on one PostgreSQL and one Redis ----------------------------

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
        self.hub_env = {"TETHER_LOG_LEVEL": "warning", **(hub_env or {})}
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
