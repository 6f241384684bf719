"""The chaos test's judge, on records made by hand (no processes: these run in `make test`):
each check finds what it must, attributes it to the fault before it, and passes what is
right."""

from __future__ import annotations

import time

from tests.chaos import invariants as inv
from tests.chaos.faults import T0, Fault
from tests.chaos.load import Outcome, expected_text

NOW = time.time() - 100  # the records' times lie in the past, as a run's do


def outcome(start: float, end: float | None, **kw) -> Outcome:
    messages = [{"role": "user", "content": "x"}]
    made = Outcome("chaos-t-0-1", "huba", "pool", kw.pop("stream", False),
                   expected_text(messages), NOW + start, None if end is None else NOW + end)
    for key, value in kw.items():
        setattr(made, key, value)
    return made


def judged(*outcomes: Outcome, faults: list[Fault] | None = None) -> list[tuple[str, str]]:
    T0[0] = NOW
    return [(v.invariant, "+".join(f.kind for f in v.after))
            for v in inv.check_requests(list(outcomes), faults or [], bound_s=27)]


def test_a_right_answer_passes_and_a_wrong_or_late_one_is_named_with_the_fault_before_it():
    right = outcome(0, 0.3, status=200, finished=True)
    right.text = right.expected
    assert judged(right) == []
    wrong = outcome(10, 10.3, status=200, finished=True, text="tether relays")
    cut = outcome(10, 10.3, status=200, finished=False, stream=True)
    cut.text = cut.expected.split()[0]
    late = outcome(10, 40, status=200, finished=True)
    late.text = late.expected
    never = outcome(10, None)
    kill = Fault("redis_restart", "redis", NOW + 9, NOW + 12)
    assert judged(wrong, cut, late, never, faults=[kill]) == [
        (inv.RIGHT, "redis_restart"), (inv.RIGHT, "redis_restart"),
        (inv.ANSWERED, "redis_restart"), (inv.ANSWERED, "redis_restart")]


def test_codes_timers_500s_and_a_drain_that_takes_names_down():
    term = Fault("hub_term", "huba", NOW + 1, NOW + 5)
    ours = outcome(2, 2.1, status=503, code="shutting_down")  # huba itself drains: fine
    other = outcome(2, 2.1, status=503, code="shutting_down")
    other.hub = "hubb"
    assert judged(ours, other, faults=[term]) == [(inv.DRAIN, "hub_term")]
    assert judged(outcome(0, 20, status=504, code="infer_timeout")) == [(inv.TIMER, "")]
    assert judged(outcome(0, 1, status=500, code="internal_error")) == [(inv.NO_500, "")]
    assert judged(outcome(0, 1, status=502, code="publisher_error")) == [(inv.RIGHT, "")]
    # Served again: with no fault near, a failed request is a failure to recover.
    assert judged(outcome(0, 1, status=503, code="hub_busy")) == [(inv.RECOVER, "")]


def test_a_connection_cut_is_allowed_only_by_the_death_of_its_process():
    cut = outcome(0, 1, error="APIConnectionError: Connection error.")
    killed = Fault("hub_kill", "huba", NOW + 0.5, NOW + 3)
    other = Fault("hub_kill", "hubb", NOW + 0.5, NOW + 3)
    assert judged(cut, faults=[killed]) == []
    assert judged(cut, faults=[other]) == [(inv.ANSWERED, "hub_kill")]


def test_a_postgres_outage_must_not_stop_relaying():
    down = Fault("postgres_down", "postgres", NOW + 1, NOW + 5)
    assert judged(outcome(2, 2.1, status=503, code="publisher_offline"), faults=[down]) == [
        (inv.PG_RELAY, "postgres_down")]


def test_tracebacks_and_logged_500s_are_found_and_put_next_to_their_fault():
    T0[0] = NOW
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(NOW + 3))
    log = "\n".join([
        f"{stamp},120 INFO tether.bus: something",
        f"{stamp},121 ERROR tether.http: unhandled error on POST /api/v1/llms/_provider-heartbeat",
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in f',
        "    raise OperationalError",
        "psycopg2.OperationalError: Connection refused",
        "",
        "The above exception was the direct cause of the following exception:",
        "",
        "Traceback (most recent call last):",
        '  File "y.py", line 2, in g',
        "peewee.OperationalError: Connection refused",
        f"{stamp},300 INFO tether.bus: after"])
    down = Fault("postgres_down", "postgres", NOW + 2, NOW + 6)
    found = inv.check_tracebacks({"huba": log}, [down])
    assert [(v.invariant, v.what.split(": ", 1)[1].split(" (")[0]) for v in found] == [
        (inv.TRACEBACK, "psycopg2.OperationalError: Connection refused"),
        (inv.TRACEBACK, "peewee.OperationalError: Connection refused")]
    assert [v.after for v in found] == [[down], [down]]
    # With no engine's fault near them, they are listed apart.
    assert [v.invariant for v in inv.check_tracebacks({"huba": log}, [])] == [
        inv.OTHER_TRACEBACK] * 2
    served = inv.check_logged_500s({"huba": log}, [down])
    assert [(v.invariant, v.after) for v in served] == [(inv.NO_500, [down])]
    assert "POST /api/v1/llms/_provider-heartbeat" in served[0].what
