"""Noticing a peer that went away, from the read side, within a second.

gunicorn only learns a client is gone when a write fails; with 15 s keepalives that is far
too late. A greenlet parked in recv(1, MSG_PEEK) on gunicorn's socket wakes with b"" the
moment the peer closes.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from tether.runtime import _gevent_active


def _noop() -> None:
    return None


def watch(environ: dict[str, Any], on_gone: Callable[[], None]) -> Callable[[], None]:
    """Call `on_gone()` once if the peer disconnects; returns a function that stops watching.

    Outside gunicorn's gevent worker (falcon.testing, wsgiref) there is nothing to watch.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None or not _gevent_active():
        return _noop
    import gevent

    def peek() -> None:
        try:
            while True:
                if not sock.recv(1, socket.MSG_PEEK):
                    break
                gevent.sleep(1.0)  # pipelined bytes, not a close: look again later
        except OSError:
            pass
        on_gone()

    greenlet = gevent.spawn(peek)

    def stop() -> None:
        # Block until it is gone: gunicorn reads this socket next (keep-alive), and two
        # greenlets must never wait on one socket.
        greenlet.kill(block=True, timeout=1)

    return stop
