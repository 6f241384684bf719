"""Usage counting (docs/protocol.md, Usage): what each answer's `usage` said, per client key,
Llm and hour, in memory; a flusher adds it to the database every `usage_flush_s` and at
shutdown. A request costs no database write: its counts join a dict.

Each request's reply channel (tether.actors.reply.MeteredReply) reads its usage as its
events pass and hands it here once the answer ended. Text is never kept: the last chunk that
mentions `usage` is held as it came until the end, then only its counts are read.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from tether.common.runtime import spawn
from tether.observability import metrics
from tether.store import usage as store
from tether.store.models import utcnow

log = logging.getLogger("tether.usage")

STOP_TIMEOUT_S = 5.0


def _count(value: Any) -> int | None:
    """A token count: a whole number >= 0 (JSON booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def tokens(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) from a `usage` object: chat and legacy completions' and
    embeddings' `prompt_tokens` / `completion_tokens`, or the Responses API's `input_tokens`
    / `output_tokens`; a missing one is 0. None when there is no usage, or a count in it is
    negative or not a whole number (the answer still passes unchanged: only counting
    ignores it)."""
    if not isinstance(usage, Mapping):
        return None
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    if prompt is None and completion is None:
        return None
    got = _count(0 if prompt is None else prompt), _count(0 if completion is None else completion)
    if got[0] is None or got[1] is None:
        return None
    return got[0], got[1]


def usage_of(body: Any) -> Any:
    """The `usage` of an answer's body or of a stream's event: at its top (chat, completions,
    embeddings, a chat stream's usage chunk, a Responses answer) or in its `response` (the
    Responses stream's `response.completed` event)."""
    if not isinstance(body, Mapping):
        return None
    found = body.get("usage")
    if found is None and isinstance(body.get("response"), Mapping):
        found = body["response"].get("usage")
    return found


def usage_of_chunk(data: str) -> Any:
    try:
        return usage_of(json.loads(data))
    except ValueError:
        return None


class UsageCounter:
    """Counts per bucket, since the last flush. Safe from any greenlet or thread.

    Counted per answer, so kept cheap: buckets are plain tuples until taken, and the hour is
    worked out once per hour (measured on a quiet machine: 5.0 µs a count with a Bucket and
    the hour built each time, 2.0 µs so, 0.9 of them the token metrics)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (hour, key, llm, alias) -> [requests, prompt tokens, completion tokens]
        self._counts: dict[tuple[dt.datetime, str, str, str], list[int]] = {}
        self._hour = dt.datetime.min
        self._hour_ends = 0.0  # time.time() at which _hour is over

    def count(self, key: str | None, llm: str, alias: str | None, usage: Any) -> None:
        """One answer a client received from `llm` (through `alias`, if any), with the
        `usage` it carried (anything: only valid counts are counted)."""
        got = tokens(usage)
        prompt, completion = got if got is not None else (0, 0)
        now = time.time()
        if now >= self._hour_ends:  # UTC hours start on the epoch's whole hours
            self._hour = store.hour_of(utcnow())
            self._hour_ends = (now // 3600 + 1) * 3600
        bucket = (self._hour, key or "", llm, alias or "")
        with self._lock:
            counts = self._counts.get(bucket)
            if counts is None:
                self._counts[bucket] = [1, prompt, completion]
            else:
                counts[0] += 1
                counts[1] += prompt
                counts[2] += completion
        if got is not None:
            metrics.tokens_used(llm, prompt, completion)

    def take(self) -> dict[store.Bucket, store.Counts]:
        """Everything counted since the last take; counting goes on into a fresh dict."""
        with self._lock:
            taken, self._counts = self._counts, {}
        return {store.Bucket(*bucket): store.Counts(*counts)
                for bucket, counts in taken.items()}

    def give_back(self, taken: Mapping[store.Bucket, store.Counts]) -> None:
        """Counts a flush could not write: they go out with the next one."""
        with self._lock:
            for bucket, counts in taken.items():
                mine = self._counts.setdefault(
                    (bucket.hour, bucket.key, bucket.llm, bucket.alias), [0, 0, 0])
                mine[0] += counts.requests
                mine[1] += counts.prompt_tokens
                mine[2] += counts.completion_tokens


class UsageFlusher:
    """Adds a counter's counts to the database every `interval_s`, and once more at stop.
    A flush that fails (the database is away) keeps its counts for the next one."""

    def __init__(self, counter: UsageCounter, interval_s: float) -> None:
        self.counter = counter
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._failing = False

    def start(self) -> UsageFlusher:
        spawn(self._run)
        return self

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self.flush()
        finally:
            self.flush()  # at shutdown: the last counts
            self._stopped.set()

    def flush(self) -> bool:
        taken = self.counter.take()
        if not taken:
            return True
        try:
            store.add(taken)
        except Exception as exc:  # noqa: BLE001 - counts are kept; the flusher must live on
            self.counter.give_back(taken)
            if not self._failing:
                log.warning("usage: could not write %d bucket(s), kept for the next flush "
                            "(%s: %s)", len(taken), type(exc).__name__, exc)
            self._failing = True
            return False
        if self._failing:
            log.info("usage: written again")
        self._failing = False
        return True

    def stop(self) -> None:
        """Flush what is counted and end (waits for the last write, up to a few seconds)."""
        self._stop.set()
        if not self._stopped.wait(STOP_TIMEOUT_S):
            log.warning("usage: the last flush did not end within %g s", STOP_TIMEOUT_S)
