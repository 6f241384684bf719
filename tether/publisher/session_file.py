"""The file that keeps the publisher's session id across restarts, locked while it runs."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class SessionFileBusy(Exception):
    """Another running publisher holds the session file; `tether publish` exits 2."""


class SessionFile:
    """The file that keeps the session id, held under an exclusive lock for the life of the
    process: two publishers presenting one session id would take the hub's stream from each
    other forever (each reconnect replaces the other's stream)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise SessionFileBusy(
                f"the session file {path} is in use by another running tether publish; "
                "stop that one, or give this one its own file (session_file / "
                "--session-file)") from None

    def read(self) -> str | None:
        data = os.pread(self._fd, 4096, 0).decode(errors="replace").strip()
        return data or None

    def write(self, session_id: str) -> None:
        data = (session_id + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)  # closing the last descriptor releases the lock
