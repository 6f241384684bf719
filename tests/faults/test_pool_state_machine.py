"""A hypothesis state machine over a pool: three publisher sessions behind one name
(docs/protocol.md, Pools), real actors in-process with stub outboxes.

Invariants, checked after every step:
- at most one wake in flight for the name, across all members;
- no member ever holds more tasks than its maxConcurrency;
- every request is answered at most once while running, and exactly once in the end.
"""

from __future__ import annotations

import queue

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from tests.support.machine import ActorMachine

SESSIONS = ("s1", "s2", "s3")
CAPACITY = 2


def spec(session: str) -> list[dict]:
    status = "active" if session == "s1" else "hibernating"
    return [{"name": "p", "type": "openai", "model": f"m-{session}", "pool": True,
             "maxConcurrency": CAPACITY, "initialStatus": status}]


class PoolMachine(ActorMachine):
    rounds = 5  # offer → release → released → dispatch

    def __init__(self) -> None:
        super().__init__()
        for session in SESSIONS:
            self.system.register(session, spec(session))
        self.open: dict[str, queue.Queue | None] = dict.fromkeys(SESSIONS)
        self.tokens: dict[str, int] = {}
        self.wakes: dict[str, str] = {}  # wake task id -> session
        self.infers: dict[str, tuple[str, bool]] = {}  # task id -> (session, streamed)

    # --- plumbing ------------------------------------------------------------------------

    def outboxes(self) -> dict[str, queue.Queue]:
        return {session: outbox for session, outbox in self.open.items() if outbox is not None}

    def on_task(self, session: str, task: dict) -> None:
        if task["kind"] == "wake":
            self.wakes[task["taskId"]] = session
        elif task["kind"] == "infer":
            self.infers[task["taskId"]] = (session, task["streaming"])
        else:  # cancel
            self.wakes.pop(task["taskId"], None)
            self.infers.pop(task["taskId"], None)

    def forget(self, session: str) -> None:
        """Its stream went: with no grace, its tasks failed or moved (new ids elsewhere)."""
        self.wakes = {t: s for t, s in self.wakes.items() if s != session}
        self.infers = {t: v for t, v in self.infers.items() if v[0] != session}

    # --- rules ---------------------------------------------------------------------------

    @rule(session=st.sampled_from(SESSIONS))
    def reconnect(self, session: str) -> None:
        if self.open[session] is not None:
            return
        self.system.register(session, spec(session))
        outbox: queue.Queue = queue.Queue()
        self.open[session] = outbox
        self.tokens[session] = self.system.open_stream(session, outbox, None)
        self.settle()

    @rule(session=st.sampled_from(SESSIONS))
    def drop_stream(self, session: str) -> None:
        outbox = self.open[session]
        if outbox is None:
            return
        self.read(session, outbox)
        self.system.close_stream(session, self.tokens[session])
        self.open[session] = None
        self.forget(session)
        self.settle()

    @rule(stream=st.booleans(), conversation=st.integers(0, 3), turn=st.integers(1, 3),
          affinity=st.sampled_from([None, "k1", "k2"]))
    def infer(self, stream: bool, conversation: int, turn: int, affinity: str | None) -> None:
        messages = [{"role": "user", "content": f"c{conversation}-{i}"} for i in range(turn)]
        self.request("p", {"messages": messages}, stream, affinity)

    @precondition(lambda self: bool(self.wakes))
    @rule(ok=st.booleans(), data=st.data())
    def answer_a_wake(self, ok: bool, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.wakes)))
        self.system.submit_result(task_id, self.wakes.pop(task_id),
                                  {"status": 200 if ok else 500})
        self.settle()

    @precondition(lambda self: bool(self.infers))
    @rule(data=st.data(), how=st.sampled_from(["ok", "fail", "retryable"]))
    def answer_an_infer(self, data: st.DataObject, how: str) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.infers)))
        session, streamed = self.infers.pop(task_id)
        if how == "fail":
            result: dict = {"error": {"message": "boom"}}
        elif how == "retryable":
            result = {"error": {"message": "refused", "retryable": True}}
        elif streamed:
            result = {"chunk": {"data": "{}", "done": True}}
        else:
            result = {"status": 200, "body": {}}
        self.system.submit_result(task_id, session, result)
        self.settle()

    @rule(session=st.sampled_from(SESSIONS), status=st.sampled_from(["active", "hibernating"]))
    def publisher_reports(self, session: str, status: str) -> None:
        self.system.set_status(session, [("p", status)])
        self.settle()

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def at_most_one_wake_in_flight_for_the_name(self) -> None:
        assert len(self.wakes) <= 1, self.wakes

    @invariant()
    def no_member_above_its_max_concurrency(self) -> None:
        for session in SESSIONS:
            held = [t for t, (s, _) in self.infers.items() if s == session]
            assert len(held) <= CAPACITY, (session, held)


PoolMachine.TestCase.settings = settings(
    max_examples=25, stateful_step_count=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pool_state_machine = PoolMachine.TestCase
