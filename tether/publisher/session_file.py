"""The file that keeps the publisher's session id across restarts, locked while it runs."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class SessionFileBusy(Exception):
    """Another running publisher holds the session file; `tether publish` exits 2."""


class SessionFile:
    """The file that keeps the session id, replaced whole on each write (a crash leaves the
    old id or the new one, never an empty file: that would be a new session, whose Llms
    another publisher could take). A lock file beside it (`<file>.lock`) is held under an
    exclusive lock for the life of the process: two publishers presenting one session id
    would take the hub's stream from each other forever (each reconnect replaces the other's
    stream). The lock cannot be on the session file itself, which each write replaces."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(path.name + ".lock")
        self._fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise SessionFileBusy(
                f"the session file {path} is in use by another running tether publish; "
                "stop that one, or give this one its own file (session_file / "
                "--session-file)") from None

    def read(self) -> str | None:
        try:
            data = self.path.read_bytes()[:4096].decode(errors="replace").strip()
        except FileNotFoundError:
            return None
        return data or None

    def write(self, session_id: str) -> None:
        """Write a temporary file, flush it to disk, and rename it over the session file
        (atomic), then flush the directory so the rename itself survives a crash."""
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            try:
                os.write(fd, (session_id + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)  # closing the last descriptor releases the lock
