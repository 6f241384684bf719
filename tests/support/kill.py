"""`kill -9` of a whole hub: its gunicorn master and every worker at once.

Hub.stop(SIGKILL) kills the master only; its orphaned worker notices within a second and
exits in an orderly way, ending its streams and giving back what it held. A machine or
process that dies does none of that: this does the same to every process of the hub."""

from __future__ import annotations

import contextlib
import os
import signal

from tests.support.hub import Hub
from tests.support.procfs import children


def kill_hub(hub: Hub) -> None:
    assert hub.proc is not None
    workers = children(hub.proc.pid)
    assert workers, "the hub has no worker to kill"
    for pid in [hub.proc.pid, *workers]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    hub.stop(signal.SIGKILL)  # reaps the master; the test's teardown has nothing left to do
