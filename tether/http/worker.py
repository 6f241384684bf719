"""The hub's gunicorn worker: gunicorn's gevent worker, with less CPU spent per request
(docs/performance.md, issue 13). Bytes on the wire are unchanged.

- gunicorn writes a response's headers and its body with two `sendall` calls (each also a
  getsockopt). Here the headers wait for the first body write and go out with it in one
  `send`, and a chunked body's terminator joins the headers when there is no body at all.
- The Date header is formatted once a second, not once a response (email.utils).
- The settings are read once: gunicorn reads a dozen of them on every request, each time
  through Config.__getattr__ and its settings table, and nothing changes them in a worker.

And what gunicorn answers by itself, before or around the app (a request line over its
limit: 414; bad request framing: 400; an app that fails before its headers went out: 500),
is the hub's JSON error envelope, as /openapi.json documents every error, not its HTML page.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import time
from typing import Any

from gunicorn import util
from gunicorn.http import wsgi
from gunicorn.util import http_date
from gunicorn.workers.ggevent import GeventWorker

from tether import errors

# A body larger than this is sent after its headers rather than copied onto them.
JOIN_LIMIT = 64 * 1024


_date: tuple[int, str] = (0, "")


def _date_line() -> str:
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, f"Date: {http_date(now)}\r\n")
    return _date[1]


class OneSendResponse(wsgi.Response):
    """gunicorn's HTTP/1 response, its header block held back until the first body bytes."""

    headers_sent: bool  # gunicorn's: True once the header block is written (here: held)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: bytes | None = None
        self._hold = True

    def default_headers(self) -> list[str]:
        # gunicorn's own, but for the Date line: its http_date() formats the time anew for
        # every response.
        if self.upgrade:
            connection = "upgrade"
        elif self.should_close():
            connection = "close"
        else:
            connection = "keep-alive"
        major, minor = self.req.version
        headers = [f"HTTP/{major}.{minor} {self.status}\r\n", f"Server: {self.version}\r\n",
                   _date_line(), f"Connection: {connection}\r\n"]
        if self.chunked:
            headers.append("Transfer-Encoding: chunked\r\n")
        return headers

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


def write_error(sock: Any, status: int, reason: str, message: str) -> None:
    """gunicorn's util.write_error, in the error envelope of docs/protocol.md."""
    if status >= 500:
        error = errors.INTERNAL_ERROR()
    else:
        error = errors.INVALID_REQUEST.at(status, why=(message or reason)[:500])
    body = json.dumps(error.envelope()).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    util.write_nonblock(sock, head.encode("latin-1") + body)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 * 1024  # glibc's default, kept fixed


def keep_large_blocks_mapped() -> None:
    """glibc raises its mmap threshold to the size of each mapped block freed (up to 32
    MiB): after the first 4 MiB body, later ones come from the heap, which it seldom gives
    back (a worker kept ~33 MiB after eight left, issue 27). A fixed threshold keeps every
    large block (a body, its task frame) a mapping of its own, unmapped when freed."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its own rules hold
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


class SettledConfig:
    """A worker's gunicorn Config, each setting (or property) read once and then kept."""

    def __init__(self, cfg: Any) -> None:
        self._cfg = cfg

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._cfg, name)
        self.__dict__[name] = value
        return value


# A worker that cannot open its database waits for it, this long at most between tries.
BOOT_RETRY_MAX_S = 5.0


class Worker(GeventWorker):
    """`worker_class` for `tether serve` (and for running gunicorn on tether.http.app)."""

    def load_wsgi(self) -> None:
        """Build the app; while the database does not answer, try again with backoff.
        gunicorn's master takes a worker that fails to boot for a broken install and exits
        with all of them: a replacement worker started during a database outage must wait
        it out instead (and tell the master it is alive meanwhile)."""
        from tether.store import db

        delay = 0.25
        while True:
            try:
                super().load_wsgi()
                return
            except Exception as exc:
                if not (isinstance(exc, db.DatabaseUnavailable) or db.is_outage(exc)) \
                        or not self.alive:
                    raise
                self.log.warning("the database does not answer (%s): trying again in %g s",
                                 " ".join(str(exc).split()) or type(exc).__name__, delay)
            self.notify()
            time.sleep(delay)
            delay = min(delay * 2, BOOT_RETRY_MAX_S)

    cfg: Any  # gunicorn's Config (untyped), then its SettledConfig

    def init_process(self) -> None:
        self.cfg = SettledConfig(self.cfg)
        # base_async builds every HTTP/1 response with gunicorn.http.wsgi.Response; this
        # process is the hub's worker alone, so the swap reaches exactly its responses.
        wsgi.Response = OneSendResponse
        util.write_error = write_error  # gunicorn's own answers (base.Worker.handle_error)
        keep_large_blocks_mapped()
        super().init_process()
