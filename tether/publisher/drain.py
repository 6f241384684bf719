"""`tether publish` stopping (SIGTERM, Ctrl-C; docs/protocol.md, Shutdown): no new task is
taken, the running ones finish for up to `drain_timeout_s`, the rest are answered with an
error, those answers reach the hub, and the task stream closes only once it has been quiet
for SETTLE_S after them."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

import gevent
import gevent.event
import pykka

from tether.common.actor import tell
from tether.publisher import messages as m

log = logging.getLogger("tether.publisher")

ASK_TIMEOUT_S = 5.0
# How long the answers to abandoned tasks may take to reach the hub.
RESULT_POST_WAIT_S = 10.0
# How quiet the stream must stay after the last answer is confirmed before it is closed: a
# request waiting at the hub takes the slot that answer freed and is sent at once; refused
# here it is answered now, where after the close it would wait the hub's publisher_grace_s.
SETTLE_S = 1.0
# ... and at most this long in all: a hub that keeps sending (a pool under load routes to a
# member with free slots) gets each task refused, then moved; the process still ends.
SETTLE_MAX_S = 3.0


class Drain:
    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.greenlet: gevent.Greenlet | None = None
        self.hurry = gevent.event.Event()  # a second signal: stop waiting
        self.task_came = gevent.event.Event()  # a task frame was read meanwhile

    @property
    def started(self) -> bool:
        return self.greenlet is not None

    def start(self, refs: list[pykka.ActorRef], answers: Callable[[], list[gevent.Greenlet]],
              flush: Callable[[float], None], stop: Callable[[], None]) -> None:
        """Drain the backend actors `refs`; `answers()` are the agent's own refusals still
        being posted, `flush(until)` waits for the result channel; `stop()` ends it all.
        Called again (a second signal), it cuts the waits short."""
        if self.greenlet is not None:
            self.hurry.set()
            return
        self.greenlet = gevent.spawn(self._run, refs, answers, flush, stop)

    def _run(self, refs: list[pykka.ActorRef], answers: Callable[[], list[gevent.Greenlet]],
             flush: Callable[[float], None], stop: Callable[[], None]) -> None:
        for ref in refs:
            tell(ref, m.Drain())
        posts = self._wait_for_running(refs)
        # The answers must reach the hub before the process ends (they retry a few seconds
        # while the hub is unreachable), and the stream stays open until it has been quiet
        # for SETTLE_S after them: what the hub sends meanwhile is refused, then answered.
        until = time.monotonic() + RESULT_POST_WAIT_S
        settled_by: float | None = None
        while True:
            self.task_came.clear()
            gevent.joinall(posts + answers(), timeout=max(0.0, until - time.monotonic()))
            flush(until)  # and what they queued on the result channel
            posts = []
            settled_by = settled_by or time.monotonic() + SETTLE_MAX_S
            if self.hurry.is_set() or time.monotonic() >= min(until, settled_by):
                break
            gevent.wait([self.task_came, self.hurry], timeout=SETTLE_S, count=1)
            if not self.task_came.is_set():
                break
        stop()

    def _wait_for_running(self, refs: list[pykka.ActorRef]) -> list[gevent.Greenlet]:
        """Until nothing runs or the drain time is up; then what still runs is abandoned.
        The posts of the answers under way."""
        deadline = time.monotonic() + self.timeout_s
        announced = False
        while True:
            running, posts = 0, []
            for ref in refs:
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    count, pending = ref.ask(m.GetDrainState(), block=True,
                                             timeout=ASK_TIMEOUT_S)
                    running += count
                    posts += pending
            if not running or time.monotonic() >= deadline or self.hurry.is_set():
                break
            if not announced:
                announced = True
                log.info("stopping: taking no new tasks; waiting up to %g s for %d running",
                         self.timeout_s, running)
            self.hurry.wait(0.1)
        if running:
            log.warning("stopping: abandoning %d running task(s)", running)
            for ref in refs:
                with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                    posts += ref.ask(m.Abandon(), block=True, timeout=ASK_TIMEOUT_S)
        return posts
