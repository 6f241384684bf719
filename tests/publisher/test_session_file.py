"""The publisher's session file: a write that fails half-way (a crash, a full disk) keeps
the old id, and the file stays locked against a second publisher across writes."""

from __future__ import annotations

import os

import pytest

from tether.publisher.session_file import SessionFile, SessionFileBusy


def test_a_write_that_fails_half_way_keeps_the_old_session_id(tmp_path, monkeypatch):
    """It used to truncate the file and then write it: a crash between the two made the
    next start a new session (and its Llms someone else's to take)."""
    path = tmp_path / "publisher.session"
    kept = SessionFile(path)
    kept.write("old-session")

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    for name in ("write", "pwrite"):  # every way to put bytes in a file fails from now on
        monkeypatch.setattr(os, name, no_space)
    with pytest.raises(OSError):
        kept.write("new-session")
    monkeypatch.undo()
    assert kept.read() == "old-session"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    kept.write("new-session")
    assert kept.read() == "new-session" and path.read_text() == "new-session\n"
    kept.close()


def test_the_file_stays_locked_across_writes(tmp_path):
    path = tmp_path / "publisher.session"
    first = SessionFile(path)
    first.write("s1")
    with pytest.raises(SessionFileBusy):
        SessionFile(path)
    first.close()
    again = SessionFile(path)
    assert again.read() == "s1"
    again.close()
