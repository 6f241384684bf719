"""Bringing a backend up: its wake recipe, then the readiness probe until it answers."""

from __future__ import annotations

import logging
import subprocess
import time

import gevent

from tether.common.backend_client import BackendClient
from tether.publisher import recipes
from tether.publisher.config import BackendConfig
from tether.publisher.messages import WakeFinished

log = logging.getLogger("tether.publisher.backend")

PROBE_EVERY_S = 0.25


def wake(backend: BackendConfig, client: BackendClient) -> WakeFinished:
    """The recipe, then the probe (`GET {base_url}/models` answering 200) until the backend
    is up or `wake_timeout_s` passes. Without a recipe, the probe alone."""
    if client.probe():
        return WakeFinished(None)
    if backend.wake is None:
        return WakeFinished("the backend is down and has no wake recipe")
    deadline = time.monotonic() + backend.wake_timeout_s
    try:
        proc = recipes.start(backend.wake, backend.wake_timeout_s, "wake recipe", backend.key)
    except recipes.RecipeFailed as exc:
        return WakeFinished(str(exc))
    while time.monotonic() < deadline:
        if client.probe(timeout=min(2.0, max(deadline - time.monotonic(), 0.1))):
            return WakeFinished(None)
        if isinstance(proc, subprocess.Popen):
            reason = recipes.failed_exit(proc, "wake recipe")
            if reason:
                return WakeFinished(reason)
        gevent.sleep(PROBE_EVERY_S)
    log.warning("backend %s did not answer its probe within %g s of its wake recipe (%s)",
                backend.key, backend.wake_timeout_s, backend.wake.describe())
    # The hub's own words for it (wake_timeout), so a client reads the same either way.
    return WakeFinished(f"{backend.key!r} did not wake within {backend.wake_timeout_s:g} s",
                        timed_out=True)
