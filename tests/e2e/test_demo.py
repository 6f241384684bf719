"""`tether demo` (what `make run` starts) shows a working relay in one command."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import openai
import pytest
import requests

from tests.support.hub import free_port
from tests.support.procs import TETHER, demo_ready


def test_demo_starts_a_working_relay_and_stops_cleanly():
    port = free_port()
    proc = subprocess.Popen([*TETHER, "demo", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        text = demo_ready(proc)
        assert f"http://127.0.0.1:{port}/v1" in text and "from openai import OpenAI" in text
        hub = f"http://127.0.0.1:{port}"
        r = requests.post(f"{hub}/api/v1/llms/demo/infer", timeout=30,
                          json={"messages": [{"role": "user", "content": "Hello"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        client = openai.OpenAI(base_url=f"{hub}/v1", api_key="unused", max_retries=0)
        chunks = list(client.chat.completions.create(
            model="demo", messages=[{"role": "user", "content": "Hello"}], stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    logs = re.search(r"Logs: (\S+)", text)
    assert logs, text
    pid = int((Path(logs.group(1)) / "demo-backend.pid").read_text())
    with pytest.raises(ProcessLookupError):  # stopped with the demo
        os.kill(pid, 0)


def test_a_failed_demo_names_the_cause_and_stops_every_child(tmp_path):
    """The hub cannot bind its port: the demo says why with the hub's own log lines and
    the log folder, exits non-zero, and leaves no demo-backend behind."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # gunicorn retries the bind for about 5 s: the backend is up long before that.
        done = subprocess.run([*TETHER, "demo", "--port", str(port)], capture_output=True,
                              text=True, timeout=50, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "serve exited with" in done.stderr
    assert "Connection in use" in done.stderr  # the hub's own complaint, from its log
    folder = re.search(r"every log is in (\S+)", done.stderr)
    assert folder, done.stderr
    pid = int((Path(folder.group(1)) / "demo-backend.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
