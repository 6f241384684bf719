"""`tether demo`: a hub, the built-in demo backend and a publisher for it, in one command."""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import urllib3

from tether.common.orphans import die_with_parent

DEMO_MODEL = "demo"
LOG_TAIL_LINES = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DemoFailed(Exception):
    """The demo cannot go on; `child` names the process at fault, if one is."""

    def __init__(self, message: str, child: Child | None = None) -> None:
        super().__init__(message)
        self.child = child


class Child:
    """One process the demo started, with the log file it writes to."""

    def __init__(self, name: str, command: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                         preexec_fn=_die_with_parent)

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError as exc:
            return f"(cannot read {self.log}: {exc})"
        return "\n".join(text.rstrip().splitlines()[-lines:]) or "(the log is empty)"


def _die_with_parent() -> None:
    """In the child, before exec: a demo killed outright (SIGKILL) must not leave its
    children running."""
    die_with_parent(signal.SIGTERM)


def _check_alive(children: list[Child]) -> None:
    for child in children:
        if child.exited():
            raise DemoFailed(f"{child.name} exited with {child.proc.returncode}", child)


def _wait_ready(url: str, children: list[Child], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(children)
        try:
            if urllib3.request("GET", url, timeout=1, retries=False).status == 200:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.1)
    raise DemoFailed(f"{url} did not answer within {timeout:g} s")


def _published(hub: str, children: list[Child], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(children)
        try:
            # Ready means servable: the row turns active at register, but requests get 503
            # until the publisher's stream is open too, which the status board shows.
            r = urllib3.request("GET", f"{hub}/status/state", timeout=1, retries=False)
            rows = r.json()["llms"] if r.status == 200 else []
            if any(row["name"] == DEMO_MODEL and row["status"] == "active"
                   and row["streamOpen"] for row in rows):
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.1)
    raise DemoFailed("the publisher did not come up", children[-1])


def _stop_all(children: list[Child]) -> None:
    """Stop every child, the last started first; kill what does not stop in 10 s."""
    for child in reversed(children):
        if not child.exited():
            with contextlib.suppress(OSError):
                child.proc.terminate()
    deadline = time.monotonic() + 10
    for child in children:
        try:
            child.proc.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            child.proc.kill()
            child.proc.wait()


def _report(failure: DemoFailed, work: Path) -> None:
    print(f"tether demo: {failure}", file=sys.stderr)
    if failure.child is not None:
        print(f"--- last lines of {failure.child.log} ---\n{failure.child.tail()}\n---",
              file=sys.stderr)
    print(f"tether demo: every log is in {work}", file=sys.stderr, flush=True)


class _Terminated(Exception):
    """SIGTERM, raised in the main thread so that the cleanup below runs."""


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

Apps that speak Ollama's API use the hub as their Ollama (OLLAMA_HOST={hub}):

  curl -s {hub}/api/chat \\
    -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello"}}]}}'

  from ollama import Client  # pip install ollama
  client = Client(host="{hub}")
  for part in client.chat(model="{model}", messages=[{{"role": "user", "content": "Hello"}}],
                          stream=True):
      print(part.message.content, end="", flush=True)

Press Ctrl-C to stop. Logs: {logs}
"""


def run(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="tether-demo-"))
    hub = f"http://127.0.0.1:{args.port}"
    backend_port = _free_port()
    exe = [sys.executable, "-m", "tether.cli"]
    children: list[Child] = []

    def terminated(*_: object) -> None:
        raise _Terminated

    signal.signal(signal.SIGTERM, terminated)
    try:
        children.append(Child("serve", [*exe, "serve", "--port", str(args.port),
                                        "--database-url", f"sqlite:///{work / 'hub.db'}"],
                              work / "serve.log"))
        children.append(Child("demo-backend", [
            *exe, "demo-backend", "--port", str(backend_port), "--model", "demo-model",
            "--pidfile", str(work / "demo-backend.pid")], work / "demo-backend.log"))
        _wait_ready(f"{hub}/healthz", children)
        _wait_ready(f"http://127.0.0.1:{backend_port}/v1/models", children)
        children.append(Child("publish", [
            *exe, "publish", "--hub", hub, "--name", DEMO_MODEL, "--model", "demo-model",
            "--backend", f"http://127.0.0.1:{backend_port}/v1",
            "--session-file", str(work / "session")], work / "publish.log"))
        _published(hub, children)
        print(EXAMPLES.format(hub=hub, model=DEMO_MODEL, logs=work), flush=True)
        while True:
            _check_alive(children)
            time.sleep(0.5)
    except DemoFailed as failure:
        _report(failure, work)
        return 1
    except (KeyboardInterrupt, _Terminated):
        return 0
    finally:
        # Every exit path, an unexpected error included, stops every child.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _stop_all(children)
