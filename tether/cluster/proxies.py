"""Stand-ins for live objects of another process: actors keep calling `tell`, `ask` and
`put` and never learn that the other end is remote (docs/architecture.md: resources and actors never
know whether the actor they talk to is local)."""

from __future__ import annotations

from typing import Any, Protocol

import pykka

from tether import errors
from tether.cluster.codec import Address
from tether.store import llms as store


class Sender(Protocol):
    """What the proxies send through (tether.cluster.router.BusRouter)."""

    def send_tell(self, process: str, address: Address, message: Any,
                  answer_loss: bool = True) -> bool: ...

    def send_ask(self, process: str, address: Address, message: Any) -> pykka.Future[Any]: ...

    def tell_llm(self, name: str, message: Any, owner: str | None = None) -> None: ...

    def ask_llm(self, name: str, message: Any,
                owner: str | None = None) -> pykka.Future[Any]: ...

    def send_reply(self, process: str, request_id: str, item: Any) -> None: ...

    def send_cancelled(self, process: str, request_id: str, reason: str) -> None: ...


class RemoteSession:
    """A SessionActor homed on another process (a fixed address: a session's home changes
    only by a take-over, after which its LlmActors get new links)."""

    __slots__ = ("_sender", "process", "session_id")

    def __init__(self, sender: Sender, process: str, session_id: str) -> None:
        self._sender = sender
        self.process = process
        self.session_id = session_id

    @property
    def actor_urn(self) -> str:
        return f"session:{self.process}:{self.session_id}"

    @property
    def address(self) -> Address:
        return ("session", self.process, self.session_id)

    def tell(self, message: Any) -> None:
        """Nobody heard it (its home is gone, or Redis is down): as for a dead local actor,
        the caller (common.actor.tell) is told so and answers for it, rather than waiting
        on a task nobody got."""
        if not self._sender.send_tell(self.process, self.address, message):
            raise pykka.ActorDeadError(f"{self.actor_urn}: nobody heard it")

    def ask(self, message: Any, block: bool = True, timeout: float | None = None) -> Any:
        future = self._sender.send_ask(self.process, self.address, message)
        return future if not block else future.get(timeout=timeout)

    def is_alive(self) -> bool:
        return True  # as far as we know: a dead home is the liveness monitor's business

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteSession) and other.address == self.address

    def __hash__(self) -> int:
        return hash(self.address)


class RemoteLlm:
    """The LlmActor of a name on another process. With `owner` (a request's proxy, from
    BusRouter.llm_ref), sent to the owner found for it, or to the name's owner now if
    nobody listens there any more; without (an LlmActor a message names, held for a task's
    life), to the name's owner at each send, so a session's reports reach the new owner
    after a take-over. With no live owner a tell is dropped (at-most-once; whoever waits
    has a deadline)."""

    __slots__ = ("_sender", "name", "owner")

    def __init__(self, sender: Sender, name: str, owner: str | None = None) -> None:
        self._sender = sender
        self.name = name
        self.owner = owner

    @property
    def actor_urn(self) -> str:
        return f"llm:{self.name}"

    def tell(self, message: Any) -> None:
        self._sender.tell_llm(self.name, message, self.owner)

    def ask(self, message: Any, block: bool = True, timeout: float | None = None) -> Any:
        future = self._sender.ask_llm(self.name, message, self.owner)
        return future if not block else future.get(timeout=timeout)

    def is_alive(self) -> bool:
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteLlm) and other.name == self.name

    def __hash__(self) -> int:
        return hash(("llm", self.name))


class RemoteReply:
    """The reply channel of a request waiting on another process: every `put` is sent
    there, keyed by the request's id. Equal to any other proxy of the same request (a
    Withdraw finds its Infer by it)."""

    __slots__ = ("_sender", "process", "request_id")

    def __init__(self, sender: Sender, process: str, request_id: str) -> None:
        self._sender = sender
        self.process = process
        self.request_id = request_id

    def put(self, item: Any) -> None:
        self._sender.send_reply(self.process, self.request_id, item)

    def cancelled(self, reason: str) -> None:
        """The task was cancelled here: the requester's metered channel records it."""
        self._sender.send_cancelled(self.process, self.request_id, reason)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, RemoteReply) and other.process == self.process
                and other.request_id == self.request_id)

    def __hash__(self) -> int:
        return hash((self.process, self.request_id))


def failed_future(error: BaseException) -> pykka.Future[Any]:
    future: pykka.Future[Any] = pykka.ThreadingFuture()
    future.set_exception((type(error), error, None))
    return future


def unowned(name: str) -> errors.TetherError:
    """Why an infer for `name` finds no owner: the name is gone (withdrawn, retired), or
    nobody can serve it now."""
    try:
        gone = store.get(name) is None
    except Exception:  # noqa: BLE001 - the database is away: it may exist
        gone = False
    return errors.LLM_NOT_FOUND(name=name) if gone else errors.PUBLISHER_OFFLINE(name=name)
