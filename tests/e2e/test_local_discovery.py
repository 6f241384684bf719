"""`tether publish --hub URL` with no backend finds the servers running on this machine
(docs/protocol.md, Discovery): a fake server on Ollama's port, a real hub, a real publisher.

TETHER_LOCAL_PORTS (tests only, docs/protocol.md) keeps the probe to the ports a test
controls: another test's hub may answer on 8080 on this machine."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.support.hub import free_port
from tests.support.listing_backend import ListingBackend
from tests.support.procs import TETHER, _spawn, publish_once, stop, wait_status
from tether.publisher import main

pytestmark = pytest.mark.timeout(90)

OLLAMA_PORT = 11434


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def ollama() -> Iterator[ListingBackend]:
    """A fake server on Ollama's own port (or a free one, if this machine runs a real
    Ollama)."""
    port = OLLAMA_PORT if port_free(OLLAMA_PORT) else free_port()
    backend = ListingBackend(["llama3.1:8b"], ollama=True, port=port).start()
    yield backend
    backend.stop()


def test_a_local_server_is_found_and_its_models_published(hub, ollama, tmp_path):
    log = tmp_path / "publish.log"
    proc = _spawn([*TETHER, "publish", "--hub", hub.url, "--session-file",
                   str(tmp_path / "s.session")], log,
                  env={"TETHER_LOCAL_PORTS": f"{free_port()},{ollama.port}"})
    try:
        wait_status(hub, "llama3.1:8b", "active", timeout=30)
        assert f"found http://127.0.0.1:{ollama.port}/v1" in log.read_text()
        assert hub.llm("llama3.1:8b")["description"] == "llama 8.0B Q4_K_M"
    finally:
        stop(proc)


@pytest.mark.parametrize("via", ["its own URL", "another address"])
def test_none_found_exits_2_naming_the_ports_tried(hub, via):
    closed = free_port()
    # The hub answers /v1/models too, but is never taken for a backend: not at the
    # address --hub names, nor when --hub spells it another way (its /healthz says).
    url = hub.url if via == "its own URL" else f"http://192.0.2.1:{hub.port}"
    done = subprocess.run([*TETHER, "publish", "--hub", url], capture_output=True,
                          text=True, timeout=30,
                          env={**os.environ,
                               "TETHER_LOCAL_PORTS": f"{hub.port},{closed}"})
    assert done.returncode == 2, done.stderr
    assert f"ports {hub.port} (a server), {closed} (a server)" in done.stderr
    assert "no local server" in done.stderr


def test_the_default_ports_are_the_usual_local_servers(monkeypatch):
    monkeypatch.delenv("TETHER_LOCAL_PORTS", raising=False)
    assert main.local_ports() == [(11434, "Ollama"), (1234, "LM Studio"),
                                  (8080, "llama.cpp's server"), (8000, "vLLM")]


def test_name_and_model_without_a_backend_are_refused():
    done = publish_once("--hub", "http://127.0.0.1:1", "--name", "x", "--model", "y")
    assert done.returncode == 2 and "--name and --model need --backend" in done.stderr
    done = publish_once("--hub", "http://127.0.0.1:1", "--backend", "http://127.0.0.1:1/v1",
                        "--name", "x")
    assert done.returncode == 2 and "together, or neither" in done.stderr
