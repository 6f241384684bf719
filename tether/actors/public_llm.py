"""PublicLlmActor: one per public Llm (declared in the hub's config, served by an upstream
OpenAI-compatible API: docs/protocol.md, Public Llms). It has no members, no queue and no
wake: each infer starts its upstream call at once, beside the actor, which only counts the
calls under way against max_queue_per_llm.

The calls report their end through `_home`, a link a restarted actor re-points at itself:
it inherits its crashed predecessor's calls still running (ProxiesInFlight) and keeps
counting them.
"""

from __future__ import annotations

import uuid
from typing import Any, assert_never

from tether import errors, upstream
from tether.actors import aliases
from tether.actors import messages as m
from tether.common.actor import Parent, TetherActor, tell
from tether.common.runtime import Task, spawn
from tether.config import PublicLlm, Settings
from tether.errors import TetherError
from tether.observability import metrics
from tether.store.models import INACTIVE


class PublicLlmActor(TetherActor):
    use_daemon_thread = True  # as every Llm's actor: see TetherActor

    def __init__(
        self, settings: Settings, state: m.LlmState, public: PublicLlm | None,
        supervisor: Parent | None = None, proxies: m.ProxiesInFlight | None = None,
        forward: aliases.Forward = aliases.nowhere,
    ) -> None:
        super().__init__()
        self._home = proxies.home if proxies is not None else Parent()
        self._home.ref = self.actor_ref
        self._settings = settings
        self._supervisor = supervisor if supervisor is not None else Parent()
        self._state = state
        self._public = public
        self._upstream = (
            upstream.client_for(public, settings.infer_timeout_s) if public is not None else None
        )
        # The upstream calls under way (a crashed predecessor's too).
        self._proxied: set[str] = set(proxies.task_ids if proxies is not None else ())
        self._forward = forward  # where an alias's infer goes if this one cannot serve

    def receive(self, message: m.PublicLlmMessage) -> Any:
        match message:
            case m.Infer():
                self._on_infer(message)
            case m.TaskEnded():
                self._proxied.discard(message.task_id)
            case m.Withdraw():
                pass  # its call started at once: the client's cancel goes by its Dispatched
            case m.Retire():
                self.stop()  # its calls under way end by themselves
            case _:
                assert_never(message)

    def _on_infer(self, msg: m.Infer) -> None:
        if msg.alias is not None:  # a public Llm can serve now, if it has an upstream
            if self._upstream is None and aliases.pass_on(msg, self._state.name, False,
                                                          self._forward):
                return
            msg = aliases.taken(msg, self._state.name)
        if len(self._proxied) >= self._settings.max_queue_per_llm:
            msg.reply.put(m.Failed(errors.QUEUE_FULL(
                why=f"{self._state.name!r} already has "
                    f"{self._settings.max_queue_per_llm} requests waiting")))
            return
        if self._public is None or self._upstream is None:
            msg.reply.put(m.Failed(errors.PUBLISHER_OFFLINE(name=self._state.name)))
            return
        task_id = f"p-{uuid.uuid4().hex}"
        self._proxied.add(task_id)
        home, client, llm = self._home, self._upstream, self._public
        worker: list[Task] = []

        def cancel(_why: str) -> None:
            if worker:
                worker[0].cancel()

        msg.reply.put(m.Dispatched(task_id, cancel))

        def run() -> None:
            try:
                upstream.relay(
                    client, llm, msg.endpoint, msg.request, msg.streaming,
                    _ReplyAnswer(msg.reply), task_id)
            finally:
                tell(home.ref, m.TaskEnded(task_id))

        worker.append(spawn(run))

    def report_crash(self) -> None:
        proxies = m.ProxiesInFlight(self._home, tuple(self._proxied))
        tell(self._supervisor.ref,
             m.ChildFailed("llm", self._state.name, self.actor_ref, proxies))

    def on_stop(self) -> None:
        metrics.llm_gone(self.actor_urn, self._state.name)

    def on_orphan(self, message: Any) -> None:
        if isinstance(message, m.Infer):  # still in the mailbox of an actor that ended
            message.reply.put(m.Failed(errors.ACTOR_RESTARTED(
                actor=f"actor of {self._state.name!r}",
                why="failed and is being restarted" if self.crashed else "has stopped")))

    # --- observability -------------------------------------------------------------------

    def on_start(self) -> None:
        self.after_message(None)

    def after_message(self, message: Any) -> None:
        s = self._state
        metrics.llm_seen(self.actor_urn, s.name, s.kind, s.status, None, False,
                         len(self._proxied), 0, message is None and s.status != INACTIVE)


class _ReplyAnswer:
    """An upstream relay's answer (upstream.Answer), put on the client's reply channel as
    the same events a publisher's answer produces."""

    __slots__ = ("_reply",)

    def __init__(self, reply: m.ReplyChannel) -> None:
        self._reply = reply

    def completed(self, status: int, body: Any) -> None:
        self._reply.put(m.Completed(status, body))

    def chunk(self, data: str) -> None:
        self._reply.put(m.Chunks((data,)))

    def done(self) -> None:
        self._reply.put(m.StreamDone())

    def failed(self, error: TetherError) -> None:
        self._reply.put(m.Failed(error))
