"""The processes a single-hub benchmark runs against: demo backend, hub, publisher (and
LiteLLM); for pools, a hub and several KV-cache backends each with its publisher; the bare
server that is the floor of a session's cost."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import urllib3

from bench.processes import TETHER, Processes, free_port, stop, wait_http, worker_pids


class Stack(Processes):
    """Backend + hub + publisher, each its own process, torn down in reverse."""

    def __init__(self, hub_env: dict[str, str] | None = None, publisher: bool = True,
                 max_concurrency: int = 64, auth: bool = False,
                 publisher_flags: tuple[str, ...] = ()) -> None:
        super().__init__("tether-bench-")
        self.backend_port, self.hub_port = free_port(), free_port()
        self.backend = f"http://127.0.0.1:{self.backend_port}"
        self.hub = f"http://127.0.0.1:{self.hub_port}"
        # Benches open sessions by the thousand: no register rate (a limit under test elsewhere).
        self.hub_env = {"TETHER_LOG_LEVEL": "warning", "TETHER_REGISTER_RATE_PER_MIN": "0",
                        **(hub_env or {})}
        self.with_publisher = publisher
        self.max_concurrency = max_concurrency
        self.publisher_flags = publisher_flags  # an arm's own (--no-result-channel)
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
                 *key_flags, *self.publisher_flags], "publisher",
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
