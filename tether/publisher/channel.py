"""The publisher's end of the result channel (docs/protocol.md, `_provider-results`): the
results, streamed chunks and errors of every task of the session go as numbered lines on
one NDJSON upload, not as one HTTP request each (chunks once the hub's `hello` said its
channel takes them: `takes_chunks`).

One greenlet (the sender) owns the uploads. A result is queued (`post`), numbered, and kept
until an upload's answer confirms it (`applied`); each upload lasts at most WINDOW_S, so what
is unconfirmed stays small and a refusal is seen within that time. An upload that breaks is
followed by another carrying every unconfirmed line again, with backoff, until each line's
task deadline; the hub skips the lines it handled already. A line the hub refuses 503 goes
by its own POST (the per-task route's retries), so it holds up no other; the rest of its
task's lines follow it the same way, in order (a stream's chunks never overtake each other).
A hub that has no such route (404 `not_found`, 405: an older hub) gets each result by its
own POST instead, until the publisher moves to another hub URL.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.event

from tether.common.backend_client import Unreachable
from tether.common.task_wire import Result
from tether.publisher import tasks
from tether.publisher.hub_client import HubClient

log = logging.getLogger("tether.publisher.channel")

PATH = "/api/v1/llms/_provider-results"
CHANNEL_HEADER = "X-Result-Channel"
WINDOW_S = 1.0  # the longest an upload stays open, i.e. a line stays unconfirmed
# An upload with nothing to send for this long ends (its answer confirms what it carried):
# under load results follow each other closer than this and one upload a second carries
# them all; between bursts, each burst is confirmed at once, which leaves a cut connection
# little to send again.
IDLE_S = 0.05
UPLOAD_TIMEOUT_S = 30.0  # a hub that stops reading (SIGSTOP) breaks the upload after this
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 5.0
# The answers of a hub that has no such route (an older hub): by route or by method.
NO_ROUTE = {404: "not_found", 405: "method_not_allowed"}

PostOne = Callable[[str, Result, float], None]  # (task id, result, deadline): per-task POST
Gone = Callable[[str], None]  # a task the hub ended (its line refused 404): stop working on it


@dataclass(frozen=True)
class Line:
    seq: int
    task_id: str
    result: Result
    deadline: float  # time.monotonic(): past it the hub answered the task's client already
    data: bytes  # the line as sent, newline included


class ResultChannel:
    def __init__(self, hub: HubClient, session_id: Callable[[], str | None],
                 post_one: PostOne, gone: Gone | None = None) -> None:
        self.hub = hub
        self.session_id = session_id
        self.post_one = post_one
        self.gone: Gone = gone or (lambda _task_id: None)
        self.id = str(uuid.uuid4())  # fresh each run: a restarted publisher numbers anew
        self._seq = 0
        self._lines: deque[Line] = deque()  # unconfirmed, in seq order
        self._added = gevent.event.Event()
        self._settled = gevent.event.Event()  # nothing left unconfirmed
        self._settled.set()
        self._hurry = False  # shutting down: end the upload under way at once
        self._sender: gevent.Greenlet | None = None
        self._fallbacks: list[gevent.Greenlet] = []
        self._offered: set[str] = set()  # hub URLs whose channel answered 200
        self._unoffered: str | None = None  # the hub URL that has no channel
        self._sent_any = False  # the upload under way sent a piece: the hub was reached
        self._chunks_at: str | None = None  # the hub URL whose `hello` said it takes chunks
        # Tasks with a line gone by its own POST: their later lines follow it, in order.
        self._diverted: dict[str, deque[Line]] = {}

    # --- what tasks call -----------------------------------------------------------------

    def post(self, task_id: str, result: Result, deadline: float) -> bool:
        """Queue a result for the channel; False when the hub at hand has none (the caller
        posts it itself)."""
        diverted = self._diverted.get(task_id)
        if diverted is not None:  # behind a line of its task that went by its own POST
            diverted.append(Line(0, task_id, result, deadline, b""))
            return True
        if self._unoffered == self.hub.url:
            return False
        self._seq += 1
        data = json.dumps({"seq": self._seq, "taskId": task_id, **result}).encode() + b"\n"
        self._lines.append(Line(self._seq, task_id, result, deadline, data))
        self._settled.clear()
        self._added.set()
        if self._sender is None or self._sender.dead:
            self._sender = gevent.spawn(self._run)
        return True

    def said_hello(self, url: str, chunks_on_channel: bool) -> None:
        """The hub at `url` greeted the session: whether its channel takes streamed chunks."""
        if chunks_on_channel:
            self._chunks_at = url
        elif self._chunks_at == url:
            self._chunks_at = None

    def takes_chunks(self) -> bool:
        """Whether a stream's lines go on the channel (else on their task's own upload)."""
        url = self.hub.url
        return self._chunks_at == url and self._unoffered != url

    def flush(self, timeout: float) -> bool:
        """At shutdown: end the upload under way and wait, at most `timeout`, until every
        line is confirmed (or went by its own POST). True if nothing is left."""
        self._hurry = True
        self._added.set()
        deadline = time.monotonic() + timeout
        self._settled.wait(timeout)
        gevent.joinall(self._fallbacks, timeout=max(0.0, deadline - time.monotonic()))
        return self._settled.is_set() and all(g.dead for g in self._fallbacks)

    def stop(self) -> None:
        if self._sender is not None:
            self._sender.kill(block=False)

    # --- the sender ----------------------------------------------------------------------

    def _run(self) -> None:
        delay = RETRY_FIRST_S
        while True:
            self._drop_expired()
            if not self._lines:
                self._settled.set()
                self._added.clear()
                self._added.wait()
                continue
            url = self.hub.url
            if self._unoffered == url:
                self._post_each("the hub offers no result channel")
                continue
            session_id = self.session_id()
            headers = {CHANNEL_HEADER: self.id}
            if session_id is not None:
                headers["X-Provider-Session-Id"] = session_id
            # A hub not known to offer the channel gets one piece and the upload's end at
            # once: an older hub answers 404/405 now, not after the window.
            probe = url not in self._offered
            self._sent_any = False
            try:
                status, answer = self.hub.post_ndjson(PATH, self._pieces(probe), headers,
                                                      timeout=UPLOAD_TIMEOUT_S)
            except Unreachable as exc:
                if self._sent_any:
                    # A working upload cut (a network blip, a hub process gone): the next
                    # one goes soon; only failures to reach the hub at all back off further.
                    delay = RETRY_FIRST_S
                log.warning("result channel broke (%s): sending %d unconfirmed line(s) again "
                            "in %.2g s", exc, len(self._lines), delay)
                gevent.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            applied = answer.get("applied") if isinstance(answer, dict) else None
            if isinstance(applied, int):
                self._confirm(applied)
            if status == 200:
                delay = RETRY_FIRST_S
                if url not in self._offered:
                    self._offered.add(url)
                    log.info("results travel on the result channel of %s", url)
                for task_id in _refused(answer):
                    self.gone(task_id)
                continue
            code = tasks.error_code(answer)
            if NO_ROUTE.get(status) == code:
                self._unoffered = url
                log.info("the hub at %s offers no result channel (%d %s): posting each "
                         "result", url, status, code)
                self._post_each("the hub offers no result channel")
                continue
            if status == 503:  # hub_busy, shutting_down, database_unavailable
                # The line the hub could not take now (its task's home out of reach over
                # the bus, a drain) goes by its own POST, with that route's retries until
                # its deadline; the lines behind it, often for tasks homed elsewhere, go on
                # the channel again at once instead of waiting for it.
                if self._lines:
                    stuck = self._lines[0].task_id
                    log.warning("result channel refused a result of %s (%s): posting it "
                                "on its own", stuck, code)
                    mine = [line for line in self._lines if line.task_id == stuck]
                    self._lines = deque(line for line in self._lines if line.task_id != stuck)
                    self._divert(mine)
                continue
            # Anything else (400, 401, 403, 413, 500) would refuse these lines again: each
            # goes by its own POST, with that route's retries and logs.
            log.warning("result channel answered %d %s: posting its %d line(s) one by one",
                        status, code, len(self._lines))
            self._post_each(f"the channel answered {status}")

    def _pieces(self, probe: bool) -> Iterator[bytes]:
        """The unconfirmed lines, then each new one as it comes, for up to WINDOW_S. Lines
        are only confirmed or dropped between uploads, so an index into them is stable."""
        started = time.monotonic()
        sent = 0
        while True:
            if sent < len(self._lines):
                piece = b"".join(self._lines[i].data for i in range(sent, len(self._lines)))
                sent = len(self._lines)
                self._sent_any = True
                yield tasks.padded(piece)  # for older hubs (tasks.NDJSON_FLUSH_BYTES)
                if probe:
                    return
                continue
            left = WINDOW_S - (time.monotonic() - started)
            if left <= 0 or self._hurry:
                return
            # The greenlets ready to run go first: the lines they queue travel in one piece
            # (one send), and most turns need no timed wait (a timer each, measured).
            gevent.sleep(0)
            if sent < len(self._lines):
                continue
            self._added.clear()
            if not self._added.wait(min(left, IDLE_S)):
                return  # idle: end it, and have what it carried confirmed

    def _confirm(self, applied: int) -> None:
        while self._lines and self._lines[0].seq <= applied:
            self._lines.popleft()

    def _drop_expired(self) -> None:
        now = time.monotonic()
        if not any(line.deadline < now for line in self._lines):
            return
        kept: deque[Line] = deque()
        for line in self._lines:
            if line.deadline < now:
                log.warning("result of task %s not confirmed by its deadline: dropped",
                            line.task_id)
            else:
                kept.append(line)
        self._lines = kept

    def _post_each(self, why: str) -> None:
        """Every unconfirmed line by its own POST (each retried until its deadline)."""
        lines, self._lines = list(self._lines), deque()
        log.debug("%s: posting %d result(s) one by one", why, len(lines))
        self._divert(lines)

    def _divert(self, lines: Iterable[Line]) -> None:
        """Each line by its own POST, with that route's retries until its deadline: one
        greenlet per task posts its lines one at a time, in order, and the task's lines
        still to come join them (`post`) until none is left."""
        self._fallbacks = [g for g in self._fallbacks if not g.dead]
        for line in lines:
            queued = self._diverted.get(line.task_id)
            if queued is None:
                queued = self._diverted[line.task_id] = deque()
                self._fallbacks.append(gevent.spawn(self._post_task, line.task_id, queued))
            queued.append(line)

    def _post_task(self, task_id: str, queued: deque[Line]) -> None:
        try:
            while queued:
                line = queued[0]
                try:
                    self.post_one(line.task_id, line.result, line.deadline)
                except Exception as exc:  # noqa: BLE001 - TaskGone, Unreachable: it is over
                    log.debug("result of task %s not taken: %s", task_id, exc)
                    if isinstance(exc, tasks.TaskGone):
                        self.gone(task_id)
                    return  # its later lines would be refused alike
                queued.popleft()
        finally:
            del self._diverted[task_id]  # what comes later goes on the channel again


def _refused(answer: Any) -> list[str]:
    """Log an upload's refused lines; the tasks among them the hub no longer knows."""
    refused = answer.get("refused") if isinstance(answer, dict) else None
    if not isinstance(refused, list):
        return []
    gone = []
    for item in refused:
        if not isinstance(item, dict):
            continue
        # A late copy, a cancelled or timed-out task: routine (a line, as the task's own
        # is). Others are worth a look (only the code: a refusal may quote the body).
        level = logging.INFO if item.get("code") == "task_not_found" else logging.WARNING
        log.log(level, "hub refused the result of %s: %s", item.get("taskId"),
                item.get("code"))
        if item.get("code") == "task_not_found" and isinstance(item.get("taskId"), str):
            gone.append(item["taskId"])
    return gone


def attach(hub: HubClient, session_id: Callable[[], str | None], on: bool,
           gone: Gone | None = None) -> ResultChannel | None:
    """The session's result channel, made the first stop of every result posted through
    `hub` (tasks.post_result); what the hub cannot take there goes by its own POST. None
    when the setting `result_channel` is off. `gone(task_id)`: a task the hub ended."""
    if not on:
        return None

    def post_one(task_id: str, result: Result, deadline: float) -> None:
        tasks.post_result_now(hub, session_id, task_id, result, deadline)

    made = hub.results = ResultChannel(hub, session_id, post_one, gone)
    return made


def flush(channel: ResultChannel | None, until: float) -> None:
    """At shutdown: wait until `until` (time.monotonic()) for the channel's lines."""
    if channel is not None and not channel.flush(max(0.0, until - time.monotonic())):
        log.warning("stopping: some results were not confirmed by the hub")
