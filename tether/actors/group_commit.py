"""Group commit (issue 26, part 4): the registrations waiting in the supervisor's mailbox
behind the one it takes are written with it, in one transaction, a savepoint each
(`store.register_many`): a refused one (409) rolls back only its own writes, and the
commit, most of what a registration cost the store, is shared.

The supervisor reads its own mailbox for them: only the asks of the same kind queued
directly behind (a message of another kind keeps its place, and what follows it waits for
the next group), so the order the supervisor applies its messages in is the order they came.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

# Enough to share a commit among the registrations one busy turn of the event loop queues
# (the bench opens 50 sessions at a time), few enough that one group's transaction stays
# short.
GROUP_MAX = 64


class Group:
    """`first` (being handled) and the asks of its kind taken from behind it in `inbox`;
    `error_of(exc)` is what a caller is answered for an exception (None: the exception)."""

    def __init__(self, inbox: Any, first: Any,
                 error_of: Callable[[BaseException], BaseException | None],
                 limit: int = GROUP_MAX) -> None:
        self.first = first
        self._error_of = error_of
        self.waiting: list[Any] = []  # pykka envelopes: .message, .reply_to
        kind = type(first)
        # Only this actor takes from its inbox, so the head seen is the head taken.
        while len(self.waiting) < limit - 1:
            try:
                head = inbox.queue[0]
            except IndexError:
                break
            if type(head.message) is not kind or head.reply_to is None:
                break
            self.waiting.append(inbox.get_nowait())

    @property
    def messages(self) -> list[Any]:
        return [self.first, *(envelope.message for envelope in self.waiting)]

    def run(self, write: Callable[..., Any], *args: Any) -> Any:
        """`write(*args)` for the whole group: if it raises, every waiting ask is answered
        with the error (the first's is raised here)."""
        try:
            return write(*args)
        except Exception as exc:
            error = self._error_of(exc) or exc
            for envelope in self.waiting:
                envelope.reply_to.set_exception(exc_info=(type(error), error, None))
            raise

    def each(self, apply: Callable[..., Any], written: Iterable[tuple[Any, Any]]) -> list[Any]:
        """`apply(key, done)` for each written one: its result, or its exception, is its
        outcome (one failing leaves the others' answers as they are); a refused one's
        outcome is its refusal."""
        outcomes: list[Any] = []
        for key, done in written:
            if isinstance(done, BaseException):
                outcomes.append(done)
                continue
            try:
                outcomes.append(apply(key, done))
            except Exception as exc:
                outcomes.append(self._error_of(exc) or exc)
        return outcomes

    def answer(self, outcomes: list[Any]) -> Any:
        """Answer each waiting ask with its outcome (an exception is raised to its caller);
        return the first's, or raise it, as the actor's own handling of it."""
        for envelope, outcome in zip(self.waiting, outcomes[1:], strict=True):
            if isinstance(outcome, BaseException):
                envelope.reply_to.set_exception(
                    exc_info=(type(outcome), outcome, outcome.__traceback__))
            else:
                envelope.reply_to.set(outcome)
        if isinstance(outcomes[0], BaseException):
            raise outcomes[0]
        return outcomes[0]
