"""What the hypothesis state machines over the real actors share: a fresh ActorSystem per
run, every step settled before the invariants are checked, the reply channels of all
requests, and a teardown that drains the hub and checks every request had one answer."""

from __future__ import annotations

import queue
import shutil
import tempfile
import time
from pathlib import Path

from hypothesis.stateful import RuleBasedStateMachine, invariant

from tests.support.actors import parse, settle, take, task_payloads
from tether.actors import messages as m
from tether.actors.system import ActorSystem
from tether.config import Settings

TERMINAL = (m.Completed, m.Failed, m.StreamDone)


class ActorMachine(RuleBasedStateMachine):
    """Subclasses name their outboxes in `outboxes()` and follow the tasks in `on_task()`."""

    rounds = 5  # of Pings in a settle: as many as the machine's longest cascade has hops

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp())
        config = Settings(database_url=f"sqlite:///{self.tmp / 'machine.db'}",
                          publisher_grace_s=0, wake_timeout_s=60, infer_timeout_s=60)
        self.system = ActorSystem(config).start()
        self.replies: list[tuple[queue.Queue, list]] = []

    def outboxes(self) -> dict[str, queue.Queue]:
        """The open streams' outboxes, by session."""
        raise NotImplementedError

    def on_task(self, session: str, task: dict) -> None:
        """A task frame the hub wrote to `session`'s stream."""
        raise NotImplementedError

    def settle(self) -> None:
        """Let every cascade of messages run out, then read what it wrote and answered."""
        settle(self.system, self.rounds)
        for session, outbox in self.outboxes().items():
            self.read(session, outbox)
        for reply, seen in self.replies:
            seen.extend(take(reply))

    def read(self, session: str, outbox: queue.Queue) -> None:
        for task in task_payloads(parse(take(outbox))):
            self.on_task(session, task)

    def request(self, name: str, body: dict, stream: bool, affinity: str | None = None) -> None:
        """An infer from a client; its reply channel is followed to the end."""
        reply = self.system.infer(name, {**body, "stream": stream}, stream,
                                  "chat/completions", affinity)
        self.replies.append((reply, []))
        self.settle()

    @invariant()
    def no_request_answered_twice(self) -> None:
        for _, seen in self.replies:
            assert sum(isinstance(e, TERMINAL) for e in seen) <= 1, seen

    def teardown(self) -> None:
        try:
            self.system.drain()
            # The drain's cascade (a refused dispatch per waiting request) may outlast a
            # settle: wait, with a deadline, until every request has its answer.
            deadline = time.monotonic() + 10
            while True:
                self.settle()
                if all(any(isinstance(e, TERMINAL) for e in seen) for _, seen in self.replies) \
                        or time.monotonic() > deadline:
                    break
            for _, seen in self.replies:
                assert sum(isinstance(e, TERMINAL) for e in seen) == 1, seen
        finally:
            self.system.stop()
            shutil.rmtree(self.tmp, ignore_errors=True)
