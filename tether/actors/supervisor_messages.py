"""The messages the supervisor receives (tether/actors/supervisor.py), and those a
ClusterSupervisor (tether/cluster/supervisor.py) receives besides them. tether/actors/
messages.py names them all too (`m.Register`), with every other actor message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pykka

from tether.actors.records import ProxiesInFlight


@dataclass(frozen=True)
class Register:
    session_id: str | None
    providers: tuple[dict[str, Any], ...]
    key_name: str | None = None  # with auth on, the registering key (the pool-join rule)
    admin: bool = False


@dataclass(frozen=True)
class ChildFailed:
    """From a crashed child's on_failure: `kind` is "llm" or "session", `key` its name/id."""

    kind: str
    key: str
    ref: pykka.ActorRef = field(compare=False)
    # A public Llm's upstream calls still running, and the link they report their end
    # through: the restarted actor takes both over and keeps counting them.
    proxies: ProxiesInFlight | None = None
    # Sent again by the supervisor itself: its rebuild waits for the database (an outage
    # is no crash, and does not count toward the restart intensity).
    retry: bool = False


@dataclass(frozen=True)
class SessionStreamLost:
    session_id: str
    stream_opened_at: float  # time.monotonic() when the lost stream had been opened


@dataclass(frozen=True)
class SessionStreamOpened:
    """The session's stream `token` opened: once its LlmActors are told, the session is told
    (StreamAnnounced) and writes `hello`."""

    session_id: str
    token: int = 0
    session: Any = field(default=None, compare=False)  # the SessionActor's ref


@dataclass(frozen=True)
class ReportStatus:
    """A publisher's status report: every name is checked before any is applied."""

    session_id: str
    updates: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class WithdrawNames:
    """A publisher no longer serves these names (docs/protocol.md, Withdraw): its member of
    each leaves; a name left without members goes."""

    session_id: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class RetireExpired:
    cutoff: dt.datetime


# --- with a bus (tether.cluster) --------------------------------------------------------


@dataclass(frozen=True)
class OwnName:
    """This process took the lease of `name`: start its LlmActor from the store (answered
    with its ref, or None if the row is gone)."""

    name: str


@dataclass(frozen=True)
class ReloadLlm:
    """The members of `name` changed elsewhere (a registration, a take-over): if this
    process owns it, re-read them."""

    name: str
    registered: str | None = None  # as in Adopt


@dataclass(frozen=True)
class ReloadSession:
    """A session homed here registered on another process: re-read its names."""

    session_id: str


@dataclass(frozen=True)
class Evict:
    """A stream for this session opened on another process, which is its home now: end
    the stream here without marking its rows inactive. The supervisor forgets the session
    (answering its ref, or None); the session answers with the tasks that move to the new
    home (SendInfer and SendWake of those that produced nothing) and fails the others.
    With `forward`, the session lives on a few seconds, passing on to `forward` what is
    still sent to it (by an LlmActor that did not hear of the move yet)."""

    session_id: str
    forward: Callable[[Any], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class NamesLost:
    """Leases this process no longer holds (taken over, or handed over by a drain): stop
    their LlmActors; with `pass_on`, their waiting requests go to it (see Relinquish)."""

    names: tuple[str, ...]
    pass_on: Callable[[Any], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class EnsureOwners:
    """Each tick: every name of a session whose stream is here has a live owner. With
    `reassert`, Redis lost this process's keys (it restarted empty): write the homes of the
    sessions here again, and have their names' owners re-read their members."""

    reassert: bool = False


@dataclass(frozen=True)
class HomeSession:
    """A stream is opening here for a session that has no actor here: become its home
    (load its names from the store). Answered with its old home if that process is alive
    (the caller has it give the session up, and takes its tasks), else None."""

    session_id: str


# --- who receives what -------------------------------------------------------------------

SupervisorMessage: TypeAlias = (
    Register | ChildFailed | SessionStreamLost | SessionStreamOpened | ReportStatus
    | RetireExpired | WithdrawNames
)
# What a ClusterSupervisor takes besides the SupervisorMessages.
ClusterSupervisorMessage: TypeAlias = (
    OwnName | ReloadLlm | ReloadSession | Evict | NamesLost | EnsureOwners | HomeSession
)
