"""The package, installed as a user installs it (no test extra) into a fresh virtualenv, runs.

A runtime dependency that only the test extra happens to bring in (gunicorn's gevent worker
imports `packaging` without declaring it) passes every other test and breaks `make run` on a
fresh clone; this test builds one venv per session and runs `tether demo` from it, which
starts `tether serve`, `tether demo-backend` and `tether publish`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.support.hub import free_port
from tests.support.procs import demo_ready

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def user_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("user-venv")
    # No pip inside the venv (ensurepip costs seconds): this pip installs into it, using its
    # usual wheel cache, exactly what `pip install .` resolves for a user.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # From a copy: pip builds in the source tree, and a stale build/ there could hide a
    # deleted module or leak into the next build.
    source = tmp_path_factory.mktemp("source") / "tether"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
        "results"))
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--no-compile", str(source)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"pip install failed:\n{done.stdout}\n{done.stderr}"
    return venv


@pytest.mark.timeout(660)  # a cold pip cache downloads the dependencies once
def test_a_plain_install_runs_the_demo(user_venv: Path, tmp_path: Path):
    python = user_venv / "bin" / "python"
    probe = subprocess.run([str(python), "-c", "import pytest"], capture_output=True)
    assert probe.returncode != 0, "the venv has the test extra: it would hide a missing dep"

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TETHER_", "PYTHON"))}
    proc = subprocess.Popen([str(user_venv / "bin" / "tether"), "demo", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path, env=env)
    try:
        demo_ready(proc)
        hub = f"http://127.0.0.1:{port}"
        assert requests.get(f"{hub}/healthz", timeout=5).status_code == 200
        r = requests.post(f"{hub}/api/v1/llms/demo/infer", timeout=30,
                          json={"messages": [{"role": "user", "content": "Hello"}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    assert code == 0
