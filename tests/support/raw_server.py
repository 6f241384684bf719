"""A raw-socket HTTP server that answers exactly the bytes a test gives, for tests of the
lean HTTP client (tether/common/wire.py) and what is built on it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from tests.support.hub import wait_until


class Peer:
    """One accepted connection, as the server sees it."""

    def __init__(self, sock: socket.socket, index: int) -> None:
        self.sock = sock
        self.index = index
        self.buf = b""

    def request(self) -> bytes | None:
        """The next request's head and Content-Length body; None at EOF."""
        while b"\r\n\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.buf += data
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(self.buf) < length:
            self.buf += self.sock.recv(65536)
        self.buf = self.buf[length:]
        return head

    def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        for piece in pieces:
            self.sock.sendall(piece)
            if pause:
                time.sleep(pause)


class RawServer:
    """Runs `handler(peer)` for each connection, on its own thread; counts what it saw."""

    def __init__(self, handler: Callable[[Peer], None]) -> None:
        self.handler = handler
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.connections = 0
        self.served = 0  # connections whose handler returned
        self.requests: list[bytes] = []
        self._clients: list[tuple] = []  # each connection's client address, in accept order
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, client = self.listener.accept()
            except OSError:
                return
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._socks.append(sock)
            self._clients.append(client)
            peer = Peer(sock, self.connections)
            self.connections += 1
            threading.Thread(target=self._serve, args=(peer,), daemon=True).start()

    def _serve(self, peer: Peer) -> None:
        try:
            with contextlib.suppress(OSError):
                self.handler(peer)
        finally:
            self.served += 1

    def connections_before_now(self) -> int:
        """How many connections were made before this call, all of them counted: a probe
        connects, and the listener accepts in the order the connections were made."""
        with socket.create_connection(self.listener.getsockname()) as probe:
            me = probe.getsockname()
            wait_until(lambda: me in self._clients, interval=0.01)
            return self._clients.index(me)

    def next_request(self, peer: Peer) -> bytes | None:
        head = peer.request()
        if head is not None:
            self.requests.append(head)
        return head

    def close(self) -> None:
        self.listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.close()
