"""Relaying an infer to a public Llm's upstream (an OpenAI-compatible server the hub's config
declares). Runs beside the actors (runtime.spawn) and reports what the upstream answered
through an `Answer` the caller supplies (the LlmActor turns it into the same reply events
a publisher's answer produces), so this module knows nothing of the actors."""

from __future__ import annotations

import logging
from typing import Any, Protocol

from tether import errors
from tether.common.backend_client import BackendClient, BackendError, Unreachable
from tether.config import PublicLlm
from tether.errors import TetherError

log = logging.getLogger("tether.upstream")


class Answer(Protocol):
    """Where a relay reports: one `completed` or `failed`, or `chunk`s then `done`."""

    def completed(self, status: int, body: Any) -> None: ...

    def chunk(self, data: str) -> None: ...

    def done(self) -> None: ...

    def failed(self, error: TetherError) -> None: ...


def client_for(llm: PublicLlm, read_timeout: float) -> BackendClient:
    return BackendClient(llm.base_url, llm.api_key, concurrency=16, read_timeout=read_timeout)


def relay(
    client: BackendClient, llm: PublicLlm, endpoint: str, request: dict[str, Any],
    streaming: bool, answer: Answer, task_id: str = "",
) -> None:
    """Relay one request and report on `answer`; whatever happens, the client gets an answer."""
    try:
        _relay(client, llm, endpoint, request, streaming, answer)
    except Exception:  # a defect or a malformed upstream answer: never leave a client waiting
        log.exception("task %s llm=%s: relaying to the upstream failed", task_id, llm.name)
        answer.failed(errors.UPSTREAM_ERROR(name=llm.name, task_id=task_id))


def _relay(
    client: BackendClient, llm: PublicLlm, endpoint: str, request: dict[str, Any],
    streaming: bool, answer: Answer,
) -> None:
    request = dict(request)
    request["model"] = llm.model  # clients name the Llm; the upstream wants its model
    try:
        if not streaming:
            status, body = client.call(endpoint, request)
            answer.completed(status, body)
            return
        try:
            for data in client.stream(endpoint, request):
                answer.chunk(data)
        except BackendError as exc:  # a refusal before any chunk keeps its status and body
            answer.completed(exc.status, exc.body)
            return
        answer.done()
    except Unreachable as exc:
        answer.failed(errors.UPSTREAM_UNREACHABLE(name=llm.name, why=exc))
