"""Lines of a chunked upload, split from the pieces gunicorn's parser yields
(tether/http/body.py: its 1 KiB reads cost time quadratic in a piece's size): each line
once its newline came, whatever the pieces' bounds; a line over the limit is 413 before
more of it is held; a cut is an UploadCut."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from gunicorn.http.body import Body, ChunkedReader
from gunicorn.http.errors import NoMoreData
from gunicorn.http.unreader import SocketUnreader

from tether.errors import TetherError
from tether.http.body import UploadCut, _chunk_pieces, _split_lines


def lines(*pieces: bytes, limit: int = 100) -> list[bytes]:
    return list(_split_lines(iter(pieces), limit))


def test_lines_come_whole_across_and_within_pieces():
    assert lines(b'{"a": 1}\n{"b"', b': 2}\n\n{"c": 3}\n{"d":', b" 4}", b"") == [
        b'{"a": 1}\n', b'{"b": 2}\n', b"\n", b'{"c": 3}\n', b'{"d": 4}']


def test_each_line_is_yielded_as_soon_as_its_newline_arrives():
    arrived: list[bytes] = []

    def pieces() -> Iterator[bytes]:
        for piece in (b"one\ntw", b"o\n", b"three\n"):
            arrived.append(piece)
            yield piece

    got = _split_lines(pieces(), 100)
    assert next(got) == b"one\n" and arrived == [b"one\ntw"]
    assert next(got) == b"two\n" and len(arrived) == 2


@pytest.mark.parametrize("pieces", [[b"x" * 101 + b"\n"], [b"x" * 60, b"x" * 60]])
def test_a_line_over_the_limit_is_413_before_more_is_held(pieces):
    with pytest.raises(TetherError) as refused:
        lines(*pieces, b"never read\n")
    assert refused.value.status == 413


def test_a_body_cut_mid_way_is_an_upload_cut():
    def pieces() -> Iterator[bytes]:
        yield b"whole\npart"
        raise NoMoreData(b"")

    got = _split_lines(pieces(), 100)
    assert next(got) == b"whole\n"
    with pytest.raises(UploadCut):
        next(got)


def test_the_handlers_pieces_closed_mid_drain_leave_gunicorns_parser_going():
    """A handler that stops reading (the channel's 503) leaves the rest to gunicorn, which
    drains it with the same parser; the garbage collector may close the handler's pieces
    meanwhile, while the parser is running (chaos logged `generator already executing`)."""
    handler: list[Iterator[bytes]] = []

    def parser() -> Iterator[bytes]:
        yield b"read by the handler\n"
        handler[0].close()  # as the collector does, in the middle of gunicorn's drain
        yield b"drained\n"

    reader = ChunkedReader(SimpleNamespace(), None)
    reader.parser = parser()
    pieces = _chunk_pieces(Body(reader))
    assert pieces is not None
    handler.append(pieces)
    assert next(pieces) == b"read by the handler\n"
    assert next(reader.parser) == b"drained\n"  # gunicorn's drain goes on


def test_gunicorns_chunked_body_is_read_piece_by_piece_as_each_arrives():
    """The reader depends on gunicorn's Body, ChunkedReader and its parser (the fallback,
    `readline`, is quadratic in a piece's size): this fails if the installed gunicorn no
    longer has them, rather than the hub slowing down unnoticed."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        body = Body(ChunkedReader(SimpleNamespace(), SocketUnreader(ours)))
        pieces = _chunk_pieces(body)
        assert pieces is not None
        theirs.sendall(b"4\r\none\n\r\n")  # a piece shorter than gunicorn's 1 KiB reads
        assert next(pieces) == b"one\n"
        theirs.sendall(b"a\r\ntwo\nthree\n\r\n0\r\n\r\n")
        assert list(_split_lines(pieces, 100)) == [b"two\n", b"three\n"]
