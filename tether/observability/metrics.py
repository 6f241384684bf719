"""Every Prometheus metric of the hub, defined once, and the one-line calls that feed them.

Actors, resources and request reply channels (tether.actors.reply) call the functions
below; nothing else touches a metric. Each call also feeds the in-memory board
(tether.observability.board) behind the status page, so the page and /metrics always agree.
Calls never block and never raise into their caller: a metric must not be able to kill an
actor.

Labels stay bounded: Llm names (a label set per registered Llm), endpoints, HTTP statuses,
error codes, outcomes; never a task id, a session id (but `member`, a pool member's session,
on the pool gauges, as docs/protocol.md names it) or client text. A request for a name
that has no Llm never reaches an Llm: it is counted only by tether_http_responses, by route.

Scrapes are per process; with several workers, per host (tether.observability.multiproc_metrics).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily

from tether.observability import multiproc_metrics
from tether.observability.board import BOARD

log = logging.getLogger("tether.metrics")
wake_log = logging.getLogger("tether.wakes")

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Seconds: from a fast local answer to a slow wake of a machine that was powered off.
_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
_WAKE = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 90, 120, 180, 300)

REQUESTS = Counter(
    "tether_requests", "Requests that reached an Llm, by outcome (HTTP status; 499 = the "
    "client went away).", ["llm", "endpoint", "code"], registry=REGISTRY)
REQUEST_SECONDS = Histogram(
    "tether_request_seconds", "Time from a request reaching its Llm to its last byte or error.",
    ["llm"], buckets=_LATENCY, registry=REGISTRY)
ALIAS_REQUESTS = Counter(
    "tether_alias_requests", "Requests for an alias, by the target that answered (`llm`: "
    "the alias itself when no target took it) and outcome; each try of a failover counts.",
    ["alias", "llm", "code"], registry=REGISTRY)
QUEUE_WAIT = Histogram(
    "tether_queue_wait_seconds", "Time a request waited before its task was sent (queue and "
    "wake included).", ["llm"], buckets=_LATENCY, registry=REGISTRY)
FIRST_CHUNK = Histogram(
    "tether_first_chunk_seconds", "Time from a streamed request reaching its Llm to its first "
    "chunk.", ["llm"], buckets=_LATENCY, registry=REGISTRY)
ERRORS = Counter(
    "tether_request_errors", "Requests answered with an error, by error code.",
    ["llm", "code"], registry=REGISTRY)
WAKES = Counter(
    "tether_wakes", "Wakes by outcome: started, succeeded, failed, timed_out, abandoned.",
    ["llm", "outcome"], registry=REGISTRY)
WAKE_SECONDS = Histogram(
    "tether_wake_seconds", "Duration of wakes that ended, by outcome.", ["llm", "outcome"],
    buckets=_WAKE, registry=REGISTRY)
TASKS_CANCELLED = Counter(
    "tether_tasks_cancelled", "Tasks cancelled at the publisher, by reason.",
    ["llm", "reason"], registry=REGISTRY)
TASKS_TIMED_OUT = Counter(
    "tether_tasks_timed_out", "Tasks that hit infer_timeout_s or stream_idle_timeout_s.",
    ["llm", "code"], registry=REGISTRY)
ACTOR_RESTARTS = Counter(
    "tether_actor_restarts", "Crashed actors: restarted, or left down (gave_up).",
    ["kind", "outcome"], registry=REGISTRY)
SWEEP_ROWS = Counter(
    "tether_sweep_rows", "Rows the sweep changed: marked inactive, or deleted.", ["action"],
    registry=REGISTRY)
TOKENS = Counter(
    "tether_tokens", "Tokens in answers' usage, by Llm (the target that served) and kind "
    "(prompt, completion). Per key: GET /api/v1/usage.", ["llm", "kind"], registry=REGISTRY)
HTTP_RESPONSES = Counter(
    "tether_http_responses", "Every HTTP response by route template, method and status.",
    ["route", "method", "status"], registry=REGISTRY)


class _BoardCollector:
    """Gauges read from the board at scrape time: no gauge can drift from the actors."""

    def describe(self) -> list:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = BOARD.snapshot()
        in_flight = GaugeMetricFamily("tether_in_flight", "Tasks under way per Llm.",
                                      labels=["llm"])
        queued = GaugeMetricFamily("tether_queued", "Requests waiting at the hub (a wake, a free "
                                   "slot) per Llm.",
                                   labels=["llm"])
        llms = GaugeMetricFamily("tether_llms", "Llms by kind and status (waking while a wake "
                                 "runs).", labels=["kind", "status"])
        by_state: dict[tuple[str, str], int] = {}
        for row in snap["llms"]:
            in_flight.add_metric([row["name"]], row["inFlight"])
            queued.add_metric([row["name"]], row["queued"])
            key = (row["kind"], row["status"])
            by_state[key] = by_state.get(key, 0) + 1
        for (kind, status), count in sorted(by_state.items()):
            llms.add_metric([kind, status], count)
        totals = snap["totals"]
        yield in_flight
        yield queued
        yield llms
        yield GaugeMetricFamily("tether_publisher_sessions", "Publisher sessions known to this "
                                "process.", value=totals["sessions"])
        yield GaugeMetricFamily("tether_streams_open", "Publisher task streams open.",
                                value=totals["streamsOpen"])
        yield GaugeMetricFamily("tether_status_feeds", "Status pages watching the live feed.",
                                value=totals["feeds"])


BOARD_GAUGES = _BoardCollector()
REGISTRY.register(BOARD_GAUGES)


def exposition() -> bytes:
    if multiproc_metrics.enabled():  # several workers: the whole host's
        return multiproc_metrics.exposition()
    return generate_latest(REGISTRY)


def _children(metric: Any) -> Callable[..., Any]:
    """`metric.labels(...)` kept per label values: labels() validates and locks on every
    call, and the request path calls it several times a request. Only for metrics whose
    label sets are never removed (the cache would hand out a removed child)."""
    children: dict[tuple[str, ...], Any] = {}

    def child(*values: str) -> Any:
        found = children.get(values)
        if found is None:
            found = children[values] = metric.labels(*values)
        return found

    return child


_queue_wait = _children(QUEUE_WAIT)
_first_chunk = _children(FIRST_CHUNK)
_requests = _children(REQUESTS)
_request_seconds = _children(REQUEST_SECONDS)
_http_responses = _children(HTTP_RESPONSES)
_tokens = _children(TOKENS)
_alias_requests = _children(ALIAS_REQUESTS)


def _safe(fn: Callable[..., None]) -> Callable[..., None]:
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except Exception:  # noqa: BLE001 - observing must never break what it observes
            log.exception("metrics: %s failed", fn.__name__)

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


# --- requests ----------------------------------------------------------------------------


@_safe
def queue_waited(llm: str, seconds: float) -> None:
    """A request's task was sent, `seconds` after the request reached its Llm."""
    _queue_wait(llm).observe(seconds)


@_safe
def first_chunk(llm: str, seconds: float) -> None:
    _first_chunk(llm).observe(seconds)


@_safe
def request_done(llm: str, endpoint: str, status: int, code: str | None,
                 seconds: float) -> None:
    """A request's outcome: its HTTP status (499: the client left) and error code."""
    _requests(llm, endpoint, str(status)).inc()
    _request_seconds(llm).observe(seconds)
    if code is not None and status != 499:
        ERRORS.labels(llm, code).inc()
    BOARD.request_done(llm, status, code)


@_safe
def tokens_used(llm: str, prompt: int, completion: int) -> None:
    """An answer's usage (valid counts only: tether.observability.usage)."""
    _tokens(llm, "prompt").inc(prompt)
    _tokens(llm, "completion").inc(completion)


@_safe
def alias_request_done(alias: str, llm: str, status: int) -> None:
    """A request for `alias` answered by its target `llm` (also in tether_requests_total)."""
    _alias_requests(alias, llm, str(status)).inc()


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def task_fields(task_id: str, llm: str, session: str, endpoint: str, outcome: str,
                started: float) -> dict[str, Any]:
    """The structured fields of a task's log line (`outcome` is "200", "503:code", ...)."""
    status, _, code = outcome.partition(":")
    return {"task_id": task_id, "llm": llm, "session": session, "endpoint": endpoint,
            "status": int(status) if status.isdigit() else status, "code": code or None,
            "duration_ms": _ms(time.monotonic() - started)}


@_safe
def task_cancelled(llm: str, reason: str, reply: Any = None) -> None:
    TASKS_CANCELLED.labels(llm, reason).inc()
    cancelled = getattr(reply, "cancelled", None)  # a MeteredReply (tether.actors.reply)
    if cancelled is not None:
        cancelled(reason)


@_safe
def task_timed_out(llm: str, code: str) -> None:
    TASKS_TIMED_OUT.labels(llm, code).inc()


@_safe
def http_response(route: str | None, method: str, status: str) -> None:
    _http_responses(route or "unmatched", method, status.split(" ", 1)[0]).inc()


# --- wakes -------------------------------------------------------------------------------

_wakes: dict[str, float] = {}  # wake task id -> monotonic start; only wakes under way


@_safe
def wake_started(llm: str, task_id: str) -> None:
    _wakes[task_id] = time.monotonic()
    WAKES.labels(llm, "started").inc()
    BOARD.wake_started(llm)
    wake_log.info("wake %s of %s started", task_id, llm, extra={"task_id": task_id, "llm": llm})


@_safe
def wake_renamed(task_id: str, new_task_id: str) -> None:
    """A wake under way went on under a new task id (its session moved to another process)."""
    if task_id in _wakes:
        _wakes[new_task_id] = _wakes.pop(task_id)


@_safe
def wake_ended(llm: str, task_id: str, outcome: str) -> None:
    """`outcome`: succeeded, failed, timed_out or abandoned. Once per started wake."""
    started = _wakes.pop(task_id, None)
    if started is None:
        return
    seconds = time.monotonic() - started
    WAKES.labels(llm, outcome).inc()
    WAKE_SECONDS.labels(llm, outcome).observe(seconds)
    BOARD.wake_ended(llm, outcome, seconds)
    wake_log.log(logging.INFO if outcome == "succeeded" else logging.WARNING,
                 "wake %s of %s %s in %d ms", task_id, llm, outcome, _ms(seconds),
                 extra={"task_id": task_id, "llm": llm, "status": outcome,
                        "duration_ms": _ms(seconds)})


# --- actors ------------------------------------------------------------------------------


@_safe
def llm_seen(owner: str, name: str, kind: str, status: str, session_id: str | None,
             waking: bool, in_flight: int, queued: int, heartbeat: bool = False) -> None:
    BOARD.llm(owner, name, kind, status, session_id, waking, in_flight, queued, heartbeat)


@_safe
def llm_gone(owner: str, name: str) -> None:
    BOARD.llm_gone(owner, name)


@_safe
def session_seen(owner: str, session_id: str, stream_open: bool, open_tasks: int) -> None:
    BOARD.session(owner, session_id, stream_open, open_tasks)


@_safe
def session_gone(owner: str, session_id: str) -> None:
    BOARD.session_gone(owner, session_id)


@_safe
def closing() -> None:
    """The hub is shutting down: live status feeds end."""
    BOARD.close()


@_safe
def actor_restarted(kind: str, gave_up: bool = False) -> None:
    ACTOR_RESTARTS.labels(kind, "gave_up" if gave_up else "restarted").inc()


@_safe
def actor_down(kind: str, key: str) -> None:
    """A child left down after too many crashes: its Llm shows `inactive` (so does the row)."""
    BOARD.actor_down(kind, key)


@_safe
def swept(action: str, count: int = 1) -> None:
    """The sweep's counts: `action` is "inactive" or "deleted"."""
    if count:
        SWEEP_ROWS.labels(action).inc(count)


# --- pools (docs/protocol.md, Pools) ----------------------------------------------------------

POOL_ROUTED = Counter(
    "tether_pool_routed", "Requests handed to a member of an Llm, by decision: affinity (the "
    "member that served the conversation's prefix), least_loaded, round_robin (with "
    "pool_routing = round_robin), failover (moved off a member whose stream was lost), "
    "retry (after a retryable error).", ["llm", "decision"],
    registry=REGISTRY)
MEMBER_IN_FLIGHT = Gauge(
    "tether_member_in_flight", "Tasks under way per member of a pool (member: its "
    "providerSessionId, as docs/protocol.md names the label; none for a single publisher).",
    ["llm", "member"], multiprocess_mode="livesum",  # several workers: summed over live ones
    registry=REGISTRY)


_pool_routed = _children(POOL_ROUTED)


@_safe
def routed(llm: str, decision: str) -> None:
    _pool_routed(llm, decision).inc()


@_safe
def member_in_flight(llm: str, counts: dict[str, int]) -> None:
    for member, count in counts.items():
        MEMBER_IN_FLIGHT.labels(llm, member).set(count)


@_safe
def member_gone(llm: str, member: str) -> None:
    with contextlib.suppress(KeyError):
        MEMBER_IN_FLIGHT.remove(llm, member)
