"""Relaying an infer to a public Llm's upstream (an OpenAI-compatible server the hub's config
declares). Runs beside the actors (runtime.spawn) and answers on the request's reply channel
with the same events a publisher's answer produces, so the HTTP side renders both alike."""

from __future__ import annotations

import logging

from tether.actors import messages as m
from tether.config import PublicLlm
from tether.errors import TetherError
from tether.openai_client import BackendClient, BackendError, Unreachable

log = logging.getLogger("tether.upstream")


def client_for(llm: PublicLlm, read_timeout: float) -> BackendClient:
    return BackendClient(llm.base_url, llm.api_key, concurrency=16, read_timeout=read_timeout)


def relay(client: BackendClient, llm: PublicLlm, msg: m.Infer, task_id: str = "") -> None:
    """Answer `msg.reply` from the upstream; whatever happens, the client gets an answer."""
    try:
        _relay(client, llm, msg)
    except Exception:  # a defect or a malformed upstream answer: never leave a client waiting
        log.exception("task %s llm=%s: relaying to the upstream failed", task_id, llm.name)
        msg.reply.put(m.Failed(TetherError(
            502, "upstream_error",
            f"relaying to the upstream of {llm.name!r} failed (task {task_id})")))


def _relay(client: BackendClient, llm: PublicLlm, msg: m.Infer) -> None:
    request = dict(msg.request)
    request["model"] = llm.model  # clients name the Llm; the upstream wants its model
    try:
        if not msg.streaming:
            status, body = client.call(msg.endpoint, request)
            msg.reply.put(m.Completed(status, body))
            return
        try:
            for data in client.stream(msg.endpoint, request):
                msg.reply.put(m.Chunks((data,)))
        except BackendError as exc:  # a refusal before any chunk keeps its status and body
            msg.reply.put(m.Completed(exc.status, exc.body))
            return
        msg.reply.put(m.StreamDone())
    except Unreachable as exc:
        msg.reply.put(m.Failed(TetherError(
            502, "upstream_unreachable", f"the upstream of {llm.name!r} is unreachable: {exc}")))
