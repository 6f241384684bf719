"""`tether demo`: a hub, the built-in demo backend and a publisher for it, in one command."""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import urllib3

DEMO_MODEL = "demo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, procs: list[subprocess.Popen], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                raise SystemExit(f"tether demo: {proc.args[3]} exited with {proc.returncode}")
        try:
            if urllib3.request("GET", url, timeout=1, retries=False).status == 200:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"tether demo: {url} did not answer within {timeout:g} s")


def _published(hub: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = urllib3.request("GET", f"{hub}/api/v1/llms/{DEMO_MODEL}", timeout=1, retries=False)
        if r.status == 200 and r.json()["status"] == "active":
            return
        time.sleep(0.1)
    raise SystemExit("tether demo: the publisher did not come up")


def _spawn(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)


EXAMPLES = """
Tether demo is running: hub {hub}, one Llm named "{model}" (the built-in demo backend,
published by a real `tether publish`). Try it:

  curl -s {hub}/api/v1/llms/{model}/infer \\
    -d '{{"messages": [{{"role": "user", "content": "Hello"}}]}}'

  curl -sN {hub}/api/v1/llms/{model}/infer \\
    -d '{{"messages": [{{"role": "user", "content": "Hello"}}], "stream": true}}'

  curl -s {hub}/v1/chat/completions \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}'

Or from Python, with the official SDK (pip install openai):

  from openai import OpenAI
  client = OpenAI(base_url="{hub}/v1", api_key="unused")
  for chunk in client.chat.completions.create(
          model="{model}", messages=[{{"role": "user", "content": "Hello"}}], stream=True):
      print(chunk.choices[0].delta.content or "", end="", flush=True)

Press Ctrl-C to stop. Logs: {logs}
"""


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="tether-demo-"))
    hub = f"http://127.0.0.1:{args.port}"
    backend_port = _free_port()
    exe = [sys.executable, "-m", "tether.cli"]
    commands = [
        [*exe, "serve", "--port", str(args.port),
         "--database-url", f"sqlite:///{work / 'hub.db'}"],
        [*exe, "demo-backend", "--port", str(backend_port), "--model", "demo-model"],
    ]
    procs: list[subprocess.Popen] = []

    def stop(*_: object) -> None:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    try:
        for command in commands:
            procs.append(_spawn(command, work / f"{command[3]}.log"))
        _wait_ready(f"{hub}/healthz", procs)
        _wait_ready(f"http://127.0.0.1:{backend_port}/v1/models", procs)
        procs.append(_spawn(
            [*exe, "publish", "--hub", hub, "--name", DEMO_MODEL, "--model", "demo-model",
             "--backend", f"http://127.0.0.1:{backend_port}/v1",
             "--session-file", str(work / "session")],
            work / "publish.log"))
        _published(hub)
        print(EXAMPLES.format(hub=hub, model=DEMO_MODEL, logs=work), flush=True)
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
        print("tether demo: a process exited; stopping", file=sys.stderr)
        stop()
    except KeyboardInterrupt:
        stop()
    return 0
