"""Reading request bodies: size-limited before a byte is read, JSON or a 400."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import falcon
from gunicorn.http.errors import ParseException

from tether import errors


def _input(req: falcon.Request) -> Any:
    if req.content_length is None and req.env.get("wsgi.input_terminated"):
        # A chunked upload: gunicorn ends the input at the body's end, while falcon's
        # bounded_stream would see a body without Content-Length as empty.
        return req.stream
    return req.bounded_stream


# What gunicorn raises when the sender's connection ends inside the body: NoMoreData (an
# OSError, as a reset is) or a chunk left unfinished (a ParseException).
_CUT = (OSError, ParseException)


class UploadCut(Exception):
    """A streamed body ended before its end: the sender closed its connection (a publisher
    whose task was cancelled stops its upload so). Nobody is left to answer."""


def iter_ndjson(req: falcon.Request, limit: int) -> Iterator[Any]:
    """Each JSON line of an NDJSON body, as it arrives (a line over `limit` is 413)."""
    stream = _input(req)
    while True:
        try:
            line = stream.readline(limit + 1)
        except _CUT as exc:  # gunicorn's NoMoreData, a reset: the sender went away
            raise UploadCut(str(exc) or type(exc).__name__) from None
        if not line:
            return
        if len(line) > limit:
            raise errors.BODY_TOO_LARGE(limit=limit)
        line = line.strip()
        if not line:
            continue  # blank (or padding) lines carry nothing
        try:
            yield json.loads(line)
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.INVALID_REQUEST(
                why=f"body: a line is not valid JSON ({exc})", param="body") from None


def read_json(req: falcon.Request, limit: int) -> Any:
    length = req.content_length
    if length is not None and length > limit:
        # refused on the header alone: nothing of the body is read
        raise errors.BODY_TOO_LARGE(limit=limit)
    try:
        raw = _input(req).read(limit + 1)
    except _CUT as exc:  # a chunked body cut mid-chunk: the sender went away
        raise UploadCut(str(exc) or type(exc).__name__) from None
    if length is not None and len(raw) < length:
        raise UploadCut(f"{len(raw)} of {length} bytes arrived")
    if len(raw) > limit:
        raise errors.BODY_TOO_LARGE(limit=limit)
    if not raw:
        raise errors.INVALID_REQUEST(why="body: a JSON body is required", param="body")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.INVALID_REQUEST(why=f"body: not valid JSON ({exc})", param="body") from None
