"""The hub's gunicorn worker: gunicorn's gevent worker, writing a response in fewer `send`s.

gunicorn writes a response's headers and its body with two `send` calls. On loopback each
call delivers its bytes to the reader and wakes it, and under load the first of the two was
the hub's largest single CPU cost (docs/performance.md, issue 13). Here the headers wait
for the first body write and go out with it in one call, and a chunked body's terminator
joins the headers when there is no body at all. Bytes on the wire are unchanged.
"""

from __future__ import annotations

from typing import Any

from gunicorn.http import wsgi
from gunicorn.workers.ggevent import GeventWorker

# A body larger than this is sent after its headers rather than copied onto them.
JOIN_LIMIT = 64 * 1024


class OneSendResponse(wsgi.Response):
    """gunicorn's HTTP/1 response, its header block held back until the first body bytes."""

    headers_sent: bool  # gunicorn's: True once the header block is written (here: held)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: bytes | None = None
        self._hold = True

    def send_headers(self) -> None:
        if self.headers_sent:
            return
        if not self._hold:
            super().send_headers()
            return
        tosend = self.default_headers()
        tosend.extend(f"{k}: {v}\r\n" for k, v in self.headers)
        self._held = ("".join(tosend) + "\r\n").encode("latin-1")
        self.headers_sent = True

    def _send(self, data: bytes) -> None:
        # One send() is the common case; gevent's sendall() would first ask the kernel for
        # the socket's buffer size (a getsockopt per call).
        sent = self.sock.send(data)
        if sent < len(data):
            self.sock.sendall(memoryview(data)[sent:])

    def _take_held(self) -> bytes:
        held, self._held = self._held, None
        return held or b""

    def _emit_body(self, data: bytes) -> None:
        held = self._take_held()
        if held and len(data) > JOIN_LIMIT:
            self._send(held)
            held = b""
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        self._send(held + data)

    def write(self, arg: bytes) -> None:
        super().write(arg)
        # No body bytes went out (a HEAD, a 204, an empty chunk): the headers still must.
        held = self._take_held()
        if held:
            self._send(held)

    def close(self) -> None:
        if not self.headers_sent:
            self.send_headers()
        held = self._take_held()
        if self.chunked:
            self._send(held + b"0\r\n\r\n")
        elif held:
            self._send(held)

    def sendfile(self, respiter: Any) -> bool:
        # gunicorn writes the headers and then hands the file to the kernel itself.
        self._hold = False
        return super().sendfile(respiter)


class Worker(GeventWorker):
    """`worker_class` for `tether serve` (and for running gunicorn on tether.http.app)."""

    def init_process(self) -> None:
        # base_async builds every HTTP/1 response with gunicorn.http.wsgi.Response; this
        # process is the hub's worker alone, so the swap reaches exactly its responses.
        wsgi.Response = OneSendResponse
        super().init_process()
