"""Fault injection on the bus (tests only: POST /_faults/drop exists only with
`fault_injection` on): lose the next messages of a kind this process sends, as Redis would
(docs/protocol.md, Lost messages)."""

from __future__ import annotations

import logging

log = logging.getLogger("tether.router")


class Drops:
    """Message kind (a message class such as "TaskEnded", a supervisor op such as
    "reload_llm", "reply:<event class>", "call:<fn>" or "ans:<fn>") -> how many more to lose, and
    whether their sender is told they were heard (lost in flight) or not (nobody listens)."""

    def __init__(self) -> None:
        self._rules: dict[str, tuple[int, bool]] = {}

    def __bool__(self) -> bool:
        return bool(self._rules)

    def add(self, kind: str, count: int, heard: bool) -> None:
        self._rules[kind] = (count, heard)

    def take(self, kind: str) -> bool | None:
        """None: send it; else it is lost, and this is what its sender is told."""
        rule = self._rules.get(kind)
        if rule is None:
            return None
        count, heard = rule
        if count <= 1:
            del self._rules[kind]
        else:
            self._rules[kind] = (count - 1, heard)
        log.warning("fault injection: a %s message is lost", kind)
        return heard
