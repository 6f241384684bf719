"""A hypothesis state machine over the real actors (in-process, stub outbox).

Invariants, checked after every step:
- at most one wake in flight per Llm;
- every request is answered at most once while running, and exactly once in the end;
- a row owned by a live stream is never `inactive`.
"""

from __future__ import annotations

import queue

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import invariant, precondition, rule

from tests.support.machine import ActorMachine
from tether.store import llms as store

PROVIDERS = [
    {"name": "awake", "type": "openai", "model": "m", "initialStatus": "active"},
    {"name": "sleepy", "type": "openai", "model": "m", "initialStatus": "hibernating"},
]
REQ = {"messages": [{"role": "user", "content": "hi"}]}


class HubMachine(ActorMachine):
    rounds = 3  # llm → session → llm → session

    def __init__(self) -> None:
        super().__init__()
        self.system.register("s1", PROVIDERS)
        self.outbox: queue.Queue | None = None
        self.token = 0
        self.wakes: dict[str, set[str]] = {"awake": set(), "sleepy": set()}
        self.infers: dict[str, bool] = {}  # task id -> streamed

    # --- plumbing ------------------------------------------------------------------------

    def outboxes(self) -> dict[str, queue.Queue]:
        return {"s1": self.outbox} if self.outbox is not None else {}

    def on_task(self, session: str, task: dict) -> None:
        if task["kind"] == "wake":
            self.wakes[task["llmName"]].add(task["taskId"])
        elif task["kind"] == "infer":
            self.infers[task["taskId"]] = task["streaming"]
        else:  # cancel
            for wakes in self.wakes.values():
                wakes.discard(task["taskId"])
            self.infers.pop(task["taskId"], None)

    # --- rules ---------------------------------------------------------------------------

    @precondition(lambda self: self.outbox is None)
    @rule()
    def reconnect(self) -> None:
        """What a publisher does after any loss: register again, then open the stream."""
        self.system.register("s1", PROVIDERS)
        self.outbox = queue.Queue()
        self.token = self.system.open_stream("s1", self.outbox, None)
        self.settle()

    @precondition(lambda self: self.outbox is not None)
    @rule()
    def drop_stream(self) -> None:
        self.system.close_stream("s1", self.token)
        self.settle()
        self.outbox = None
        # With publisher_grace_s = 0 every open task is failed at once.
        self.wakes = {name: set() for name in self.wakes}
        self.infers = {}

    @rule(name=st.sampled_from(["awake", "sleepy"]), stream=st.booleans())
    def infer(self, name: str, stream: bool) -> None:
        self.request(name, REQ, stream)

    @precondition(lambda self: any(self.wakes.values()))
    @rule(ok=st.booleans(), data=st.data())
    def answer_a_wake(self, ok: bool, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(n for n, w in self.wakes.items() if w)))
        task_id = data.draw(st.sampled_from(sorted(self.wakes[name])))
        self.system.submit_result(task_id, "s1", {"status": 200 if ok else 500})
        self.wakes[name].discard(task_id)
        self.settle()

    @precondition(lambda self: bool(self.infers))
    @rule(data=st.data(), fail=st.booleans())
    def answer_an_infer(self, data: st.DataObject, fail: bool) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.infers)))
        if fail:
            result: dict = {"error": {"message": "boom"}}
        elif self.infers[task_id]:
            result = {"chunk": {"data": "{}", "done": True}}
        else:
            result = {"status": 200, "body": {}}
        self.system.submit_result(task_id, "s1", result)
        del self.infers[task_id]
        self.settle()

    @rule(status=st.sampled_from(["active", "hibernating"]))
    def publisher_reports(self, status: str) -> None:
        self.system.set_status("s1", [("sleepy", status)])
        self.settle()

    @rule()
    def heartbeat(self) -> None:
        self.system.heartbeat("s1")
        self.settle()

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def at_most_one_wake_in_flight_per_llm(self) -> None:
        for name, wakes in self.wakes.items():
            assert len(wakes) <= 1, (name, wakes)

    @invariant()
    def a_row_owned_by_a_live_stream_is_never_inactive(self) -> None:
        if self.outbox is not None:
            for row in store.list_all():
                assert row.status != "inactive", row.to_wire()


HubMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_hub_state_machine = HubMachine.TestCase
