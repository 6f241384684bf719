"""Running one task against the backend and posting its result to the hub.

Each task runs in its own greenlet; a cancel kills that greenlet, which shuts its side of the
backend connection (the backend sees the client go away) and returns once the backend closed
it (tether.common.wire, settle): the task's slot is free only when the backend's work ended.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import gevent.queue

from tether.common.backend_client import DONE, BackendClient, BackendError, Unreachable
from tether.common.task_wire import (
    Chunk,
    InferTask,
    Result,
    chunks_result,
    endpoint_of,
    error_result,
    final_result,
)
from tether.publisher import answers
from tether.publisher.config import BackendConfig
from tether.publisher.hub_client import HubClient

log = logging.getLogger("tether.publisher.tasks")

# A result that meets a closed door (no connection, or 503: hub_busy, shutting_down,
# database_unavailable) is posted again with this backoff until the task's deadline: the
# hub's `infer_timeout_s` (600 s by default), past which it has answered the client and a
# result is refused 404 anyway.
RETRY_FIRST_S = 0.25
RETRY_MAX_S = 5.0
RESULT_DEADLINE_S = 600.0


class TaskGone(Exception):
    """The hub no longer knows the task (cancelled, timed out): stop working on it."""


def post_result(hub: HubClient, session_id: Callable[[], str | None], task_id: str,
                body: Result, deadline: float | None = None) -> None:
    """Send a result: on the session's result channel when the publisher keeps one and the
    hub offers it (queued there, confirmed and re-sent by the channel: docs/protocol.md,
    `_provider-results`), else by its own POST (`post_result_now`)."""
    if deadline is None:
        deadline = time.monotonic() + RESULT_DEADLINE_S
    if hub.results is not None and hub.results.post(task_id, body, deadline):
        return
    post_result_now(hub, session_id, task_id, body, deadline)


def post_result_now(hub: HubClient, session_id: Callable[[], str | None], task_id: str,
                    body: Result, deadline: float | None = None) -> None:
    """POST a result; retried with backoff while the hub is unreachable or answers 503
    (restarting, draining, a bus or database outage), until `deadline` (time.monotonic();
    by default RESULT_DEADLINE_S from now). The hub takes a result once: a copy it already
    has is answered 404 (TaskGone)."""
    path = f"/api/v1/llms/_provider-task/{task_id}/result"
    if deadline is None:
        deadline = time.monotonic() + RESULT_DEADLINE_S
    delay = RETRY_FIRST_S
    while True:
        sid = session_id()
        try:
            status, answer = hub.post(path, body, {"X-Provider-Session-Id": sid} if sid else None)
        except Unreachable:
            if time.monotonic() + delay > deadline:
                raise
        else:
            if status == 404:
                raise TaskGone(task_id)
            if status != 503:
                if status >= 400:
                    # Only the code: a refusal may quote the body, i.e. completion text.
                    log.warning("hub refused the result of %s: %s %s", task_id, status,
                                error_code(answer))
                return
            if time.monotonic() + delay > deadline:
                log.warning("hub refused the result of %s until its deadline: %s %s",
                            task_id, status, error_code(answer))
                return
        gevent.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_S)


def error_code(answer: Any) -> str:
    """The `error.code` of a hub's answer; "?" when it has none."""
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        return str(answer["error"].get("code"))
    return "?"


class BackendDown(Exception):
    """The backend refused the connection (or reset it) before answering anything: nothing
    ran and nothing was posted; the backend actor decides (wake it, or answer the task)."""


def run_infer(task: InferTask, backend: BackendConfig, client: BackendClient,
              hub: HubClient, session_id: Callable[[], str | None]) -> None:
    """Run one task on the backend and post its result. Raises BackendDown (having posted
    nothing) when the backend could not be reached at all."""
    task_id = task["taskId"]
    endpoint = endpoint_of(task)
    request = dict(task["request"])
    request["model"] = backend.model  # the hub forwards the Llm name; the backend wants its own
    started = time.monotonic()
    outcome = "?"
    try:
        if task["streaming"]:
            outcome = _stream(task_id, endpoint, request, backend, client, hub, session_id)
        else:
            result: Result
            try:
                status, body = client.call(endpoint, request)
            except Unreachable as exc:
                if exc.before_any_byte:
                    raise BackendDown(f"backend {backend.name} unreachable: {exc}") from None
                status, result = 502, error_result(f"backend {backend.name} unreachable: {exc}")
            else:
                result = final_result(status, _answer(status, body, backend.name))
            post_result(hub, session_id, task_id, result)
            outcome = str(status)
    except BackendDown:
        outcome = "unreached"
        raise
    except TaskGone:
        outcome = "gone"
    except gevent.GreenletExit:
        outcome = "cancelled"
        raise
    except Unreachable:
        outcome = "hub-unreachable"
    except Exception:
        # A bug, or a failure nobody foresaw: answer at once (the client would otherwise
        # wait for `infer_timeout_s`) and leave the task id in the log.
        outcome = "crashed"
        log.exception("task %s llm=%s failed unexpectedly", task_id, backend.name)
        with contextlib.suppress(TaskGone, Unreachable):
            post_result(hub, session_id, task_id, error_result(
                f"the publisher failed on this task ({task_id})", 502, "publisher_error"))
    finally:
        if log.isEnabledFor(logging.INFO):  # at `warning` a task costs no log work at all
            ms = int((time.monotonic() - started) * 1000)
            log.info("task %s llm=%s endpoint=%s status=%s duration_ms=%d", task_id,
                     backend.name, endpoint, outcome, ms,
                     extra={"task_id": task_id, "llm": backend.name, "endpoint": endpoint,
                            "status": int(outcome) if outcome.isdigit() else outcome,
                            "duration_ms": ms})


def _answer(status: int, body: Any, name: str) -> Any:
    """A whole answer as the client may see it: the Llm's name as its model, an error in
    the OpenAI envelope."""
    return answers.relabel_body(body, name) if status < 400 else \
        answers.openai_error(status, body)


# Hubs before 2026-12-07 read a chunked request body 1 KiB at a time (gunicorn's
# readline): a shorter piece would wait for the next ones before the hub saw it. Pieces are
# padded to this with a blank line, which NDJSON readers skip.
NDJSON_FLUSH_BYTES = 1024


def padded(piece: bytes) -> bytes:
    """An NDJSON upload's piece, padded to NDJSON_FLUSH_BYTES with a blank line."""
    if len(piece) < NDJSON_FLUSH_BYTES:
        piece += b" " * (NDJSON_FLUSH_BYTES - len(piece) - 1) + b"\n"
    return piece


Item = tuple[str, Any]  # ("data", chunk) or the stream's end: ("done" | "status" | "error", …)


def _lines(batch: list[Item], index: int | None = None) -> list[Result]:
    """The queued items as result lines: the chunks in one `chunks` line (one apply at the
    hub; `index`, when given, is its first chunk's place in the stream), then the ending, if
    the batch has one."""
    chunks: list[Chunk] = [{"data": value} for kind, value in batch if kind == "data"]
    kind, value = batch[-1]
    lines: list[Result] = []
    if kind == "done":
        chunks.append({"done": True})
    if chunks:
        lines.append(chunks_result(chunks, index))
    if kind == "status":
        lines.append(final_result(value.status, value.body))
    elif kind == "error":
        lines.append(error_result(value))
    return lines


def _batches(first: Item, items: gevent.queue.Queue) -> Iterator[list[Item]]:
    """The items in batches of what is queued when the last went out; the last batch ends
    with the stream's end."""
    batch = [first]
    while True:
        while batch[-1][0] == "data":
            try:
                batch.append(items.get_nowait())
            except gevent.queue.Empty:
                break
        yield batch
        if batch[-1][0] != "data":
            return
        batch = [items.get()]


def _outcome(end: Item) -> str:
    kind, value = end
    return {"done": "200", "status": str(getattr(value, "status", "?")), "error": "502"}[kind]


def _on_channel(task_id: str, batches: Iterator[list[Item]], hub: HubClient,
                session_id: Callable[[], str | None]) -> str:
    """Relay a stream as lines of the session's result channel, each numbered by its first
    chunk's place in the stream (`index`: the hub applies each chunk once, wherever a copy
    lands). The channel sends what is queued as it comes, in order."""
    deadline = time.monotonic() + RESULT_DEADLINE_S
    index = 0
    for batch in batches:
        for line in _lines(batch, index):
            post_result(hub, session_id, task_id, line, deadline)
            if "chunks" in line:
                index += len(line["chunks"])
        if batch[-1][0] != "data":
            return _outcome(batch[-1])
    return "?"


def _stream(task_id: str, endpoint: str, request: dict[str, Any], backend: BackendConfig,
            client: BackendClient, hub: HubClient,
            session_id: Callable[[], str | None]) -> str:
    """Relay the backend's chunks on the session's result channel when the hub takes them
    there, else as one NDJSON upload of their own: either way each line is applied by the hub
    as it arrives, and what is queued when a piece goes out travels in that same piece. The
    relay begins with the backend's first answer: one that cannot be reached posts nothing."""
    items: gevent.queue.Queue = gevent.queue.Queue()
    name = backend.name

    def read() -> None:
        try:
            ended = False
            for data in client.stream(endpoint, request, with_done=True):
                if data == DONE:
                    ended = True
                    break
                data, final = answers.relabel_chunk(data, name)
                ended = ended or final
                items.put(("data", data))
            # A backend that broke its stream (llama-cpp-python on a context overflow: 200
            # and no chunk) must not look like a short answer.
            items.put(("done", None) if ended else (
                "error", f"backend {name}'s stream ended early (no [DONE], no finish_reason)"))
        except BackendError as exc:
            items.put(("status", BackendError(exc.status, answers.openai_error(exc.status,
                                                                               exc.body))))
        except Unreachable as exc:
            # Refused before any byte: the backend never ran it (asleep, or gone).
            kind = "unreached" if exc.before_any_byte else "error"
            items.put((kind, f"backend {name}: {exc}"))
        except Exception as exc:  # a bug here must still end the upload, never hang it
            log.exception("task %s: reading the backend stream failed", task_id)
            items.put(("error", f"the publisher failed reading backend {name}: "
                                f"{type(exc).__name__}"))

    outcome = ["?"]
    reader = gevent.spawn(read)
    try:
        first = items.get()
        if first[0] == "unreached":
            raise BackendDown(first[1])
        if hub.results is not None and hub.results.takes_chunks():
            return _on_channel(task_id, _batches(first, items), hub, session_id)

        def pieces() -> Iterator[bytes]:
            for batch in _batches(first, items):
                yield padded(b"".join(json.dumps(line).encode() + b"\n"
                                      for line in _lines(batch)))
                if batch[-1][0] != "data":
                    outcome[0] = _outcome(batch[-1])

        sid = session_id()
        try:
            status, answer = hub.post_ndjson(
                f"/api/v1/llms/_provider-task/{task_id}/result", pieces(),
                {"X-Provider-Session-Id": sid} if sid else None)
        except Unreachable as exc:
            # The upload broke: whatever did not arrive cannot be replayed, so end the task
            # with an error (retried like any result) rather than leave its client waiting.
            # To the client the publisher went away before answering (a hub process
            # killed mid-stream does this): publisher_disconnected, as on a lost stream.
            post_result(hub, session_id, task_id,
                        error_result(f"relaying the stream broke: {exc}", 503,
                                     "publisher_disconnected"))
            return "503"
        if status == 503:
            # Refused part-way (a bus or database outage, a drain): the lines after the one
            # refused were not applied and cannot be replayed; end the task with an error
            # (retried like any result) rather than leave its client waiting. The client
            # sees the hub's own fault code (hub_busy, database_unavailable, shutting_down):
            # the outage is the hub's, not the Llm's (publisher_error would blame the Llm).
            code = error_code(answer)
            code = code if code != "?" else "hub_busy"
            post_result(hub, session_id, task_id, error_result(
                f"the hub refused the stream's upload part-way ({code})", 503, code))
            return "503"
    finally:
        _stop_reading(reader)
    if status == 404:
        raise TaskGone(task_id)
    return outcome[0]


def _stop_reading(reader: gevent.Greenlet) -> None:
    """Stop the backend read and wait until the backend is done with the call (wire's
    settle, inside the reader): the task's slot stays taken until then. A cancel arriving
    meanwhile does not cut the wait short (the upload's 404 and the cancel of a client that
    left come together); it is raised once the reader is gone."""
    cancelled: BaseException | None = None
    while not reader.dead:
        try:
            reader.kill(block=True)
        except gevent.GreenletExit as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled
