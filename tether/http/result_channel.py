"""The result channel's bookkeeping (docs/protocol.md, `_provider-results`): which lines of
a channel were handled, so that a line sent again after a break is applied once. Plain
classes, no I/O: the resource (tether/http/resources/results.py) reads the lines and hands
each one's result to the same method the per-task result route uses.

A channel is one publisher run's stream of numbered lines for one session (its id is the
publisher's pick). Lines arrive in increasing `seq` on one upload; after a break the
publisher sends every unconfirmed line again on a new one, so "the highest seq handled" is
all a channel needs to remember: a line at or below it was applied (or refused for good)
already.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from tether import errors
from tether.errors import TetherError
from tether.http import schemas

# How many channels one process remembers, and for how long after their last line: past
# `infer_timeout_s` every task a re-sent line could name has ended (404 anyway).
MAX_CHANNELS = 65536
FORGET_AFTER_S = 60.0  # beyond infer_timeout_s
# A chunk line names its place in its task's stream: `seq` makes a line applied once by the
# process that read it, `index` makes a chunk applied once by its task wherever a copy lands
# (a line that ends its task needs none: a copy is refused 404 by the task itself).
CHUNK_KINDS = ("chunk", "chunks")


class Stopped(Exception):
    """A line the hub cannot take now (a 503) or cannot read (400, 413): the upload ends
    here; `applied` is what the publisher may count as confirmed."""

    def __init__(self, error: TetherError, applied: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.applied = applied


@dataclass
class Outcome:
    """What one upload did: the answer's body once its lines ended."""

    applied: int
    duplicates: int = 0
    refused: list[dict[str, Any]] = field(default_factory=list)

    def answer(self) -> dict[str, Any]:
        return {"ok": True, "applied": self.applied, "duplicates": self.duplicates,
                "refused": self.refused}


def split_line(line: Any) -> tuple[int, str, Any]:
    """(seq, taskId, the rest: a result) of one line; a line the channel cannot number or
    route is 400 (it ends the upload: nothing after it can be confirmed in order)."""
    if not isinstance(line, dict):
        raise errors.INVALID_REQUEST(why="body: a line is a JSON object", param="seq")
    seq, task_id = line.get("seq"), line.get("taskId")
    if type(seq) is float and seq.is_integer():  # JSON Schema's integer: 3.0 is one
        seq = int(seq)
    if type(seq) is not int or seq < 1:  # bool is an int: `type` rules it out
        raise errors.INVALID_REQUEST(why="seq: an integer >= 1 numbers each line",
                                     param="seq")
    if not isinstance(task_id, str) or not task_id or len(task_id) > 256:
        raise errors.INVALID_REQUEST(why="taskId: each line names its task", param="taskId")
    return seq, task_id, {k: v for k, v in line.items() if k not in ("seq", "taskId")}


def check_result(result: Any) -> dict[str, Any]:
    """The result of a line, checked as the per-task route checks one; a chunk line without
    its `index` is 400."""
    checked = schemas.validate_result(result)
    if "index" not in checked and any(kind in checked for kind in CHUNK_KINDS):
        raise errors.INVALID_REQUEST(
            why="index: a chunk line on the result channel says where it falls in its "
                "task's stream", param="index")
    return checked


class Channel:
    """One channel's high-water mark. The lock makes check-apply-record one step: two
    uploads of one channel (a re-send while the hub still reads the first copy) never
    apply one line twice."""

    __slots__ = ("applied", "lock", "used")

    def __init__(self) -> None:
        self.applied = 0
        self.lock = threading.Lock()  # a gevent lock under the hub's monkey-patching
        self.used = time.monotonic()

    def take(self, lines: Iterable[Any], apply: Callable[[str, dict[str, Any]], None]) -> \
            Outcome:
        """Apply each line not handled yet, in order, with `apply(task_id, result)`, which
        raises a TetherError when it refuses. A refusal for good (404, 403, 409, 400) is
        listed and the next line goes on; a 503 raises Stopped (that line and the rest
        are not handled). Errors of the body itself (413, bad JSON) stop it too."""
        out = Outcome(self.applied)
        try:
            for line in lines:
                seq, task_id, result = split_line(line)
                with self.lock:
                    self.used = time.monotonic()
                    if seq <= self.applied:
                        out.duplicates += 1
                        continue
                    try:
                        apply(task_id, check_result(result))
                    except TetherError as error:
                        if error.status >= 500:
                            raise Stopped(error, self.applied) from None
                        out.refused.append({"seq": seq, "taskId": task_id,
                                            "code": error.code})
                    self.applied = seq
                    out.applied = seq
        except TetherError as error:  # the line could not be read or numbered
            raise Stopped(error, self.applied) from None
        return out


class Channels:
    """The channels one process reads, by (session id, channel id): bounded in number and
    forgotten once idle past every task's deadline."""

    def __init__(self, infer_timeout_s: float, limit: int = MAX_CHANNELS) -> None:
        self._forget_after = infer_timeout_s + FORGET_AFTER_S
        self._limit = limit
        self._channels: OrderedDict[tuple[str, str], Channel] = OrderedDict()

    def get(self, session_id: str, channel_id: str) -> Channel:
        key = (session_id, channel_id)
        channel = self._channels.get(key)
        if channel is None:
            self._prune()
            channel = self._channels[key] = Channel()
        else:
            self._channels.move_to_end(key)
        channel.used = time.monotonic()
        return channel

    def _prune(self) -> None:
        """Forget the least recently used channels past their time or over the limit (a
        new channel is rare: once per publisher run and process)."""
        now = time.monotonic()
        while self._channels:
            key, oldest = next(iter(self._channels.items()))
            if len(self._channels) < self._limit and now - oldest.used < self._forget_after:
                return
            del self._channels[key]

    def __len__(self) -> int:
        return len(self._channels)
