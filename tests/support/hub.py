"""A real `tether serve` process on a free port, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tether.store.models import iso, utcnow

# Fast lifecycle settings so tests see timeouts and sweeps in well under a second or two.
FAST = {
    "keepalive_s": 1,
    "publisher_grace_s": 0,
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hub:
    # Every hub started and not yet stopped, so a test that fails before its own stop()
    # leaves no process behind (tests/conftest.py stops these after each test).
    live: set[Hub] = set()

    def __init__(self, tmp: Path, env: dict[str, str] | None = None, **settings: Any) -> None:
        self.tmp = tmp
        self.extra_env = env or {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = {**FAST, **settings}
        self.settings.setdefault("database_url", f"sqlite:///{tmp / 'hub.db'}")
        self.log_path = tmp / f"hub-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
        for key, value in self.settings.items():
            env[f"TETHER_{key.upper()}"] = str(value)
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 20) -> Hub:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tether.cli", "serve", "--port", str(self.port)],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.tmp,
            )
        Hub.live.add(self)
        try:
            return self._wait_healthy(timeout)
        except BaseException:
            self.stop(signal.SIGKILL)  # a hub that did not come up must not outlive the test
            raise

    def _wait_healthy(self, timeout: float) -> Hub:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tether serve exited {self.proc.returncode}:\n{self.logs()}")
            try:
                if self.get("/healthz", timeout=1).status_code == 200:
                    return self
            # The master binds the port before its worker accepts: under load the first
            # probe can be refused or time out; only the overall deadline is a failure.
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"tether serve did not become healthy:\n{self.logs()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        Hub.live.discard(self)
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def restart(self) -> Hub:
        self.stop()
        return self.start()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # --- small helpers -------------------------------------------------------------------

    # One-shot requests close their connection: an idle keep-alive would hold up the hub's
    # SIGTERM for gunicorn's keepalive seconds at every teardown.
    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 10),
                            headers={"Connection": "close", **kw.pop("headers", {})}, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, json=json, timeout=kw.pop("timeout", 30),
                             headers={"Connection": "close", **kw.pop("headers", {})}, **kw)

    def llm(self, name: str) -> dict:
        r = self.get(f"/api/v1/llms/{name}")
        assert r.status_code == 200, r.text
        return r.json()

    def waiting(self, name: str) -> int:
        """Requests the hub holds for `name` (in flight or queued), as its LlmActor last
        reported them on the status board: that it has taken a request, not time, says a
        test may go on."""
        row = next(r for r in self.get("/status/state").json()["llms"] if r["name"] == name)
        return row["inFlight"] + row["queued"]

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics; a series never touched reads as 0."""
        r = self.get("/metrics")
        assert r.status_code == 200, r.text
        for family in text_string_to_metric_families(r.text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
        return 0.0

    def draining(self) -> bool:
        """Whether a drain began: an infer is 503 shutting_down (an unknown name is 404
        until then, and never becomes a task that would hold the drain up)."""
        r = self.infer("not-published", timeout=5)
        return r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"

    def infer(self, name: str, content: str = "hi", **kw: Any) -> requests.Response:
        body = {"messages": [{"role": "user", "content": content}], **kw.pop("body", {})}
        return self.post(f"/api/v1/llms/{name}/infer", body, **kw)


def wait_past(stamp: str) -> str:
    """Wait until the clock reads later than a wire timestamp (millisecond resolution), so
    that one the hub writes from now on is later than `stamp`; returns `stamp`."""
    wait_until(lambda: iso(utcnow()) > stamp, interval=0.001)
    return stamp


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
