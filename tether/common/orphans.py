"""No orphans: a child process that must not outlive its parent asks Linux to signal it
when the parent dies (prctl PR_SET_PDEATHSIG). Elsewhere the parents' own exit paths are
all there is."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

# Loaded at import, in the parent: a child between fork and exec should only make the call.
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def die_with_parent(signum: int = signal.SIGTERM, parent: int | None = None) -> None:
    """Have `signum` delivered to this process when its parent dies. With `parent` (the pid
    the caller was forked from), a parent that already died before the call counts too."""
    if _LIBC is None:
        return
    _LIBC.prctl(PR_SET_PDEATHSIG, int(signum))
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signum)
