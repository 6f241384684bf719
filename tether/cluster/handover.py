"""What one process hands another (docs/protocol.md, Several hub processes): the tasks of a
session that moved (a take-over: renamed under ids of their new home, passed on to it, or
answered where nobody can take them), and a draining process's names."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

import pykka

from tether import errors
from tether.actors import messages as m
from tether.actors.task_ids import new_task_id
from tether.cluster.bus import Bus
from tether.cluster.codec import Address
from tether.cluster.leases import Homes, Leases
from tether.cluster.owners import Owners
from tether.cluster.proxies import RemoteReply
from tether.common.actor import tell

log = logging.getLogger("tether.router")


class Router(Protocol):
    """What a hand-over needs of the router (tether.cluster.router.BusRouter)."""

    process: str
    bus: Bus
    homes: Homes
    leases: Leases
    owners: Owners
    draining: bool

    def send_tell(self, process: str, address: Address, message: Any,
                  answer_loss: bool = True) -> bool: ...

    def supervise(self, process: str, op: str, key: str,
                  registered: str | None = None) -> None: ...


class Handover:
    def __init__(self, router: Router) -> None:
        self._router = router
        self._heirs: list[str] = []  # draining: the live processes its names went to

    def renamed(self, tasks: Sequence[m.SendInfer | m.SendWake], slot: int,
                home: str) -> tuple[m.SendInfer | m.SendWake, ...]:
        """Tasks of a session that moved to `home` (its `slot` there), under ids of that
        home; their LlmActors are told (TaskMoved), so they count them under those ids."""
        out = []
        for sent in tasks:
            moved = dataclasses.replace(sent, task_id=new_task_id(slot, home))
            tell(sent.llm, m.TaskMoved(sent.task_id, moved.task_id))
            out.append(moved)
        return tuple(out)

    def forward_to_home(self, session_id: str, message: m.SendInfer | m.SendWake) -> bool:
        """A task for a session no longer here (its stream opened on another process) goes
        to its home now, as a task taken over; False if it has no live home elsewhere."""
        try:
            home = self._router.homes.live_home(session_id)
        except Exception:  # noqa: BLE001 - Redis down: nowhere to send it
            home = None
        if home is None or home.process == self._router.process:
            return False
        adopt = m.AdoptTasks(self.renamed((message,), home.slot, home.process))
        log.info("task %s of session %s goes to its new home %s", message.task_id,
                 session_id, home.process)
        self._router.send_tell(home.process, ("session", home.process, session_id), adopt)
        return True

    def undeliverable(self, message: Any, session_id: str = "") -> None:
        """A session that is not here (any more): its new home takes the task, or whoever
        waits on it is answered."""
        if isinstance(message, (m.SendInfer, m.SendWake)) \
                and self.forward_to_home(session_id, message):
            return
        if isinstance(message, m.SendInfer):
            message.reply.put(m.Failed(errors.PUBLISHER_OFFLINE(name=message.llm_name)))
            tell(message.llm, m.TaskEnded(message.task_id))
        elif isinstance(message, m.SendWake):
            tell(message.llm, m.WakeFailed(message.task_id,
                                           errors.PUBLISHER_OFFLINE(name=message.llm_name)))
        elif isinstance(message, m.CountTasks):
            # Its owner still links to this process, where the session no longer is: the
            # owner's re-read of its home was lost (or not made yet); have it made again.
            with contextlib.suppress(Exception):  # Redis down: the next period asks again
                owner = self._router.owners.owner(message.name)
                if owner is not None:
                    self._router.supervise(owner, "reload_llm", message.name)

    def names(self, supervisor: pykka.ActorRef) -> None:
        """This process drains (SIGTERM): before it stops answering, the names it owns go
        to live processes (docs/protocol.md, Shutdown): their leases are released, and the
        requests waiting here for them on behalf of other processes go to an heir, which
        takes the name on that infer (and counts the tasks still running, as any new
        owner). This process takes no name any more, so nothing comes back."""
        self._router.draining = True
        try:
            bus, me = self._router.bus, self._router.process
            procs = sorted(str(p) for p in bus.redis.smembers(bus.key("procs")))
            heirs = sorted(bus.alive([p for p in procs if p != me]))
        except Exception:  # noqa: BLE001 - Redis down: the leases expire with this process
            log.warning("drain: Redis does not answer; names go when their leases expire")
            return
        if not heirs:
            return
        self._heirs = heirs
        names = sorted(self._router.leases.owned)
        for name in names:
            heir = self._heir(name)
            with contextlib.suppress(Exception):
                self._router.leases.release(name)
            tell(supervisor, m.NamesLost(
                (name,), functools.partial(self._pass_on, name, heir)))
        if names:
            log.info("drain: handed %d name(s) over to %s", len(names), ", ".join(heirs))

    def _heir(self, name: str) -> str:
        return self._heirs[zlib.crc32(name.encode()) % len(self._heirs)]

    def to_heir(self, name: str, infer: m.Infer) -> bool:
        """An infer another process forwarded here, for a name this draining process no
        longer owns (the sender's owner cache predates the hand-over; nobody may have taken
        the name yet): on to its heir, which takes it (a live process never waits here for
        an acknowledgement that does not come, nor is answered shutting_down). False with
        no heir (Redis was down at the drain)."""
        if not self._heirs:
            return False
        self._pass_on(name, self._heir(name), infer)
        return True

    def _pass_on(self, name: str, heir: str, infer: m.Infer) -> None:
        """A request that waited here for a name handed over: a client of another process
        is served by the heir; one of this process (which is going) is answered as before."""
        if isinstance(infer.reply, RemoteReply):
            self._router.send_tell(heir, ("llm", heir, name), infer)
        else:
            infer.reply.put(m.Failed(errors.SHUTTING_DOWN()))
