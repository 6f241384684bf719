"""Wake and sleep recipes against real local listeners."""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from tests.support.hub import wait_until
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


def test_a_failed_command_says_how_it_exited_and_leaves_its_output_to_the_log(caplog):
    recipes.run(Recipe(command=(sys.executable, "-c", "pass")), 10)
    with caplog.at_level(logging.INFO, "tether.publisher.recipe"), \
            pytest.raises(recipes.RecipeFailed) as err:
        recipes.run(Recipe(command=(sys.executable, "-c", "import sys; sys.exit('no such unit')")),
                    10, "sleep recipe", "llama")
    # What the hub's clients may read: how it ended, never its output (paths, tracebacks).
    assert str(err.value) == "the sleep recipe exited 1"
    wait_until(lambda: "sleep recipe of llama: no such unit" in caplog.text)
    with pytest.raises(recipes.RecipeFailed, match="^the wake recipe could not be started$"):
        recipes.run(Recipe(command=("/no/such/binary",)), 10, "wake recipe")
    assert "/no/such/binary" in caplog.text  # the reason is in the log
    with pytest.raises(recipes.RecipeFailed, match="did not finish"):
        recipes.run(Recipe(command=(sys.executable, "-c", "import time; time.sleep(5)")), 0.3)


# Writes far more than a pipe holds (64 KiB) on both streams, one line longer than the log
# keeps, then says it got through and keeps running, like a backend in the foreground.
CHATTY = """
import sys, time, pathlib
sys.stdout.write("x" * 5000 + "\\n")
for i in range(3000):
    print(f"stdout line {i} " + "-" * 80, flush=True)
    print(f"stderr line {i} " + "-" * 80, file=sys.stderr, flush=True)
pathlib.Path(sys.argv[1]).write_text("through")
time.sleep(60)
"""


def test_a_command_that_keeps_running_is_never_blocked_by_its_output(tmp_path, caplog):
    marker = tmp_path / "through"
    with caplog.at_level(logging.INFO, "tether.publisher.recipe"):
        proc = recipes.start(Recipe(command=(sys.executable, "-c", CHATTY, str(marker))), 10,
                             "wake recipe", "llama")
        assert proc is not None
        try:
            wait_until(marker.exists, timeout=20)  # it never blocked in write()
        finally:
            proc.kill()
            proc.wait()
        wait_until(lambda: "lines of output not logged" in caplog.text
                   or len(_lines_of(caplog)) >= recipes.LINES_PER_WINDOW)
    lines = _lines_of(caplog)
    # Line by line, both streams, bounded: a long line is cut, a flood is counted, not logged.
    assert lines[0] == "wake recipe of llama: " + "x" * recipes.LINE_MAX
    assert any("stdout line 0 " in line for line in lines)
    assert any("stderr line 0 " in line for line in lines)
    assert len(lines) <= recipes.LINES_PER_WINDOW


def _lines_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "tether.publisher.recipe" and r.levelno == logging.INFO]
