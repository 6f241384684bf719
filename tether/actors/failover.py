"""Failover on the LlmActor's side (docs/protocol.md, Pools: Failover): which of a lost
member's offered tasks may move to another member, and the requests the released ones go
back to the queue as. Plain functions over the actor's Pool."""

from __future__ import annotations

from tether.actors.pool import Pool, Request


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
