"""Two publishers on one machine (issue 11.1): the session file is locked, its default name
follows what is published, and the hub notices a session whose stream keeps being replaced."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.hub import wait_until
from tests.support.procs import TETHER, Publish, publish_once, stop, wait_status


def _flags_publisher(hub, backend, name: str, home: Path, log: Path) -> subprocess.Popen:
    """`tether publish` in its flags form (no --session-file), with HOME in tmp."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [*TETHER, "publish", "--hub", hub.url, "--name", name, "--model", "demo-model",
             "--backend", backend.base_url],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(home)})


def test_a_second_publisher_on_a_held_session_file_exits_2_naming_it(
        hub, backend_factory, tmp_path):
    backend = backend_factory()
    spec = {"name": "llama", "model": "demo-model", "base_url": backend.base_url}
    first = Publish(tmp_path, hub.url, [spec]).start()
    try:
        wait_status(hub, "llama", "active")
        session = first.session_file.read_text().strip()
        done = publish_once("--config", str(first.config))
        assert done.returncode == 2
        assert str(first.session_file) in done.stderr and "in use" in done.stderr
        # The first one keeps its stream: nothing took it away.
        assert hub.infer("llama").status_code == 200
        assert hub.llm("llama")["providerSessionId"] == session
        assert "replaced" not in hub.logs()
    finally:
        first.stop()


def test_the_default_session_file_follows_what_is_published(hub, backend_factory, tmp_path):
    backend = backend_factory()
    home = tmp_path / "home"
    procs = [_flags_publisher(hub, backend, name, home, tmp_path / f"{name}.log")
             for name in ("alpha", "beta")]
    try:
        a = wait_status(hub, "alpha", "active")
        b = wait_status(hub, "beta", "active")
        assert a["providerSessionId"] != b["providerSessionId"]
        files = sorted((home / ".local/state/tether").glob("publisher-*.session"))
        assert len(files) == 2
        # The same flags again: the same file, held, so a clear refusal.
        again = _flags_publisher(hub, backend, "alpha", home, tmp_path / "again.log")
        assert again.wait(30) == 2
        assert "in use by another running tether publish" in (tmp_path / "again.log").read_text()
        assert hub.infer("alpha").status_code == 200 and hub.infer("beta").status_code == 200
    finally:
        for proc in procs:
            stop(proc)


def test_the_hub_warns_when_a_session_stream_keeps_being_replaced(hub, publisher):
    publisher.register("llama")
    for _ in range(5):
        publisher.open()
    wait_until(lambda: "replaced" in hub.logs() and publisher.session_id in hub.logs())
