"""Reading request bodies: size-limited before a byte is read, JSON or a 400.

What a body may be is bounded before it is parsed, not only its bytes (issue 27): JSON
nested deeper than `max_json_depth` (which would recurse out of the parser, the schema
check or the store) and bodies of more than `max_json_values` values (a 4 MiB body of `{}`
would parse into ~100 MB of small objects) are refused from a scan of the raw bytes, before
any object is built. Then strict JSON only (no `NaN` or `Infinity`, which strict parsers
downstream refuse), and text that is valid Unicode (a lone surrogate such as `"\\ud800"` is
valid JSON but cannot be encoded: it would fail later, in a publisher's stream or the store).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import falcon
from gunicorn.http.body import Body, ChunkedReader
from gunicorn.http.errors import ParseException

from tether import errors

# What JSON's structure is made of; every other byte but whitespace is part of a scalar
# (text, a number, a literal) and becomes an `x`, so an empty container reads `[]` or `{}`.
_SCALAR = bytes(b if b in b'[]{},"' else ord("x") for b in range(256))
_SPACE = b" \t\r\n"
_NOT_BRACKETS = bytes(range(256)).translate(None, b"[]{}")
_INNERMOST = re.compile(rb"\[\]|\{\}")
# Where a surrogate may hide: a \uD800-\uDFFF escape (a literal prefix: a fast scan), or
# one encoded raw (json.loads decodes bytes with "surrogatepass"; UTF-8 puts them after a
# 0xED byte). A match may be a valid pair: the walk below decides.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(frozen=True)
class BodyLimits:
    """What one JSON body (or one NDJSON line) may be: bytes, nesting and values."""

    bytes: int
    depth: int = 64
    values: int = 65536

    @classmethod
    def of(cls, settings: Any) -> BodyLimits:
        return cls(settings.max_body_bytes, settings.max_json_depth, settings.max_json_values)


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


def iter_ndjson(req: falcon.Request, limits: BodyLimits) -> Iterator[Any]:
    """Each JSON line of an NDJSON body, as it arrives (a line over the limit is 413)."""
    stream = _input(req)
    pieces = _chunk_pieces(stream)
    lines = _read_lines(stream, limits.bytes) if pieces is None \
        else _split_lines(pieces, limits.bytes)
    for line in lines:
        line = line.strip()
        if line:  # blank (or padding) lines carry nothing
            yield parse(line, limits, "a line is ")


def _read_lines(stream: Any, limit: int) -> Iterator[bytes]:
    while True:
        try:
            line = stream.readline(limit + 1)
        except _CUT as exc:  # gunicorn's NoMoreData, a reset: the sender went away
            raise UploadCut(str(exc) or type(exc).__name__) from None
        if not line:
            return
        if len(line) > limit:
            raise errors.BODY_TOO_LARGE(limit=limit)
        yield line


def _chunk_pieces(stream: Any) -> Iterator[bytes] | None:
    """The pieces of gunicorn's chunked body as its parser yields them (each as it arrives),
    when nothing of the body was read yet; None for any other input.

    Why not `readline`: gunicorn's chunked reader hands out 1 KiB at a time, and copies all
    it holds on each of those reads, so a piece costs time quadratic in its size. A result
    channel's pieces carry many tasks' lines: 74 % of the hub's CPU went there, relaying 64
    streams on the channel (docs/performance.md, Performance II)."""
    if not isinstance(stream, Body) or not isinstance(stream.reader, ChunkedReader):
        return None
    reader = stream.reader
    parser = getattr(reader, "parser", None)
    if parser is None or stream.buf.tell() or reader.buf.tell():
        return None
    # The same generator stays gunicorn's: what the handler leaves unread (an upload it
    # stops reading) is what gunicorn drains before the connection's next request. So a
    # loop, not `yield from`: closing this generator (the garbage collector may, while
    # gunicorn's drain is inside the parser) must not close the parser too.

    def pieces() -> Iterator[bytes]:
        try:
            for piece in parser:  # noqa: UP028 - `yield from` would close the parser too
                yield piece
        except Exception:
            stream.failed = True  # where the next request begins is unknown: no reuse
            raise

    return pieces()


def _split_lines(pieces: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """The lines of `pieces`, each yielded once its newline came (the last may lack one);
    a line over `limit` bytes is 413 before more of it is held."""
    pending = bytearray()
    try:
        for piece in pieces:
            start = 0
            while (end := piece.find(b"\n", start)) >= 0:
                if pending:
                    pending += piece[start:end + 1]
                    line = bytes(pending)
                    pending.clear()
                else:
                    line = piece[start:end + 1]
                if len(line) > limit:
                    raise errors.BODY_TOO_LARGE(limit=limit)
                yield line
                start = end + 1
            pending += piece[start:]
            if len(pending) > limit:
                raise errors.BODY_TOO_LARGE(limit=limit)
    except _CUT as exc:  # gunicorn's NoMoreData, a reset: the sender went away
        raise UploadCut(str(exc) or type(exc).__name__) from None
    if pending:
        yield bytes(pending)


def read_json(req: falcon.Request, limits: BodyLimits) -> Any:
    length = req.content_length
    if length is not None and length > limits.bytes:
        # refused on the header alone: nothing of the body is read
        raise errors.BODY_TOO_LARGE(limit=limits.bytes)
    try:
        raw = _input(req).read(limits.bytes + 1)
    except _CUT as exc:  # a chunked body cut mid-chunk: the sender went away
        raise UploadCut(str(exc) or type(exc).__name__) from None
    if length is not None and len(raw) < length:
        raise UploadCut(f"{len(raw)} of {length} bytes arrived")
    if len(raw) > limits.bytes:
        raise errors.BODY_TOO_LARGE(limit=limits.bytes)
    if not raw:
        raise errors.INVALID_REQUEST(why="body: a JSON body is required", param="body")
    return parse(raw, limits)


def parse(raw: bytes, limits: BodyLimits, what: str = "") -> Any:
    """`raw` as JSON within `limits`, or a 400 `invalid_request` naming the field."""
    shape = _shape(raw, limits)
    if shape:
        raise errors.INVALID_REQUEST(why=f"body: {what}{shape}", param="body")
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise errors.INVALID_REQUEST(
            why=f"body: {what}not valid JSON ({exc})", param="body") from None
    if b"\xed" in raw or _SURROGATE_ESCAPE.search(raw):
        field = _unencodable(body, "")
        if field is not None:
            raise errors.INVALID_REQUEST(
                why=f"{field or 'body'}: not valid Unicode text (a lone surrogate)",
                param=field or "body")
    return body


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (strict JSON has no NaN or Infinity)")


def _shape(raw: bytes, limits: BodyLimits) -> str | None:
    """Why `raw` is too deep or has too many values to parse, or None. Every value but the
    root is the first of a non-empty container or follows a `,` (a key and its value count
    as one), so `,` + `[` + `{` + 1 bounds the values, and the brackets bound the depth:
    most bodies stop at this first, cheap, count. Beyond it, the same count outside text
    less the empty containers is exact."""
    opens = raw.count(b"[") + raw.count(b"{")
    if opens + raw.count(b",") < limits.values and opens <= limits.depth:
        return None
    outside = _structure(raw)
    opens = outside.count(b"[") + outside.count(b"{")
    empty = outside.count(b"[]") + outside.count(b"{}")
    if 1 + outside.count(b",") + opens - empty > limits.values:
        return f"more than {limits.values} values (setting max_json_values)"
    if opens > limits.depth and not _shallow(outside.translate(None, _NOT_BRACKETS),
                                             limits.depth):
        return (f"nested deeper than {limits.depth} levels, or its brackets do not pair "
                f"(setting max_json_depth)")
    return None


def _structure(raw: bytes) -> bytes:
    """The `[]{},` of `raw` outside its strings, in order, with `x` for the scalars (a
    string is one `x`), without whitespace, at C speed: escaped backslashes and then escaped
    quotes go first (left to right, as a parser reads them), so every `"` left opens or
    closes a string; what lies between a pair is text. `["{"]` and `[1]` read `[x]`: only
    an empty container reads `[]`."""
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    return b"x".join(unescaped.translate(_SCALAR, _SPACE).split(b'"')[::2])


def _shallow(brackets: bytes, depth: int) -> bool:
    """Whether `brackets` (only `[]{}`) pair up within `depth` levels: each round takes
    the innermost pairs away."""
    for _ in range(depth):
        if not brackets:
            return True
        inner = _INNERMOST.sub(b"", brackets)  # one pass: pairs it uncovers wait a round
        if len(inner) == len(brackets):
            return False
        brackets = inner
    return not brackets


def _unencodable(value: Any, path: str) -> str | None:
    """The path of the first text in `value` that is not valid Unicode, or None."""
    if isinstance(value, str):
        return None if _encodes(value) else path
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _unencodable(item, f"{path}[{i}]")
            if found is not None:
                return found
    elif isinstance(value, dict):
        for key, item in value.items():
            field = f"{path}.{key}" if path else key
            if not _encodes(key):
                return path or "body"  # the key itself cannot be named
            found = _unencodable(item, field)
            if found is not None:
                return found
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True
