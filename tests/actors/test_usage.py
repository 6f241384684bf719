"""Usage counting (tether.actors.usage): which counts are valid, and counts reach the database
in batches, summed across counters (each stands for a hub process), on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.support.hub import wait_until
from tether.actors import usage
from tether.store import db, migrations
from tether.store import usage as store


@pytest.mark.parametrize(("given", "counted"), [
    ({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}, (3, 4)),
    ({"input_tokens": 3, "output_tokens": 4}, (3, 4)),  # the Responses API's names
    ({"prompt_tokens": 2, "total_tokens": 2}, (2, 0)),  # embeddings: no completion
    ({"prompt_tokens": 0, "completion_tokens": 0}, (0, 0)),
    ({"prompt_tokens": -1, "completion_tokens": 4}, None),
    ({"prompt_tokens": 1.5, "completion_tokens": 4}, None),
    ({"prompt_tokens": 1, "completion_tokens": "4"}, None),
    ({"prompt_tokens": True, "completion_tokens": 4}, None),
    ({"prompt_tokens": None, "completion_tokens": None}, None),
    ({"total_tokens": 9}, None),
    ("12 tokens", None), ([3, 4], None), (None, None),
])
def test_only_whole_non_negative_counts_are_counted(given, counted):
    assert usage.tokens(given) == counted


def test_usage_is_found_where_each_answer_keeps_it():
    assert usage.usage_of({"choices": [], "usage": {"prompt_tokens": 1}}) == {"prompt_tokens": 1}
    completed = {"type": "response.completed", "response": {"usage": {"input_tokens": 2}}}
    assert usage.usage_of(completed) == {"input_tokens": 2}
    assert usage.usage_of(["usage"]) is None
    assert usage.usage_of_chunk('{"usage": {"prompt_tokens": 5}}') == {"prompt_tokens": 5}
    assert usage.usage_of_chunk("not json, \"usage\"") is None


@pytest.fixture
def database(database_url):
    db.init(database_url)
    migrations.migrate()
    yield
    db.close()


def test_two_counters_flushing_sum_in_the_database(database):
    """Two processes' counters: each adds increments, nothing is overwritten."""
    one, two = usage.UsageCounter(), usage.UsageCounter()
    good = {"prompt_tokens": 2, "completion_tokens": 3}
    one.count("alice", "llama", None, good)
    one.count("alice", "llama", None, {"prompt_tokens": -5})  # a request; no tokens
    one.count(None, "llama", None, good)  # auth off: no key
    two.count("alice", "llama", None, good)
    two.count("alice", "gpt", "assistant", good)  # served through an alias
    for counter in (one, two):
        assert usage.UsageFlusher(counter, 10).flush()
        assert counter.take() == {}  # all written
    one.count("alice", "llama", None, good)
    assert usage.UsageFlusher(one, 10).flush()
    assert store.totals() == [
        {"key": None, "llm": "llama", "alias": None, "requests": 1, "promptTokens": 2,
         "completionTokens": 3},
        {"key": "alice", "llm": "gpt", "alias": "assistant", "requests": 1, "promptTokens": 2,
         "completionTokens": 3},
        {"key": "alice", "llm": "llama", "alias": None, "requests": 4, "promptTokens": 6,
         "completionTokens": 9},
    ]
    future = store.hour_of(dt.datetime.now(dt.UTC).replace(tzinfo=None)) + dt.timedelta(hours=1)
    assert store.totals(future) == []


def test_a_flush_that_cannot_write_keeps_its_counts(database):
    counter = usage.UsageCounter()
    counter.count("alice", "llama", None, {"prompt_tokens": 1, "completion_tokens": 1})
    flusher = usage.UsageFlusher(counter, 10)
    db.close()
    db.init("postgresql://nobody@127.0.0.1:1/none")  # nothing listens there
    assert not flusher.flush()
    counter.count("alice", "llama", None, {"prompt_tokens": 1, "completion_tokens": 1})
    [(bucket, counts)] = counter.take().items()
    assert (bucket.key, bucket.llm, counts) == ("alice", "llama", store.Counts(2, 2, 2))


def test_an_answer_counts_in_the_hour_it_ended(monkeypatch):
    """The counter works the hour out once per hour (its cost is per answer): an answer
    after the hour turned goes to the next hour's bucket, not the cached one."""
    clock = [dt.datetime(2026, 12, 7, 10, 59, 59, 500000)]
    epoch = dt.datetime(1970, 1, 1)
    monkeypatch.setattr(usage, "utcnow", lambda: clock[0])
    monkeypatch.setattr(usage.time, "time", lambda: (clock[0] - epoch).total_seconds())
    counter = usage.UsageCounter()
    counter.count("a", "llama", None, None)
    counter.count("a", "llama", None, None)
    clock[0] += dt.timedelta(seconds=1)  # 11:00:00.5
    counter.count("a", "llama", None, None)
    counted = {bucket.hour.hour: counts.requests for bucket, counts in counter.take().items()}
    assert counted == {10: 2, 11: 1}


def test_the_flusher_writes_on_its_own_and_at_stop(database):
    counter = usage.UsageCounter()
    flusher = usage.UsageFlusher(counter, 0.05).start()
    counter.count("a", "llama", None, None)
    wait_until(lambda: store.totals() != [])
    counter.count("a", "llama", None, None)
    flusher.stop()  # the last count is written before stop returns
    assert store.totals()[0]["requests"] == 2


def test_since_is_a_time_or_hours_ago():
    now = dt.datetime(2026, 12, 7, 10, 30)
    assert store.parse_since("2", now) == dt.datetime(2026, 12, 7, 8, 30)
    assert store.parse_since("0.5", now) == dt.datetime(2026, 12, 7, 10, 0)
    assert store.parse_since("2026-12-07T09:15:00Z", now) == dt.datetime(2026, 12, 7, 9, 15)
    assert store.parse_since("2026-12-07T11:15:00+02:00", now) == dt.datetime(2026, 12, 7, 9, 15)
    assert store.parse_since("2026-12-07", now) == dt.datetime(2026, 12, 7)
    # RFC 3339 allows these; in UTC they fall outside Python's years (the fuzzer's find:
    # an OverflowError, a 500).
    assert store.parse_since("0001-01-01T00:00:00+23:59", now) == dt.datetime.min
    assert store.parse_since("9999-12-31T23:59:59-23:59", now) == dt.datetime.max
    for bad in ("", "-1", "nan", "inf", "yesterday", "2026-13-01"):
        with pytest.raises(ValueError):
            store.parse_since(bad, now)
