"""Real demo-backend and `tether publish` processes for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from tests.support.hub import free_port, wait_until

TETHER = [sys.executable, "-m", "tether.cli"]


def publish_once(*args: str) -> subprocess.CompletedProcess:
    """`tether publish ARGS` run to its end (a start it refuses), its output captured."""
    return subprocess.run([*TETHER, "publish", *args], capture_output=True, text=True,
                          timeout=30)


def publish_config(tmp: Path, text: str) -> tuple[Path, subprocess.CompletedProcess]:
    """`tether publish --config FILE` run to its end, FILE holding `text`: (FILE, the run)."""
    conf = tmp / "publisher.toml"
    conf.write_text(text)
    return conf, publish_once("--config", str(conf))


def _spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class DemoBackend:
    """The built-in demo backend on a free port (`tether demo-backend`)."""

    def __init__(self, tmp: Path, port: int | None = None, api_key: str | None = None) -> None:
        self.port = port or free_port()
        self.api_key = api_key
        self.tmp = tmp
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.url}/v1"
        self.pidfile = tmp / f"backend-{self.port}.pid"
        self.log = tmp / f"backend-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        key = ["--api-key", self.api_key] if self.api_key else []
        return [*TETHER, "demo-backend", "--port", str(self.port), "--pidfile",
                str(self.pidfile), *key]

    def kill_command(self) -> list[str]:
        """A shell-free command that stops whichever process wrote the pidfile."""
        code = (f"import os, signal; os.kill(int(open({str(self.pidfile)!r}).read()), "
                "signal.SIGTERM)")
        return [sys.executable, "-c", code]

    def start(self) -> DemoBackend:
        self.proc = _spawn(self.command(), self.log)
        wait_until(self.up, timeout=15)
        return self

    def up(self) -> bool:
        try:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            r = requests.get(f"{self.base_url}/models", timeout=1, headers=headers)
            return r.status_code == 200
        except (requests.ConnectionError, requests.Timeout):  # still starting, or loaded
            return False

    def stats(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/_demo/stats", timeout=5).json()

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        pid = self.pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if self.proc is not None:
            self.proc.wait(5)
        wait_until(lambda: not self.up(), timeout=5)


def demo_ready(proc: subprocess.Popen, timeout: float = 45) -> str:
    """What `tether demo` (started with stdout piped, as text) printed up to its ready line;
    fails with that output if it exits or does not get there in time."""
    printed: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        assert line, "tether demo exited:\n" + "".join(printed)
        printed.append(line)
        if "Press Ctrl-C" in line:
            return "".join(printed)
    raise AssertionError("tether demo did not come up:\n" + "".join(printed))


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def publisher_toml(hub: str | list[str], session_file: Path, backends: list[dict[str, Any]],
                   **top: Any) -> str:
    lines = [f"hub = {toml_value(hub)}", f"session_file = {toml_value(str(session_file))}"]
    lines += [f"{key} = {toml_value(value)}" for key, value in top.items()] + [""]
    for backend in backends:
        lines.append("[[backends]]")
        for key, value in backend.items():
            if key not in ("wake", "sleep"):
                lines.append(f"{key} = {toml_value(value)}")
        for key in ("wake", "sleep"):
            if key in backend:
                lines.append(f"[backends.{key}]")
                for form, spec in backend[key].items():
                    lines.append(f"{form} = {toml_value(spec)}")
        lines.append("")
    return "\n".join(lines)


class Publish:
    """A real `tether publish --config FILE` process."""

    def __init__(self, tmp: Path, hub_url: str | list[str], backends: list[dict[str, Any]],
                 **top: Any) -> None:
        self.config = tmp / f"publisher-{free_port()}.toml"
        self.session_file = tmp / f"{self.config.stem}.session"
        self.config.write_text(publisher_toml(hub_url, self.session_file, backends, **top))
        self.log = tmp / f"{self.config.stem}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Publish:
        self.proc = _spawn([*TETHER, "publish", "--config", str(self.config)], self.log)
        return self

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def wait_status(hub: Any, name: str, status: str, timeout: float = 15) -> dict:
    """The row has `status`; for a live one, its publisher's stream is open too (the hub
    serves a member only once its stream is open: a register alone is not enough)."""
    def check() -> dict | None:
        r = hub.get(f"/api/v1/llms/{name}")
        if r.status_code != 200 or r.json()["status"] != status:
            return None
        if status != "inactive" and not stream_open(hub, name):
            return None
        return r.json()

    return wait_until(check, timeout=timeout)


def stream_open(hub: Any, name: str) -> bool:
    r = hub.get("/status/state")
    if r.status_code != 200:
        return True  # auth on without a key: the row's status has to do
    return any(row["name"] == name and row["streamOpen"] for row in r.json()["llms"])


def port_closed(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) != 0
