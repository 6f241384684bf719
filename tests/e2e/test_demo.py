"""`tether demo` (what `make run` starts) shows a working relay in one command."""

from __future__ import annotations

import signal
import subprocess
import time

import openai
import requests

from tests.support.hub import free_port
from tests.support.procs import TETHER


def test_demo_starts_a_working_relay_and_stops_cleanly():
    port = free_port()
    proc = subprocess.Popen([*TETHER, "demo", "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        printed = []
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "tether demo exited:\n" + "".join(printed)
            printed.append(line)
            if "Press Ctrl-C" in line:
                break
        text = "".join(printed)
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
