"""Usage buckets (docs/protocol.md, Usage): each hub process adds what it counted, in one
statement per flush; reads sum the buckets per key, Llm and alias."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import peewee

from tether.store.db import connection
from tether.store.models import UsageBucket


@dataclass(frozen=True, order=True)
class Bucket:
    """Where counts go: an hour (naive UTC, its start), a key ("" with auth off), an Llm
    (the target that served) and an alias ("" when the client named the Llm)."""

    hour: dt.datetime
    key: str
    llm: str
    alias: str = ""


@dataclass
class Counts:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, other: Counts) -> None:
        self.requests += other.requests
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens


def hour_of(at: dt.datetime) -> dt.datetime:
    return at.replace(minute=0, second=0, microsecond=0)


def parse_since(text: str, now: dt.datetime) -> dt.datetime:
    """`since` as naive UTC: an ISO-8601 time (`2026-12-07T10:00:00Z`; one without an offset
    is UTC) or a number of hours before `now` (`24`, `0.5`). ValueError otherwise."""
    text = text.strip()
    try:
        hours = float(text)
    except ValueError:
        pass
    else:
        if not 0 <= hours < 24 * 366 * 100:  # also refuses nan and inf
            raise ValueError(f"{text!r} is not a number of hours >= 0")
        return now - dt.timedelta(hours=hours)
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO-8601 time nor a number of hours") \
            from None
    if at.tzinfo is not None:
        try:
            at = at.astimezone(dt.UTC).replace(tzinfo=None)
        except OverflowError:  # before year 1 or after 9999 once in UTC: everything, nothing
            at = dt.datetime.min if at.year == 1 else dt.datetime.max
    return at


def add(counts: Mapping[Bucket, Counts]) -> None:
    """Add `counts` to their buckets, in one statement: an upsert that adds, so processes
    flushing at once sum rather than overwrite."""
    if not counts:
        return
    rows = [{"hour": b.hour, "key_name": b.key, "llm": b.llm, "alias_name": b.alias,
             "requests": c.requests, "prompt_tokens": c.prompt_tokens,
             "completion_tokens": c.completion_tokens}
            for b, c in sorted(counts.items())]  # one order: concurrent flushes never deadlock
    with connection() as db, db.atomic():
        (UsageBucket.insert_many(rows)
         .on_conflict(conflict_target=[UsageBucket.hour, UsageBucket.key_name, UsageBucket.llm,
                                       UsageBucket.alias_name],
                      update={UsageBucket.requests: UsageBucket.requests
                              + peewee.EXCLUDED.requests,
                              UsageBucket.prompt_tokens: UsageBucket.prompt_tokens
                              + peewee.EXCLUDED.prompt_tokens,
                              UsageBucket.completion_tokens: UsageBucket.completion_tokens
                              + peewee.EXCLUDED.completion_tokens})
         .execute())


def totals(since: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Per key, Llm and alias, summed over the hours from the one `since` falls in (naive
    UTC; None: all), on the wire: sorted by key, Llm, alias."""
    query = UsageBucket.select(
        UsageBucket.key_name, UsageBucket.llm, UsageBucket.alias_name,
        peewee.fn.SUM(UsageBucket.requests).alias("requests"),
        peewee.fn.SUM(UsageBucket.prompt_tokens).alias("prompt_tokens"),
        peewee.fn.SUM(UsageBucket.completion_tokens).alias("completion_tokens"),
    ).group_by(UsageBucket.key_name, UsageBucket.llm, UsageBucket.alias_name).order_by(
        UsageBucket.key_name, UsageBucket.llm, UsageBucket.alias_name)
    if since is not None:
        query = query.where(UsageBucket.hour >= hour_of(since))
    with connection():
        return [{"key": row.key_name or None, "llm": row.llm, "alias": row.alias_name or None,
                 "requests": int(row.requests), "promptTokens": int(row.prompt_tokens),
                 "completionTokens": int(row.completion_tokens)}
                for row in query.namedtuples()]
