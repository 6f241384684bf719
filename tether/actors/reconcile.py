"""What an LlmActor knows of the tasks its members' sessions hold (docs/protocol.md, Pools
and Several hub processes: Lost messages), a plain class the LlmActor holds.

- An inventory: an actor restarted, or started on a lease taken over, hears from each
  member's session which tasks still run there; a member takes no task until then (or
  until INVENTORY_TIMEOUT_S, for a session gone or a message lost), so no member goes
  above its maxConcurrency.
- A reconciliation (with a bus, every reconcile_interval_s): the sessions of busy or
  offline members are asked which of the tasks counted in flight they hold (CountTasks),
  and their answers correct the count. A counted task not held in two answers in a row is
  lost: a message still on its way when the first question went (a task moved under a new
  id, say) is not taken for a loss.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from tether.actors import messages as m
from tether.actors.open_tasks import OpenTasks
from tether.actors.pool import Member, Pool, Request
from tether.common.runtime import Timer

log = logging.getLogger("tether.llm")

# How long a restarted LlmActor waits for its members' sessions to report the tasks its
# predecessor left running (they answer at once; this covers a message lost on the bus).
INVENTORY_TIMEOUT_S = 5.0
ANSWERS_MISSING = 2


class Reconciliation:
    def __init__(self, name: str, pool: Pool, restarted: bool,
                 arm: Callable[[float], Timer]) -> None:
        self._name = name
        self._pool = pool
        self._missing: dict[str, int] = {}  # task id -> answers in a row without it
        self._inventory: Timer | None = None
        if restarted and pool:
            self._inventory = arm(INVENTORY_TIMEOUT_S)

    def to_ask(self) -> list[tuple[Member, tuple[str, ...]]]:
        """Members with tasks counted in flight, or counted offline (a lost StreamOpened),
        each with the tasks to ask about. An idle member with its stream open costs
        nothing."""
        counted = {t for x in self._pool for t in x.in_flight}
        self._missing = {t: n for t, n in self._missing.items() if t in counted}
        return [(x, tuple(x.in_flight)) for x in self._pool
                if x.link.ref is not None and (x.in_flight or not x.live)]

    def answered(self, msg: m.TasksInFlight) -> tuple[bool, list[Request]]:
        """A session's answer (to an inventory, or to CountTasks): the tasks it holds are
        counted. To CountTasks, a counted task lost is out of flight: answered there (its
        TaskEnded was lost), its slot frees; never answered (the task, its release or its
        retryable return was lost: nothing ran to an answer), its request is returned to
        go back to the head of the queue, unless its client left. Also returned: whether
        its stream is open while counted offline (its StreamOpened was lost)."""
        member = self._pool.get(msg.session_id)
        opened, again = False, []
        if member is not None and msg.asked is not None:
            opened = bool(msg.stream_open) and not member.live
            lost = self._lost(member, msg)
            if lost or opened:
                log.warning("llm=%s reconciliation with session %s: %d task(s) counted "
                            "there were lost on the bus%s", self._name, msg.session_id,
                            len(lost), "; its stream is open" if opened else "")
            for task_id in lost:
                req = self._pool.take(task_id)
                if req is None or req.withdrawn or task_id in msg.answered:
                    self._pool.ended(task_id)  # a slot counted with no request: free it
                else:
                    req.why = "retry"
                    again.append(req)
        if self._pool.counted(msg.session_id, msg.task_ids) and self._inventory is not None:
            self._inventory.cancel()
            self._inventory = None
        return opened, again

    def timed_out(self) -> None:
        """Members whose sessions did not report after a restart take tasks again."""
        self._inventory = None
        self._pool.count_all()

    def _lost(self, member: Member, answer: m.TasksInFlight) -> list[str]:
        if member.live and not answer.stream_open:
            # Counted live here, no stream there: the session is moving to another process
            # (a take-over's new home holds nothing until the old one hands over, up to 5 s),
            # and a request put back now would go to the session it is leaving. Counting
            # resumes once the answer comes with the stream open (or the loss is heard).
            return []
        held = set(answer.task_ids)
        out = []
        for task_id in answer.asked or ():
            if task_id in held or task_id not in member.in_flight:
                self._missing.pop(task_id, None)
                continue
            self._missing[task_id] = self._missing.get(task_id, 0) + 1
            if self._missing[task_id] >= ANSWERS_MISSING:
                del self._missing[task_id]
                out.append(task_id)
        return out


def inventory(session_id: str, tasks: OpenTasks, stream_open: bool,
              msg: m.CountTasks) -> m.TasksInFlight:
    """A session's answer to a reconciliation: the tasks of that Llm it holds, which of the
    asked ones it answered, and whether its stream is open."""
    held = tuple(t.task_id for t in tasks.all() if t.llm_name == msg.name and t.kind == "infer")
    return m.TasksInFlight(session_id, held, msg.asked, tasks.were_answered(msg.asked),
                           stream_open)
