"""A TCP proxy that delays bytes and cuts every connection on demand (for fault tests)."""

from __future__ import annotations

import contextlib
import queue
import random
import socket
import threading
import time


class ChaosProxy:
    def __init__(self, target_port: int, latency_s: tuple[float, float] = (0.0, 0.0),
                 port: int = 0) -> None:
        self.target = ("127.0.0.1", target_port)
        self.latency_s = latency_s
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))  # a port of its own, or one a closed proxy had
        self.listener.listen(256)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cuts = 0
        # Set: bytes are read and dropped, both ways, and no connection is closed: a
        # network that went silent without a reset (a cut cable, a dropped route).
        self.blackhole = threading.Event()
        # Bytes the blackhole dropped: a test waits for its write to be dropped, not for
        # time (the proxy's thread may read the bytes only after the blackhole is lifted).
        self.dropped = 0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self._stopped.is_set():  # accepted while closing: the proxy is gone
                client.close()
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)
            with self._lock:
                self._conns.update((client, upstream))
            if self._stopped.is_set():
                # close() ran while this one was being connected: its cut() may have missed
                # it, and a live connection through a closed proxy would outlast the outage.
                for sock in (client, upstream):
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                    sock.close()
                return
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if self.blackhole.is_set():
                    with self._lock:
                        self.dropped += len(data)
                    continue
                low, high = self.latency_s
                if high:
                    time.sleep(random.uniform(low, high))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)

    def cut(self) -> None:
        """Reset every connection through the proxy, as a flaky network would."""
        with self._lock:
            conns = list(self._conns)
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.cuts += 1

    def close(self) -> None:
        self._stopped.set()
        # shutdown() wakes the thread blocked in accept(); close() alone would leave that
        # accept() running, and the next connection would still be served.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.cut()


class Listener:
    """A local TCP listener whose every connection is served (`_serve`) in a thread of its
    own; the sockets kept in `_socks` are shut with it. A subclass sets its own fields
    before calling this __init__, which starts accepting."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._socks.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for sock in self._socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class LateStream(Listener):
    """A TCP proxy that hands back what answers a request starting with `prefix` (the task
    stream) `delay_s` late, in order, and passes everything else at once: a slow link, or a
    hub too busy to write a frame promptly, for the stream alone."""

    def __init__(self, target_port: int, prefix: bytes, delay_s: float) -> None:
        self.target = ("127.0.0.1", target_port)
        self.prefix = prefix
        self.delay_s = delay_s
        super().__init__()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        with contextlib.suppress(OSError):
            first = client.recv(65536)
            upstream = socket.create_connection(self.target)
            self._socks.append(upstream)
            upstream.sendall(first)
            late = first.startswith(self.prefix)
            threading.Thread(target=self._back, args=(upstream, client, late),
                             daemon=True).start()
            while data := client.recv(65536):
                upstream.sendall(data)
        for sock in (client, upstream):  # the publisher went: so does its side at the hub
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def _back(self, upstream: socket.socket, client: socket.socket, late: bool) -> None:
        due: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def send() -> None:
            while True:
                at, data = due.get()
                if not data:
                    break
                time.sleep(max(0.0, at - time.monotonic()))
                with contextlib.suppress(OSError):
                    client.sendall(data)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_RDWR)

        threading.Thread(target=send, daemon=True).start()
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                due.put((time.monotonic() + (self.delay_s if late else 0.0), data))
        due.put((0.0, b""))
