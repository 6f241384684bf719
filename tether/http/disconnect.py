"""Noticing a peer that went away, from the read side, within a second.

gunicorn only learns a client is gone when a write fails; with 15 s keepalives that is far
too late. While a request waits for its answer, an event-loop watcher waits for gunicorn's
socket to turn readable: a peer that closes makes it readable at once, and a peek then
reads b"". The watcher costs about a microsecond a request; a greenlet parked in recv for
the same purpose cost twenty (spawned, then killed, on every request: issue 13). A greenlet
is spawned only once the socket turned readable, which is rare: a close, or bytes the client
pipelined behind its request.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from tether.common.runtime import gevent_active

READ = 1  # libev's EV_READ, as gevent's loop.io() takes it


def _not_watching() -> None:
    """The stop of a watch that had nothing to watch (see `watch`)."""


class _Watch:
    def __init__(self, sock: Any, on_gone: Callable[[], None]) -> None:
        import gevent

        self._gevent = gevent
        self._sock = sock
        self._on_gone = on_gone
        self._io = gevent.get_hub().loop.io(sock.fileno(), READ)
        self._look_greenlet: Any = None
        self._stopped = False
        self._io.start(self._readable)

    def _readable(self) -> None:
        # In the event loop itself, which must not block: the look runs in a greenlet.
        self._io.stop()
        self._look_greenlet = self._gevent.spawn(self._look)

    def _look(self) -> None:
        try:
            pending = self._sock.recv(1, socket.MSG_PEEK)
        except OSError:
            pending = b""
        if self._stopped:
            return
        if pending:  # pipelined bytes, not a close: look again in a second
            self._gevent.sleep(1.0)
            if not self._stopped:
                self._io.start(self._readable)
            return
        self._on_gone()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._io.stop()
        self._io.close()
        look = self._look_greenlet
        if look is not None and look is not self._gevent.getcurrent():
            # Block until it is gone: gunicorn reads this socket next (keep-alive), and two
            # greenlets must never wait on one socket.
            look.kill(block=True, timeout=1)


def watch(environ: dict[str, Any], on_gone: Callable[[], None]) -> Callable[[], None]:
    """Call `on_gone()` once if the peer disconnects; returns a function that stops watching.

    Outside gunicorn's gevent worker (falcon.testing, wsgiref) there is nothing to watch.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None or not gevent_active():
        return _not_watching
    return _Watch(sock, on_gone).stop
