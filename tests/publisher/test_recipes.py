"""Wake and sleep recipes against real local listeners."""

from __future__ import annotations

import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tether.publisher import recipes
from tether.publisher.config import Recipe


def test_wol_sends_the_magic_packet_byte_for_byte():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.settimeout(5)
        port = listener.getsockname()[1]
        recipes.start(Recipe(wol={"mac": "01:23:45:67:89:AB", "broadcast": "127.0.0.1",
                                  "port": port}), timeout=5)
        packet, _ = listener.recvfrom(1024)
    assert packet == b"\xff" * 6 + bytes([0x01, 0x23, 0x45, 0x67, 0x89, 0xAB]) * 16
    assert len(packet) == 102


def test_http_recipe_calls_the_listener_with_its_method_and_body():
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self):  # noqa: N802
            seen.append((self.path, json.loads(self.rfile.read(
                int(self.headers["Content-Length"])))))
            self.send_response(200 if self.path == "/ok" else 500)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        recipes.run(Recipe(http={"method": "PUT", "url": f"{url}/ok", "body": {"on": 1}}), 5)
        assert seen == [("/ok", {"on": 1})]
        with pytest.raises(recipes.RecipeFailed, match="500"):
            recipes.run(Recipe(http={"method": "PUT", "url": f"{url}/bad", "body": {}}), 5)
    finally:
        server.shutdown()
    with pytest.raises(recipes.RecipeFailed, match="unreachable"):
        recipes.run(Recipe(http={"method": "POST", "url": url}), 2)


def test_command_recipe_reports_a_failure_with_its_stderr():
    recipes.run(Recipe(command=(sys.executable, "-c", "pass")), 10)
    with pytest.raises(recipes.RecipeFailed) as err:
        recipes.run(Recipe(command=(sys.executable, "-c",
                                    "import sys; sys.exit('no such unit')")), 10)
    assert "exited 1" in str(err.value) and "no such unit" in str(err.value)
    with pytest.raises(recipes.RecipeFailed, match="cannot run"):
        recipes.run(Recipe(command=("/no/such/binary",)), 10)
    with pytest.raises(recipes.RecipeFailed, match="did not finish"):
        recipes.run(Recipe(command=(sys.executable, "-c", "import time; time.sleep(5)")), 0.3)
