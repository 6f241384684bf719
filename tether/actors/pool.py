"""Pool: the members of one virtual Llm name and the requests in flight at them
(docs/protocol.md, Pools), a plain class the LlmActor holds. It keeps the records and their
bookkeeping (which member holds which task, who may still serve a request) and publishes
the members' load; the actor decides and sends. Members are records, not actors: their
sessions stay SessionActors.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping

from tether.actors import messages as m
from tether.actors import routing
from tether.observability import metrics
from tether.store.models import ACTIVE, INACTIVE

# Where the members' in-flight counts of a name go after each change (a snapshot the
# ActorSystem shows in reads without asking the actor).
InFlightBoard = Callable[[str, Mapping[str, int]], None]


class Member:
    """One publisher session serving this name."""

    __slots__ = ("link", "status", "max_concurrency", "live", "in_flight", "adopted_at",
                 "registered_status", "loss_predates_registration", "lost_at", "uncounted")

    def __init__(self, info: m.MemberInfo, adopted_at: float) -> None:
        self.link = info.session
        self.status = info.status
        self.max_concurrency = info.max_concurrency
        self.live = info.live
        self.in_flight: dict[str, None] = {}  # task ids, in dispatch order
        self.adopted_at = adopted_at
        self.registered_status = info.status
        # Set when a stream loss made us inactive although the lost stream predates the
        # latest registration: if the session then opens a stream, the publisher was
        # reconnecting and the loss was its old connection, noticed late.
        self.loss_predates_registration = False
        self.lost_at: float | None = None  # when its stream went, while it has none
        # After a restart: its session has not yet said which of its tasks still run, so
        # it counts as full until then (TasksInFlight).
        self.uncounted = False

    @property
    def session_id(self) -> str:
        return self.link.session_id

    def view(self) -> routing.MemberView:
        in_flight = len(self.in_flight)
        if self.uncounted and self.max_concurrency is not None:
            in_flight = max(in_flight, self.max_concurrency)
        return routing.MemberView(self.session_id, self.status, self.live, in_flight,
                                  self.max_concurrency)

    def lose_stream(self, now: float) -> None:
        self.live = False
        self.lost_at = self.lost_at or now

    def stream_lost(self, opened_at: float, now: float) -> bool:
        """Its stream (opened at `opened_at`) went: answers whether it goes inactive (it
        was active)."""
        self.lose_stream(now)
        if self.status != ACTIVE:
            return False
        self.loss_predates_registration = opened_at < self.adopted_at
        return True

    def stream_opened(self) -> bool:
        """Answers whether its registration's status is to be written back: a reconnect
        (registered again, its old stream's loss arrived late, and now the new stream is
        here) whose late loss made it inactive."""
        self.live, self.lost_at = True, None
        if self.status == INACTIVE and self.loss_predates_registration:
            self.loss_predates_registration = False
            return True
        return False


class Request:
    """A client request: waiting in the queue, or in flight as `task_id` on `member`."""

    __slots__ = ("infer", "arrived", "_affinity", "tried", "task_id", "member", "told_waking",
                 "why", "withdrawn")

    def __init__(self, infer: m.Infer, arrived: float) -> None:
        self.infer = infer
        self.arrived = arrived
        self._affinity: routing.Affinity | None = None
        self.tried: set[str] = set()  # members that returned it as `retryable`
        self.task_id: str | None = None
        self.member: str | None = None
        self.told_waking = False
        self.why: str | None = None  # "failover" or "retry" when it came back to the queue
        self.withdrawn = False  # its client left after dispatch (its task is cancelled)

    @property
    def affinity(self) -> routing.Affinity:
        """Hashed only when a pool has a choice to make: a lone member needs no routing."""
        if self._affinity is None:
            self._affinity = routing.affinity_of(self.infer.request, self.infer.affinity)
        return self._affinity


class Pool:
    """The members of `name` in join order, by session id, and the requests in flight by
    task id. After a restart every member counts as full until its session says which of
    the crashed predecessor's tasks still run there (`counted`), or the actor stops waiting
    (`count_all`)."""

    def __init__(self, name: str, infos: tuple[m.MemberInfo, ...], now: float,
                 restarted: bool = False, board: InFlightBoard | None = None) -> None:
        self._name = name
        self._members = {i.session.session_id: Member(i, now) for i in infos}
        self.tasks: dict[str, Request] = {}
        for member in self._members.values():
            member.uncounted = restarted
        self._board = board
        self._gauges: set[str] = set()  # members shown in tether_member_in_flight

    def __iter__(self) -> Iterator[Member]:
        return iter(self._members.values())

    def __len__(self) -> int:
        return len(self._members)

    def get(self, session_id: str | None) -> Member | None:
        return self._members.get(session_id or "")

    def views(self) -> list[routing.MemberView]:
        return [x.view() for x in self._members.values()]

    def counts(self) -> dict[str, int]:
        return {x.session_id: len(x.in_flight) for x in self._members.values()}

    def serving(self, tried: Collection[str] = ()) -> bool:
        """Some member not in `tried` is not inactive and has its stream open."""
        return any(x.status != INACTIVE and x.live and x.session_id not in tried
                   for x in self._members.values())

    def awake(self) -> bool:
        """Some member is `active` with its stream open: an alias's request is served here
        now (waiting for a slot if need be), never passed on."""
        return any(x.status == ACTIVE and x.live for x in self._members.values())

    def returning(self, now: float, grace: float) -> list[Member]:
        """Active members whose stream went less than `grace` seconds ago: it may be back."""
        return [x for x in self._members.values() if x.status == ACTIVE and not x.live
                and x.lost_at is not None and now - x.lost_at < grace]

    def may_serve(self, req: Request, returning: list[Member]) -> bool:
        """Some active member not yet tried by `req` has a stream open, or may have again."""
        return any(x.status == ACTIVE and (x.live or x in returning)
                   and x.session_id not in req.tried for x in self._members.values())

    def adopt(self, infos: tuple[m.MemberInfo, ...], adopted_at: float,
              registered: str | None) -> set[str]:
        """Take these members, in join order (the registration of `registered` applied
        at `adopted_at`); answers the session ids of those that left."""
        fresh: dict[str, Member] = {}
        for info in infos:
            member = self._members.get(info.session.session_id)
            if member is None:
                member = Member(info, adopted_at)
                # Back after it left (a withdraw, then a register): the tasks it still runs
                # hold their slots.
                member.in_flight.update((task_id, None) for task_id, req in self.tasks.items()
                                        if req.member == member.session_id)
            else:  # its own stream events reached us since it joined: keep its `live`
                member.link = info.session
                member.status = info.status
                member.max_concurrency = info.max_concurrency
            if info.session.session_id == registered:
                member.adopted_at = adopted_at
                member.registered_status = info.status
                member.loss_predates_registration = False
            fresh[info.session.session_id] = member
        gone = set(self._members) - set(fresh)
        self._members = fresh
        for session_id in gone:
            metrics.member_gone(self._name, session_id)
            self._gauges.discard(session_id)
        self.publish()
        return gone

    def publish(self) -> None:
        """The members' load, to the board and (for a pool of more than one) the gauges."""
        counts = self.counts()
        if len(counts) > 1:  # a `member` label for a pool member's session only
            metrics.member_in_flight(self._name, counts)
            self._gauges.update(counts)
        elif self._gauges:
            for session_id in self._gauges:
                metrics.member_gone(self._name, session_id)
            self._gauges.clear()
        if self._board is not None:
            self._board(self._name, counts)

    def closed(self) -> None:
        for member in self._members.values():
            metrics.member_gone(self._name, member.session_id)

    # --- tasks in flight -----------------------------------------------------------------

    def dispatched(self, req: Request, member: Member, task_id: str) -> None:
        req.task_id, req.member, req.why = task_id, member.session_id, None
        member.in_flight[task_id] = None
        self.tasks[task_id] = req
        self.publish()

    def take(self, task_id: str) -> Request | None:
        """The request of `task_id`, out of flight: its member's slot is free."""
        req = self.tasks.pop(task_id, None)
        if req is not None:
            member = self.get(req.member)
            if member is not None:
                member.in_flight.pop(task_id, None)
            req.task_id = req.member = None
            self.publish()
        return req

    def ended(self, task_id: str) -> None:
        if self.take(task_id) is None:
            # a crashed predecessor's task (TasksInFlight): its slot frees all the same
            for member in self._members.values():
                member.in_flight.pop(task_id, None)
            self.publish()

    def returned(self, task_id: str) -> Request | None:
        """Its member answered `retryable`: out of flight, and that member is tried."""
        req = self.tasks.get(task_id)
        if req is not None and req.member is not None:
            req.tried.add(req.member)
        return self.take(task_id)

    def draining_home(self, task_id: str, now: float) -> Request | None:
        """Its member's home process drains and sent nothing: out of flight, not tried (the
        publisher reconnects to a live process, where the member serves again); meanwhile
        its stream counts as lost (a waiter waits publisher_grace_s for it, as for any
        stream that may come back)."""
        req = self.tasks.get(task_id)
        member = self.get(req.member) if req is not None and req.member else None
        if member is not None:
            member.lose_stream(now)
        return self.take(task_id)

    def moved(self, task_id: str, new_task_id: str) -> bool:
        """The task goes on under a new id (its session's take-over): it keeps its slot."""
        req = self.tasks.pop(task_id, None)
        if req is None:
            return False
        req.task_id = new_task_id
        self.tasks[new_task_id] = req
        member = self.get(req.member)
        if member is not None and task_id in member.in_flight:
            del member.in_flight[task_id]
            member.in_flight[new_task_id] = None
        self.publish()
        return True

    def dispatched_for(self, reply: m.ReplyChannel) -> tuple[str, Member] | None:
        """The task (and its member) of the request answering on `reply`, if in flight."""
        for task_id, req in self.tasks.items():
            member = self.get(req.member)
            if req.infer.reply == reply and member is not None:
                return task_id, member
        return None

    def lost_with(self, member: Member) -> None:
        """Its home process died: its tasks with it, and their slots are free."""
        for task_id in list(member.in_flight):
            self.tasks.pop(task_id, None)
        member.in_flight.clear()
        self.publish()

    def counted(self, session_id: str, task_ids: tuple[str, ...]) -> bool:
        """The tasks the crashed predecessor left at this member hold their slots; answers
        whether every member is counted now."""
        member = self._members.get(session_id)
        if member is not None:
            for task_id in task_ids:
                member.in_flight.setdefault(task_id, None)
            member.uncounted = False
        self.publish()
        return not any(x.uncounted for x in self._members.values())

    def count_all(self) -> None:
        for member in self._members.values():
            member.uncounted = False
