"""Stand-ins for live objects of another process: actors keep calling `tell`, `ask` and
`put` and never learn that the other end is remote (docs/architecture.md: resources and actors never
know whether the actor they talk to is local)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pykka

if TYPE_CHECKING:
    from tether.cluster.router import BusRouter


class RemoteSession:
    """A SessionActor homed on another process (a fixed address: a session's home changes
    only by a take-over, after which its LlmActors get new links)."""

    __slots__ = ("_router", "process", "session_id")

    def __init__(self, router: BusRouter, process: str, session_id: str) -> None:
        self._router = router
        self.process = process
        self.session_id = session_id

    @property
    def actor_urn(self) -> str:
        return f"session:{self.process}:{self.session_id}"

    @property
    def address(self) -> tuple[str, str, str]:
        return ("session", self.process, self.session_id)

    def tell(self, message: Any) -> None:
        self._router.send_tell(self.process, self.address, message)

    def ask(self, message: Any, block: bool = True, timeout: float | None = None) -> Any:
        future = self._router.send_ask(self.process, self.address, message)
        return future if not block else future.get(timeout=timeout)

    def is_alive(self) -> bool:
        return True  # as far as we know: a dead home is the liveness monitor's business

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RemoteSession) and other.address == self.address

    def __hash__(self) -> int:
        return hash(self.address)


class RemoteLlm:
    """The LlmActor of a name, wherever its owner is now: the owner is looked up at each
    send, so a session's reports reach the new owner after a take-over. With no live owner
    a tell is dropped (at-most-once; whoever waits has a deadline)."""

    __slots__ = ("_router", "name")

    def __init__(self, router: BusRouter, name: str) -> None:
        self._router = router
        self.name = name

    @property
    def actor_urn(self) -> str:
        return f"llm:{self.name}"

    def tell(self, message: Any) -> None:
        self._router.tell_llm(self.name, message)

    def ask(self, message: Any, block: bool = True, timeout: float | None = None) -> Any:
        future = self._router.ask_llm(self.name, message)
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

    __slots__ = ("_router", "process", "request_id")

    def __init__(self, router: BusRouter, process: str, request_id: str) -> None:
        self._router = router
        self.process = process
        self.request_id = request_id

    def put(self, item: Any) -> None:
        self._router.send_reply(self.process, self.request_id, item)

    def cancelled(self, reason: str) -> None:
        """The task was cancelled here: the requester's metered channel records it."""
        self._router.send_cancelled(self.process, self.request_id, reason)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, RemoteReply) and other.process == self.process
                and other.request_id == self.request_id)

    def __hash__(self) -> int:
        return hash((self.process, self.request_id))


def failed_future(error: BaseException) -> pykka.Future:
    future: pykka.Future = pykka.ThreadingFuture()
    future.set_exception((type(error), error, None))
    return future
