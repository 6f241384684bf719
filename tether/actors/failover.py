"""Failover on the LlmActor's side (docs/protocol.md, Pools: Failover): which of a lost
member's offered tasks may move to another member, and the requests the released ones go
back to the queue as, and a task its member's draining home refused. Plain functions over
the actor's Pool."""

from __future__ import annotations

import time

from tether import errors
from tether.actors import messages as m
from tether.actors.pool import Pool, Request
from tether.actors.waiting import Waiting


def movable(pool: Pool, session_id: str, task_ids: tuple[str, ...],
            now: float) -> tuple[str, ...]:
    """The offered tasks that move: all of them if another member (not inactive, stream
    open) can take them, else none (they stay, as for a single publisher)."""
    member = pool.get(session_id)
    if member is not None:  # the offer outran the StreamLost the supervisor forwards
        member.lose_stream(now)
    if not pool.serving(tried={session_id}):
        return ()
    return tuple(t for t in task_ids if t in pool.tasks)


def released(pool: Pool, task_ids: tuple[str, ...]) -> list[Request]:
    """The requests of the released tasks, in their order, marked as a failover."""
    moved = []
    for task_id in task_ids:
        req = pool.take(task_id)
        if req is not None:
            req.why = "failover"
            moved.append(req)
    return moved


def waits_for_draining_home(pool: Pool, queue: Waiting, msg: m.TaskReturned) -> bool:
    """`shutting_down` is no answer for a client of a live process: the member's home
    drains, so the member is lost for now and the request waits (put back) for it or
    another member. True when `msg` was that and its request is back in `queue`."""
    if msg.error.code != errors.SHUTTING_DOWN.code:
        return False
    req = pool.draining_home(msg.task_id, time.monotonic())
    if req is None:
        return False
    req.why = "retry"
    queue.put_back([req])
    return True
