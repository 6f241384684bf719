"""Running one task against the backend and posting its result to the hub.

Each task runs in its own greenlet; a cancel kills that greenlet, which closes the backend
connection (the backend sees the client go away).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.queue

from tether.openai_client import BackendClient, BackendError, Unreachable
from tether.publisher.clients import HubClient
from tether.publisher.config import BackendConfig

log = logging.getLogger("tether.publisher.tasks")

RESULT_RETRIES = (0.5, 1.0, 2.0, 4.0)


class TaskGone(Exception):
    """The hub no longer knows the task (cancelled, timed out): stop working on it."""


def post_result(hub: HubClient, session_id: Callable[[], str | None], task_id: str,
                body: dict[str, Any]) -> None:
    """POST a result; retried while the hub is unreachable (it may be restarting)."""
    path = f"/api/v1/llms/_provider-task/{task_id}/result"
    for delay in (*RESULT_RETRIES, None):
        sid = session_id()
        try:
            status, answer = hub.post(path, body, {"X-Provider-Session-Id": sid} if sid else None)
        except Unreachable:
            if delay is None:
                raise
            gevent.sleep(delay)
            continue
        if status == 404:
            raise TaskGone(task_id)
        if status >= 400:
            # Only the code: a refusal may quote the body, i.e. completion text.
            log.warning("hub refused the result of %s: %s %s", task_id, status, _code(answer))
        return


def _code(answer: Any) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        return str(answer["error"].get("code"))
    return "?"


def error_result(message: str, status: int = 502) -> dict[str, Any]:
    return {"error": {"message": message, "status": status}}


def run_infer(task: dict[str, Any], backend: BackendConfig, client: BackendClient,
              hub: HubClient, session_id: Callable[[], str | None]) -> None:
    task_id = task["taskId"]
    endpoint = task.get("endpoint", "chat/completions")
    request = dict(task["request"])
    request["model"] = backend.model  # the hub forwards the Llm name; the backend wants its own
    started = time.monotonic()
    outcome = "?"
    try:
        if task.get("streaming"):
            outcome = _stream(task_id, endpoint, request, backend, client, hub, session_id)
        else:
            try:
                status, body = client.call(endpoint, request)
            except Unreachable as exc:
                status, result = 502, error_result(f"backend {backend.name} unreachable: {exc}")
            else:
                result = {"status": status, "body": body}
            post_result(hub, session_id, task_id, result)
            outcome = str(status)
    except TaskGone:
        outcome = "gone"
    except gevent.GreenletExit:
        outcome = "cancelled"
        raise
    except Unreachable:
        outcome = "hub-unreachable"
    finally:
        log.info("task %s llm=%s endpoint=%s status=%s duration_ms=%d", task_id, backend.name,
                 endpoint, outcome, (time.monotonic() - started) * 1000)


def _stream(task_id: str, endpoint: str, request: dict[str, Any], backend: BackendConfig,
            client: BackendClient, hub: HubClient,
            session_id: Callable[[], str | None]) -> str:
    items: gevent.queue.Queue = gevent.queue.Queue()

    def read() -> None:
        try:
            for data in client.stream(endpoint, request):
                items.put(("data", data))
            items.put(("done", None))
        except BackendError as exc:
            items.put(("status", exc))
        except Unreachable as exc:
            items.put(("error", f"backend {backend.name}: {exc}"))

    reader = gevent.spawn(read)
    try:
        while True:
            # No deliberate wait: what arrived while the previous POST was out travels
            # together in the next one, so no chunk is held longer than one round trip.
            batch: list[tuple[str, Any]] = [items.get()]
            while batch[-1][0] == "data":
                try:
                    batch.append(items.get_nowait())
                except gevent.queue.Empty:
                    break
            chunks = [{"data": value} for kind, value in batch if kind == "data"]
            last_kind, last_value = batch[-1]
            if last_kind == "done":
                if chunks:
                    chunks[-1]["done"] = True
                else:
                    chunks.append({"done": True})
            if chunks:
                post_result(hub, session_id, task_id, {"chunks": chunks})
            if last_kind == "done":
                return "200"
            if last_kind == "status":
                post_result(hub, session_id, task_id,
                            {"status": last_value.status, "body": last_value.body})
                return str(last_value.status)
            if last_kind == "error":
                post_result(hub, session_id, task_id, error_result(last_value))
                return "502"
    finally:
        reader.kill(block=False)
