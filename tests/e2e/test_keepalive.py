"""`http_keepalive_s` is gunicorn's idle keep-alive (not `keepalive_s`, the SSE comment
interval): a real `tether serve` closes an idle keep-alive connection after it, and a
gunicorn config file cannot set it behind the setting's back."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(60)

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: hub\r\n\r\n"


def _answered(sock: socket.socket) -> bytes:
    """One whole response read from `sock` (the hub sets Content-Length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, "the hub closed the connection before answering"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(4096)
        assert chunk, "the hub closed the connection mid-body"
        body += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return body


def _idle_connection(hub) -> socket.socket:
    """A keep-alive connection to `hub` that has just answered a request and is now idle."""
    sock = socket.create_connection(("127.0.0.1", hub.port), timeout=10)
    sock.sendall(REQUEST)
    _answered(sock)
    return sock


def test_an_idle_connection_is_closed_after_http_keepalive_s(hub_factory):
    hub = hub_factory(http_keepalive_s=1)
    with _idle_connection(hub) as sock:
        started = time.monotonic()
        sock.settimeout(4)  # well past 1 s: the close is due long before
        assert sock.recv(1) == b"", "the hub sent bytes on an idle connection"
        assert time.monotonic() - started < 4


def test_by_default_an_idle_connection_outlives_two_seconds(hub_factory):
    hub = hub_factory()  # http_keepalive_s = 5
    with _idle_connection(hub) as sock:
        # Nothing to read within 2 s (a close would make it readable) ...
        assert select.select([sock], [], [], 2.0)[0] == []
        # ... and the same connection still answers.
        sock.sendall(REQUEST)
        _answered(sock)


def test_a_gunicorn_config_that_sets_keepalive_is_refused(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "gunicorn.conf.py").write_text("keepalive = 75\n")
    done = subprocess.run(
        [sys.executable, "-m", "tether.cli", "serve", "--port", "1",
         "--database-url", f"sqlite:///{tmp_path / 'hub.db'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith("TETHER_")})
    assert done.returncode != 0
    assert "http_keepalive_s" in done.stderr and "sets keepalive" in done.stderr
