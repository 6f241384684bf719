"""The client-side state machine of one infer, without HTTP: InferState's rules, the Attempt
the relay reads them through (and stops a request by), the stream body that renders them,
and the MeteredReply that meters the same reading.

The e2e tests (tests/e2e/test_infer.py, test_wake.py, test_openai.py) show the rules on
the wire; these name each rule and fail when one breaks."""

from __future__ import annotations

import json
import logging
import queue
from typing import Any

import pytest

from tether import errors
from tether.actors import messages as m
from tether.actors.infer_state import ClientGone, InferState, Step
from tether.actors.reply import MeteredReply
from tether.common import sse
from tether.http import streams
from tether.http.attempt import Attempt
from tether.http.openai_render import OpenAIRenderer

CHUNKS = m.Chunks(('{"n":1}', '{"n":2}'))
DONE = "data: [DONE]\n\n"


# --- InferState: what the events say ------------------------------------------------------


def test_the_latest_dispatch_is_the_task_to_cancel() -> None:
    state = InferState()
    assert state.apply(m.Dispatched("t-1")) is Step.WAIT
    assert state.apply(m.Dispatched("t-2")) is Step.WAIT  # the task moved
    assert state.dispatched == m.Dispatched("t-2")


def test_waking_lasts_until_the_dispatch_or_a_chunk() -> None:
    state = InferState()
    assert state.apply(m.WakePending()) is Step.WAIT
    assert state.waking
    state.apply(m.Dispatched("t-1"))
    assert not state.waking
    state.apply(m.WakePending())
    assert state.apply(CHUNKS) is Step.PART
    assert not state.waking


@pytest.mark.parametrize("event", [m.Completed(200, {"a": 1}), m.StreamDone(),
                                   m.Failed(errors.HUB_BUSY())], ids=type)
def test_each_end_ends_the_answer_as_it_came(event: Any) -> None:
    state = InferState()
    assert state.apply(event) is Step.END
    assert state.end == event


def test_chunks_are_the_body_a_final_2xx_does_not_repeat() -> None:
    state = InferState()
    state.apply(CHUNKS)
    assert state.apply(m.Completed(201, {"whole": "answer"})) is Step.END
    assert state.end == m.Completed(201, None)
    assert state.outcome == (201, None)  # the status still counts


def test_a_non_2xx_after_chunks_keeps_its_body() -> None:
    state = InferState()
    state.apply(CHUNKS)
    state.apply(m.Completed(500, {"error": "boom"}))
    assert state.end == m.Completed(500, {"error": "boom"})


def test_without_chunks_the_final_body_is_the_answer() -> None:
    state = InferState()
    state.apply(m.Dispatched("t-1"))
    state.apply(m.Completed(200, {"whole": "answer"}))
    assert state.end == m.Completed(200, {"whole": "answer"})


def test_after_the_end_nothing_changes() -> None:
    state = InferState()
    state.apply(m.Dispatched("t-1"))
    state.apply(m.StreamDone())
    for late in (m.Dispatched("t-2"), m.WakePending(), CHUNKS, m.Failed(errors.HUB_BUSY()),
                 ClientGone()):
        assert state.apply(late) is Step.WAIT
    assert state == InferState(dispatched=m.Dispatched("t-1"), end=m.StreamDone(),
                               outcome=(200, None))


def test_a_client_gone_still_follows_its_task() -> None:
    """The relay stops a request after the client left: a task that moved meanwhile must be
    the one cancelled."""
    state = InferState()
    state.apply(m.Dispatched("t-1"))
    assert state.apply(ClientGone()) is Step.GONE
    assert state.gone
    state.apply(m.Dispatched("t-2"))
    assert state.dispatched == m.Dispatched("t-2")


@pytest.mark.parametrize(("events", "outcome"), [
    ([m.Completed(200, {})], (200, None)),
    ([m.Completed(404, {})], (404, "backend_error")),
    ([CHUNKS, m.StreamDone()], (200, None)),
    ([m.Failed(errors.HUB_BUSY())], (503, "hub_busy")),
    ([m.Dispatched("t-1"), ClientGone()], (499, "client_gone")),
    ([m.Dispatched("t-1"), CHUNKS], None),
])
def test_the_outcome_logs_and_metrics_count(events: list[Any], outcome: Any) -> None:
    state = InferState()
    for event in events:
        state.apply(event)
    assert state.outcome == outcome


def test_an_event_for_the_bus_router_alone_changes_nothing() -> None:
    state = InferState()
    assert state.apply(m.Queued()) is Step.WAIT
    assert state == InferState()


# --- Attempt: reading the channel, and stopping the request -------------------------------


class Stops:
    """Records what an Attempt asks of the actor system."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []

    def withdraw(self, served_by: str | None = None) -> None:
        """`served_by`: an alias's target holding the request (docs/protocol.md, Aliases)."""
        self.calls.append(("withdraw",) if served_by is None else ("withdraw", served_by))

    def cancel(self, dispatched: m.Dispatched, reason: str) -> None:
        self.calls.append(("cancel", dispatched.task_id, reason))


def attempt_of(*events: Any) -> tuple[Attempt, Stops]:
    reply: queue.Queue = queue.Queue()
    for event in events:
        reply.put(event)
    stops = Stops()
    return Attempt(reply, stops.withdraw, stops.cancel), stops


def test_before_the_dispatch_a_stop_withdraws_from_the_wait() -> None:
    attempt, stops = attempt_of(m.WakePending())
    assert attempt.next(1) == (Step.WAIT, m.WakePending())
    attempt.stop("client_gone")
    assert stops.calls == [("withdraw",)]


def test_once_dispatched_a_stop_cancels_the_latest_task() -> None:
    attempt, stops = attempt_of(m.Dispatched("t-1"), m.Dispatched("t-2"))
    attempt.next(1)
    attempt.next(1)
    attempt.stop("no_answer")
    assert stops.calls == [("cancel", "t-2", "no_answer")]


def test_a_request_is_stopped_once() -> None:
    attempt, stops = attempt_of(m.Dispatched("t-1"))
    attempt.next(1)
    attempt.stop("no_answer")
    attempt.stop("client_gone")  # the handler's own cleanup, after it gave up
    assert stops.calls == [("cancel", "t-1", "no_answer")]


def test_a_request_sent_again_after_its_output_began_ends_and_its_new_task_is_cancelled(
) -> None:
    """The chaos test: a stream's home process died after its first chunks; the request was
    sent again as a new task, and the client got the answer's start twice ("relays your
    local modelrelays your local model through one"). A new task once chunks went out ends
    the answer where it is, with a fault code, and that task is cancelled."""
    attempt, stops = attempt_of(m.Dispatched("t-1"), CHUNKS, m.Dispatched("t-2"), CHUNKS,
                                m.StreamDone())
    assert attempt.next(1)[0] is Step.WAIT
    assert attempt.next(1) == (Step.PART, CHUNKS)
    step, end = attempt.next(1)
    assert step is Step.END
    assert isinstance(end, m.Failed) and end.error.code == "publisher_disconnected"
    assert stops.calls == [("cancel", "t-2", "its answer began on a task that was lost")]
    assert attempt.next(1)[0] is Step.WAIT  # the new task's chunks are not the client's


def test_a_task_that_moved_before_its_output_is_no_restart() -> None:
    attempt, stops = attempt_of(m.Dispatched("t-1"), m.Dispatched("t-2"), CHUNKS,
                                m.StreamDone())
    steps = [attempt.next(1)[0] for _ in range(4)]
    assert steps == [Step.WAIT, Step.WAIT, Step.PART, Step.END]
    assert attempt.state.end == m.StreamDone() and stops.calls == []


def test_next_shows_the_chunks_of_a_part_and_the_end_as_the_client_gets_it() -> None:
    attempt, _ = attempt_of(CHUNKS, m.Completed(200, {"whole": "answer"}))
    assert attempt.next(1) == (Step.PART, CHUNKS)
    assert attempt.next(1) == (Step.END, m.Completed(200, None))


def test_next_without_events_is_none() -> None:
    attempt, _ = attempt_of()
    assert attempt.next(None) is None
    assert attempt.next(0.01) is None


def test_the_watcher_reaches_the_reader_through_the_channel() -> None:
    attempt, _ = attempt_of()
    attempt.client_gone()
    assert attempt.next(1) == (Step.GONE, ClientGone())
    assert attempt.state.gone


# --- the stream body: the state decides, the renderer writes ------------------------------


def run_stream(attempt: Attempt, renderer: streams.Renderer, first: list[str] | None = None,
               keepalive_s: float = 0.01, deadline_s: float = 5.0) -> tuple[str, list[bool]]:
    ended: list[bool] = []

    def on_end(finished: bool) -> None:
        ended.append(finished)
        if not finished:
            attempt.stop("client_gone")

    body = b"".join(streams.client_stream(attempt, renderer, first or [], keepalive_s,
                                          deadline_s, on_end))
    return body.decode(), ended


def test_a_streamed_answer_ends_without_repeating_its_body() -> None:
    attempt, stops = attempt_of(m.Dispatched("t-1"), CHUNKS,
                                m.Completed(200, {"whole": "answer"}))
    body, ended = run_stream(attempt, OpenAIRenderer())
    assert body == 'data: {"n":1}\n\ndata: {"n":2}\n\n' + DONE
    assert ended == [True]
    assert stops.calls == []  # an answer that ended needs no cancel


def test_a_final_body_is_sent_when_nothing_was_streamed() -> None:
    attempt, _ = attempt_of(m.Completed(200, {"whole": "answer"}))
    body, _ = run_stream(attempt, OpenAIRenderer(), first=[": keepalive\n\n"])
    assert body == ': keepalive\n\ndata: {"whole":"answer"}\n\n' + DONE


def test_a_client_gone_midway_cancels_the_task() -> None:
    attempt, stops = attempt_of(m.Dispatched("t-1"), CHUNKS, ClientGone())
    body, ended = run_stream(attempt, OpenAIRenderer())
    assert body == 'data: {"n":1}\n\ndata: {"n":2}\n\n'
    assert ended == [False]
    assert stops.calls == [("cancel", "t-1", "client_gone")]


def test_idle_comments_say_waking_while_the_backend_wakes() -> None:
    reply: queue.Queue = queue.Queue()
    stops = Stops()
    attempt = Attempt(reply, stops.withdraw, stops.cancel)
    reply.put(m.WakePending())
    stream = streams.client_stream(attempt, OpenAIRenderer(), [], 0.01, 5.0,
                                   lambda finished: None)
    assert next(stream) == b": waking\n\n"
    reply.put(m.Dispatched("t-1"))
    assert next(stream) == b": keepalive\n\n"
    reply.put(m.StreamDone())
    assert list(stream) == [DONE.encode()]


def test_no_answer_within_the_deadline_ends_the_stream_with_an_error_event() -> None:
    attempt, stops = attempt_of(m.Dispatched("t-1"))
    body, ended = run_stream(attempt, OpenAIRenderer(), keepalive_s=0.01, deadline_s=0.03)
    frames = [i for i in sse.parse(body.split("\n")) if not isinstance(i, str)]
    assert [f.event for f in frames] == ["error"]
    assert frames[0].json()["error"]["code"] == "infer_timeout"
    assert ended == [False]
    # what the client was told is what the task's cancel (and so the log line) says
    assert stops.calls == [("cancel", "t-1", "no_answer")]


class NdjsonRenderer:
    """Another API's shape, to show a renderer is all that changes between them."""

    def answer(self, resp: Any, end: m.Completed) -> None:
        raise AssertionError("not a whole answer")

    def begin(self, resp: Any) -> None:
        raise AssertionError("not called by the stream body")

    def idle(self, waking: bool) -> str:
        return ""

    def part(self, chunks: m.Chunks) -> str:
        return "".join(f"{data}\n" for data in chunks.data)

    def end(self, end: Any) -> str:
        if isinstance(end, m.Failed):
            return json.dumps({"error": end.error.message}) + "\n"
        return json.dumps({"done": True, "body": getattr(end, "body", None)}) + "\n"


def test_the_same_rules_under_another_renderer() -> None:
    attempt, _ = attempt_of(m.WakePending(), m.Dispatched("t-1"), CHUNKS,
                            m.Completed(200, {"whole": "answer"}))
    body, ended = run_stream(attempt, NdjsonRenderer())
    assert body == '{"n":1}\n{"n":2}\n{"done": true, "body": null}\n'
    assert ended == [True]


# --- MeteredReply: the same reading, metered as the events are put ------------------------


def outcomes(caplog: pytest.LogCaptureFixture) -> list[tuple[Any, ...]]:
    return [(r.status, r.code, getattr(r, "task_id", None))  # type: ignore[attr-defined]
            for r in caplog.records if r.name == "tether.requests" and r.levelno >= logging.INFO]


def test_metered_outcome_is_the_first_end_with_the_first_task(caplog) -> None:
    caplog.set_level(logging.INFO, "tether.requests")
    reply = MeteredReply("alpha", "chat/completions")
    for event in (m.Dispatched("t-1"), m.Dispatched("t-2"), CHUNKS,
                  m.Completed(201, {"whole": "answer"}), m.Failed(errors.HUB_BUSY())):
        reply.put(event)
    assert outcomes(caplog) == [(201, None, "t-1")]
    # Metering never keeps an event from the reader: the Dispatched events before any chunk
    # are on the channel, not in its queue (the next test).
    assert reply.qsize() == 3 and reply.dispatched == m.Dispatched("t-2")


# --- a Dispatched is recorded on the channel: the reader is not woken for it ---------------


def metered_attempt(*events: Any) -> tuple[MeteredReply, Attempt, Stops]:
    reply = MeteredReply("alpha", "chat/completions")
    for event in events:
        reply.put(event)
    stops = Stops()
    return reply, Attempt(reply, stops.withdraw, stops.cancel), stops


def test_a_dispatched_is_recorded_not_queued_and_a_stop_cancels_it_unread() -> None:
    reply, attempt, stops = metered_attempt(m.Dispatched("t-1"), m.Dispatched("t-2"))
    assert reply.qsize() == 0  # nothing woke the reader
    attempt.stop("client_gone")  # before it read anything: the task runs, so it is cancelled
    assert stops.calls == [("cancel", "t-2", "client_gone")]


def test_the_reader_folds_a_recorded_dispatched_in_at_its_place() -> None:
    # After a queued event: the backend woke, then the task went out.
    reply, attempt, _ = metered_attempt(m.WakePending(), m.Dispatched("t-1"))
    assert reply.qsize() == 1
    assert attempt.next(1) == (Step.WAIT, m.WakePending())
    assert attempt.state.dispatched == m.Dispatched("t-1") and not attempt.state.waking
    # Before one: dispatched, then (sent back, say) waiting on a wake again.
    reply, attempt, _ = metered_attempt(m.Dispatched("t-1"), m.WakePending())
    assert attempt.next(1) == (Step.WAIT, m.WakePending())
    assert attempt.state.dispatched == m.Dispatched("t-1") and attempt.state.waking
    # Alone: the reader finds it when it wakes for nothing (an idle comment is due).
    reply, attempt, _ = metered_attempt(m.Dispatched("t-1"))
    assert attempt.next(None) is None
    assert attempt.state.dispatched == m.Dispatched("t-1")


def test_a_dispatched_after_chunks_is_queued_and_ends_the_answer() -> None:
    """A task sent again after output began (its home died) must reach the reader in line,
    after the chunks it follows: it ends the answer (see the chaos test above)."""
    reply, attempt, stops = metered_attempt(m.Dispatched("t-1"), CHUNKS, m.Dispatched("t-2"),
                                            CHUNKS, m.StreamDone())
    assert reply.qsize() == 4
    assert attempt.next(1) == (Step.PART, CHUNKS)
    step, end = attempt.next(1)
    assert step is Step.END
    assert isinstance(end, m.Failed) and end.error.code == "publisher_disconnected"
    assert stops.calls == [("cancel", "t-2", "its answer began on a task that was lost")]


def test_idle_comments_stop_saying_waking_once_dispatched_without_a_wake() -> None:
    reply = MeteredReply("alpha", "chat/completions")
    stops = Stops()
    attempt = Attempt(reply, stops.withdraw, stops.cancel)
    reply.put(m.WakePending())
    stream = streams.client_stream(attempt, OpenAIRenderer(), [], 0.01, 5.0,
                                   lambda finished: None)
    assert next(stream) == b": waking\n\n"
    reply.put(m.Dispatched("t-1"))
    assert reply.qsize() == 0
    assert next(stream) == b": keepalive\n\n"
    reply.put(m.StreamDone())
    assert list(stream) == [DONE.encode()]


def test_metered_client_gone_is_499_and_later_events_are_not_counted(caplog) -> None:
    caplog.set_level(logging.INFO, "tether.requests")
    reply = MeteredReply("alpha", "chat/completions")
    reply.put(ClientGone())
    reply.put(m.Completed(200, {}))
    reply.cancelled("client_gone")
    assert outcomes(caplog) == [(499, "client_gone", None)]


def test_metered_backend_error_and_hub_error(caplog) -> None:
    caplog.set_level(logging.INFO, "tether.requests")
    failing = MeteredReply("alpha", "chat/completions")
    failing.put(m.Completed(502, {"error": "down"}))
    refused = MeteredReply("alpha", "chat/completions")
    refused.put(m.Failed(errors.QUEUE_FULL(why="full")))
    assert outcomes(caplog) == [(502, "backend_error", None), (429, "queue_full", None)]


# --- an alias's tries (docs/protocol.md, Aliases: failover) ---------------------------------


class Tries:
    """The relay's `again`: each new try gets a reply channel the test fills."""

    def __init__(self, *replies: list[Any]) -> None:
        self.replies = list(replies)
        self.asked: list[frozenset[str]] = []
        self.stops = Stops()

    def again(self, tried: frozenset[str]) -> tuple[queue.Queue, Any] | None:
        self.asked.append(tried)
        if not self.replies:
            return None
        reply: queue.Queue = queue.Queue()
        for event in self.replies.pop(0):
            reply.put(event)
        return reply, self.stops.withdraw


def alias_attempt(tries: Tries, *events: Any) -> Attempt:
    reply: queue.Queue = queue.Queue()
    for event in events:
        reply.put(event)
    return Attempt(reply, tries.stops.withdraw, tries.stops.cancel, tries.again)


def drain(attempt: Attempt) -> list[tuple[Step, Any]]:
    out = []
    while (got := attempt.next(1)) is not None:
        out.append(got)
        if got[0] is Step.END:
            return out
    raise AssertionError("no end")


def test_a_failure_before_output_starts_the_next_try_without_that_target() -> None:
    answer = m.Completed(200, {"ok": True})
    tries = Tries([m.Routed("cloud"), m.Dispatched("p-1"), answer])
    attempt = alias_attempt(tries, m.Routed("gpu"), m.Dispatched("t-1"),
                            m.Failed(errors.PUBLISHER_DISCONNECTED(name="gpu")))
    assert drain(attempt)[-1] == (Step.END, answer)
    assert tries.asked == [frozenset({"gpu"})]
    assert attempt.served_by == "cloud"


@pytest.mark.parametrize("end", [
    m.Completed(502, {"error": "bad gateway"}),
    m.Failed(errors.QUEUE_FULL(why="full")),
])
def test_a_5xx_answer_and_the_hubs_queue_full_fail_over(end: Any) -> None:
    tries = Tries([m.Routed("cloud"), m.Completed(200, {})])
    attempt = alias_attempt(tries, m.Routed("gpu"), end)
    assert drain(attempt)[-1] == (Step.END, m.Completed(200, {}))


def test_a_4xx_and_anything_after_output_are_the_clients_answer() -> None:
    refusal = m.Completed(400, {"error": "too long"})
    tries = Tries([m.Routed("cloud"), m.Completed(200, {})])
    assert drain(alias_attempt(tries, m.Routed("gpu"), refusal))[-1] == (Step.END, refusal)
    failed = m.Failed(errors.PUBLISHER_DISCONNECTED(name="gpu"))
    after = drain(alias_attempt(tries, m.Routed("gpu"), m.Chunks(("{}",)), failed))
    assert after[-1] == (Step.END, failed)
    assert tries.asked == []


def test_with_no_target_left_the_client_gets_the_last_failure() -> None:
    failed = m.Failed(errors.WAKE_FAILED(name="gpu", why="no power"))
    tries = Tries([m.Failed(errors.PUBLISHER_OFFLINE(name="assistant"))])
    attempt = alias_attempt(tries, m.Routed("gpu"), failed)
    assert drain(attempt)[-1] == (Step.END, failed)
    assert attempt.served_by == "gpu"


def test_a_client_gone_during_the_switch_reaches_the_next_try() -> None:
    tries = Tries([m.Routed("cloud")])
    attempt = alias_attempt(tries, m.Routed("gpu"),
                            m.Failed(errors.PUBLISHER_DISCONNECTED(name="gpu")))
    attempt.client_gone()  # lands on the first try's channel, behind its end
    steps = [attempt.next(1), attempt.next(1), attempt.next(1), attempt.next(1)]
    assert steps[-1] == (Step.GONE, steps[-1][1])
    attempt.stop("client_gone")
    assert tries.stops.calls == [("withdraw", "cloud")]
