"""Failover on the session's side (docs/protocol.md, Pools): after a stream loss each
LlmActor is offered the session's tasks of its name that produced nothing yet; in a pool it
takes them to another member (ReleaseTasks). An Offers keeps what was offered, per Llm,
until that answer; the SessionActor holds one."""

from __future__ import annotations

import pykka

from tether.actors import messages as m
from tether.actors.open_tasks import OpenTask, OpenTasks
from tether.common.actor import tell


class Offers:
    def __init__(self) -> None:
        self._offered: dict[str, set[str]] = {}  # llm name -> tasks offered after a loss

    def offer(self, tasks: OpenTasks, session_id: str, session: pykka.ActorRef) -> None:
        """Offer each LlmActor its untouched tasks (a new loss replaces the last offer)."""
        self._offered = {}
        by_llm: dict[str, list[OpenTask]] = {}
        for task in tasks.in_frame_order():
            if task.untouched:
                by_llm.setdefault(task.llm_name, []).append(task)
        for name, mine in by_llm.items():
            ids = tuple(t.task_id for t in mine)
            if tell(mine[0].llm, m.TasksOffered(session_id, ids, session)):
                self._offered[name] = set(ids)

    def pending(self) -> set[str]:
        """Every task offered and not yet answered for."""
        return set().union(*self._offered.values())

    def answered(self, tasks: OpenTasks, name: str,
                 task_ids: tuple[str, ...]) -> tuple[list[OpenTask], set[str]]:
        """`name`'s LlmActor took `task_ids`: those that still produced nothing leave
        `tasks` (and its replay) at once; returned with the offered ids that stay."""
        offered = self._offered.pop(name, set())
        wanted = set(task_ids)
        released = [t for t in tasks.in_frame_order() if t.task_id in wanted and t.untouched]
        for task in released:
            tasks.remove(task)
        return released, offered - wanted
