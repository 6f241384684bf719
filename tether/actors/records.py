"""The plain records actor messages carry (tether/actors/messages.py): how an actor
describes an Llm, reaches a session, or hands over calls in flight. No actor receives them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pykka

from tether.common.actor import Parent


@dataclass(frozen=True)
class LlmState:
    """What an LlmActor keeps of its row: enough to route without touching the store."""

    name: str
    kind: str
    session_id: str | None
    status: str


@dataclass(frozen=True)
class SessionLink:
    """How an LlmActor reaches the SessionActor of its owning session."""

    session_id: str
    slot: int
    ref: pykka.ActorRef = field(compare=False)
    home: str | None = None  # with a bus: the process holding the session (in task ids)


@dataclass(frozen=True)
class MemberInfo:
    """One member of a name (docs/protocol.md, Pools), as the supervisor hands it to the
    LlmActor; `live` says whether the member's session has a stream open right now."""

    session: SessionLink
    status: str
    max_concurrency: int | None
    live: bool


@dataclass(frozen=True)
class AliasRoute:
    """An infer for an alias (docs/protocol.md, Aliases), at one of its targets: the choice
    and the dispatch are one step at each target's owner. A target that can serve now takes
    it; one asleep starts its wake and passes it on; one that cannot serve passes it on.
    `rest`: the targets still to ask, in order; `waiting`: the first target passed over
    because it wakes, where the request waits when no target can serve now (`wait`: this
    is that last stop, the request waits here as a direct one); `failover`: a second try
    after a failure, which never waits for a wake."""

    alias: str
    rest: tuple[str, ...] = ()
    waiting: str | None = None
    wait: bool = False
    failover: bool = False


@dataclass(frozen=True)
class ProxiesInFlight:
    """A public Llm's upstream calls still running when its actor crashed, and the link they
    report their end through: the restarted actor takes both over (ChildFailed)."""

    home: Parent = field(compare=False)  # where the running calls report
    task_ids: tuple[str, ...] = ()
