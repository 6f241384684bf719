"""BackendActor: one per backend process, whatever number of Llm names it serves (a backend
that discovers its models serves each it lists). Owns its concurrency slots and their
ordered wait queue, the wake and sleep state, and the idle timer that scales the backend to
zero: those belong to the backend process, so one model's idle sleep never stops the server
under its siblings. A discovering backend's list is read here too (every probe_interval_s,
never while tasks run), and each change is handed to the publisher (`on_served`).

Work that blocks (backend calls, result POSTs, recipes) runs in spawned greenlets that report
back with a message; the actor itself never waits on the network.

The backend is probed (`GET /models`) only when it is not known to be up: at a wake, and
never while tasks run on it. llama-cpp-python's server cancels the request it is running
when another one arrives, so a probe beside a stream would cut it.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, assert_never

import gevent
import pykka

from tether.common.actor import TetherActor, tell
from tether.common.backend_client import CANCEL_SETTLE_S, BackendClient, Unreachable
from tether.common.runtime import Timer, call_later
from tether.common.task_wire import InferTask, Result, error_result, final_result
from tether.publisher import discovery, tasks
from tether.publisher import messages as m
from tether.publisher.config import BackendConfig
from tether.publisher.discovery import Served
from tether.publisher.hub_client import HubClient
from tether.publisher.idle_sleep import IdleSleep
from tether.publisher.registration import Status, report_status
from tether.publisher.waking import wake

log = logging.getLogger("tether.publisher.backend")

# Task ids remembered so that a frame the hub replays after a reconnect (Last-Event-ID) is
# not run a second time.
REMEMBERED_TASKS = 4096


@dataclass(frozen=True)
class Crashed:
    """What a crashed BackendActor tells the publisher, from its on_failure."""

    name: str  # the backend's key
    ref: pykka.ActorRef
    asleep: bool


OnServed = Callable[[str, dict[str, Served]], None]


class BackendActor(TetherActor, IdleSleep):
    def __init__(self, backend: BackendConfig, hub: HubClient,
                 session_id: Callable[[], str | None], asleep: bool,
                 on_crash: Callable[[Crashed], None] | None = None,
                 probe_interval_s: float = 5.0, served: dict[str, Served] | None = None,
                 on_served: OnServed | None = None) -> None:
        super().__init__()
        self.on_crashed = on_crash
        self.backend = backend
        self.key = backend.key
        # The Llms it serves, by name: its one name, or what its latest listing said.
        if served is None:
            served = {} if backend.discovers else {backend.name: Served(backend)}
        self.catalogue = discovery.Catalogue(backend, served)
        self.on_served = on_served
        self.listing: gevent.Greenlet | None = None
        self.list_timer: Timer | None = None
        self.client = BackendClient(backend.base_url, backend.api_key, backend.max_concurrency,
                                    settle_s=CANCEL_SETTLE_S)
        self.hub = hub
        self.session_id = session_id
        self.asleep = asleep
        self.probe_interval_s = probe_interval_s  # a down backend without wake recipe
        self.running: dict[str, gevent.Greenlet] = {}
        self.cancelled: set[str] = set()  # running tasks cancelled, their backend call settling
        self.waiting: deque[InferTask] = deque()
        self.wake_tasks: list[str] = []
        self.waking: gevent.Greenlet | None = None
        self.wake_wanted = False  # a wake waits for the running tasks to end
        self.sleeping: gevent.Greenlet | None = None
        self.idle_generation = 0
        self.idle_timer: Timer | None = None
        self.probe_timer: Timer | None = None
        self.seen: set[str] = set()
        self.seen_order: deque[str] = deque()
        self.draining = False
        self.posts: list[gevent.Greenlet] = []  # result POSTs made by the actor itself
        self.reporting: gevent.Greenlet | None = None  # the last status report to the hub

    def receive(self, message: m.BackendMessage) -> Any:
        match message:
            case m.RunInfer():
                self._on_run_infer(message)
            case m.RunWake():
                self._on_run_wake(message)
            case m.CancelTask():
                self._on_cancel(message)
            case m.TaskFinished():
                self._on_task_finished(message)
            case m.BackendDown():
                self._on_backend_down(message)
            case m.ProbeDue():
                self._on_probe_due(message)
            case m.WakeFinished():
                self._on_wake_finished(message)
            case m.SleepFinished():
                self._on_sleep_finished(message)
            case m.IdleExpired():
                self._on_idle_expired(message)
            case m.GetStatus():
                return "hibernating" if self.asleep else "active"
            case m.Drain():
                self._on_drain(message)
            case m.GetDrainState():
                return self._on_get_drain_state(message)
            case m.Abandon():
                return self._on_abandon(message)
            case m.ListDue():
                self._on_list_due()
            case m.Listed():
                self._on_listed(message)
            case _:
                assert_never(message)

    def on_start(self) -> None:
        self._arm_idle()
        if self.asleep and self.backend.wake is None:
            self._schedule_probe()
        if self.backend.discovers:
            if self.asleep and self.backend.wake is not None:
                self._start_wake()  # woken once to read its list; it may sleep again
            else:
                self._on_list_due()

    @property
    def served(self) -> dict[str, Served]:
        return self.catalogue.served

    def _cancel_timers(self) -> None:
        for timer in (self.idle_timer, self.probe_timer, self.list_timer):
            if timer is not None:
                timer.cancel()

    def on_stop(self) -> None:
        for greenlet in list(self.running.values()):
            greenlet.kill(block=False)
        self._cancel_timers()

    def on_crash(self) -> None:
        """A bug killed this actor: answer every task it held (the hub would otherwise wait
        for them until `infer_timeout_s`) and stop its greenlets; the publisher restarts it."""
        self._cancel_timers()
        for greenlet in (*self.running.values(), self.waking, self.sleeping):
            if greenlet is not None:
                greenlet.kill(block=False)
        crashed = "the publisher's actor for this backend crashed"
        for task_id in self.running:
            self._post_later(task_id, error_result(crashed))
        for task in self.waiting:  # never sent to the backend: safe to run elsewhere
            self._post_later(task["taskId"], error_result(crashed, retryable=True))
        for task_id in self.wake_tasks:
            self._post_later(task_id, error_result(crashed, 503))
        self.running, self.waiting, self.wake_tasks = {}, deque(), []

    def report_crash(self) -> None:
        if self.on_crashed is not None:
            self.on_crashed(Crashed(self.key, self.actor_ref, self.asleep))

    # --- infer ---------------------------------------------------------------------------

    def _first_sight(self, task_id: str) -> bool:
        if task_id in self.seen:
            return False
        self.seen.add(task_id)
        self.seen_order.append(task_id)
        if len(self.seen_order) > REMEMBERED_TASKS:
            self.seen.discard(self.seen_order.popleft())
        return True

    def _on_run_infer(self, msg: m.RunInfer) -> None:
        if not self._first_sight(msg.task["taskId"]):
            log.info("task %s replayed by the hub: already taken", msg.task["taskId"])
            return
        if self.draining:
            self._post_later(msg.task["taskId"], _refused())
            return
        self._disarm_idle()
        self.waiting.append(msg.task)
        if self.asleep and self.backend.wake is not None:
            self._start_wake()  # sent while we slept: wake first, then serve it
        self._fill_slots()

    def _fill_slots(self) -> None:
        if self.waking is not None or self.sleeping is not None or self.wake_wanted:
            return
        while self.waiting and len(self.running) < self.backend.max_concurrency:
            task = self.waiting.popleft()
            if task["llmName"] not in self.served:  # withdrawn since the hub sent it
                self._post_later(task["taskId"], error_result(
                    f"{task['llmName']!r} is no longer served by this publisher", 404))
                continue
            self.running[task["taskId"]] = self._spawn_task(task)

    def _spawn_task(self, task: InferTask) -> gevent.Greenlet:
        me = self.actor_ref

        def work() -> None:
            down: str | None = None
            try:
                tasks.run_infer(task, self.served[task["llmName"]].config, self.client,
                                self.hub, self.session_id)
            except tasks.BackendDown as exc:
                down = str(exc)
            finally:
                tell(me, m.TaskFinished(task["taskId"]) if down is None else
                     m.BackendDown(task, down))

        return gevent.spawn(work)

    def _on_task_finished(self, msg: m.TaskFinished) -> None:
        self.running.pop(msg.task_id, None)
        self.cancelled.discard(msg.task_id)
        if self.wake_wanted and not self.running:
            self._start_wake()
        self._fill_slots()
        self._arm_idle()

    def _on_backend_down(self, msg: m.BackendDown) -> None:
        """A backend that cannot be reached is asleep (it crashed, or was stopped): with a
        wake recipe, the request that found it down wakes it, and runs once it is up;
        without one, the request is answered and the backend is offline until its probe
        passes."""
        task_id = msg.task["taskId"]
        self.cancelled.discard(task_id)
        if self.running.pop(task_id, None) is None:
            return  # abandoned meanwhile (shutdown): already answered
        if self.backend.wake is None or self.draining:
            self._post_later(task_id, error_result(msg.error, retryable=True))
        else:
            self.waiting.appendleft(msg.task)
        if not self.asleep and not self.draining:
            self.asleep = True
            log.warning("backend %s cannot be reached (%s): hibernating, %s", self.key,
                        msg.error, "the next request wakes it" if self.backend.wake else
                        f"probed every {self.probe_interval_s:g} s")
            self._report("hibernating")
            if self.backend.wake is None:
                self._schedule_probe()
        if self.waiting and self.asleep and self.backend.wake is not None:
            self._start_wake()
        self._fill_slots()
        self._arm_idle()

    def _on_cancel(self, msg: m.CancelTask) -> None:
        greenlet = self.running.get(msg.task_id)
        if greenlet is not None:
            # Shuts the backend call; TaskFinished follows once the backend is done with
            # it (wire's settle), so its slot is not handed on while it still runs. Once:
            # a cancel sent again (after a reconnect) must not cut that wait short.
            if msg.task_id not in self.cancelled:
                self.cancelled.add(msg.task_id)
                greenlet.kill(block=False)
            return
        for task in self.waiting:
            if task["taskId"] == msg.task_id:
                self.waiting.remove(task)
                self._arm_idle()
                return

    # --- wake ----------------------------------------------------------------------------

    def _on_run_wake(self, msg: m.RunWake) -> None:
        if not self._first_sight(msg.task_id):
            return
        if self.draining:
            self._post_later(msg.task_id, error_result("the publisher is shutting down", 503))
            return
        if self.running and not self.asleep:
            # It is serving tasks, so it is up: answer without a probe, which could cut them.
            self._post_later(msg.task_id, final_result(200, {"awake": True}))
            return
        self._disarm_idle()
        self.wake_tasks.append(msg.task_id)
        self._start_wake()

    def _start_wake(self) -> None:
        if self.waking is not None or self.sleeping is not None:
            return  # joins the wake in flight, or starts once the sleep recipe is done
        if self.running:
            self.wake_wanted = True  # its probe waits for the running tasks to end
            return
        self.wake_wanted = False
        me, backend, client = self.actor_ref, self.backend, self.client

        def waking() -> None:
            # Whatever happens, the actor hears the outcome: a wake that ended without a
            # word would leave `waking` set and the backend wedged for good.
            outcome = m.WakeFinished("the wake was interrupted")
            try:
                outcome = wake(backend, client)
            except Exception as exc:  # noqa: BLE001 - e.g. OSError from send_wol
                log.warning("wake of %s failed: %r", backend.key, exc)
                outcome = m.WakeFinished(f"the wake recipe failed ({type(exc).__name__})")
            finally:
                tell(me, outcome)

        self.waking = gevent.spawn(waking)

    def _on_wake_finished(self, msg: m.WakeFinished) -> None:
        self.waking = None
        answered, self.wake_tasks = self.wake_tasks, []
        name = self.key
        if msg.error is None:
            self.asleep = False
            log.info("backend %s is awake", name)
            if self.backend.discovers:
                self._on_list_due()
            result: Result = final_result(200, {"awake": True})
            # Woken for a task of ours, or for one name of several: the hub still says
            # the others sleep (it would send each a wake of its own).
            if not answered or len(self.served) > 1:
                self._report("active")
        else:
            probing = self.backend.wake is None and not answered and not self.waiting
            log.log(logging.DEBUG if probing else logging.WARNING,
                    "backend %s did not wake: %s", name, msg.error)
            # The hub words a failed wake task itself ("could not wake NAME: …"); the
            # infers waiting here get the same words and code.
            if msg.timed_out:
                result = error_result(msg.error, 504, "wake_timeout")
                failure = result
            else:
                result = error_result(msg.error, 503)
                failure = error_result(f"could not wake {name!r}: {msg.error}", 503,
                                       "wake_failed")
            failed, self.waiting = list(self.waiting), deque()
            for task in failed:
                self._post_later(task["taskId"], failure)
            if self.asleep and self.backend.wake is None:
                self._schedule_probe()
        for task_id in answered:
            self._post_later(task_id, result)
        self._fill_slots()
        self._arm_idle()

    def _schedule_probe(self) -> None:
        if self.probe_timer is not None:
            self.probe_timer.cancel()
        self.probe_timer = call_later(self.probe_interval_s, tell, self.actor_ref, m.ProbeDue())

    def _on_probe_due(self, _msg: m.ProbeDue) -> None:
        self.probe_timer = None
        if self.asleep and self.backend.wake is None and not self.draining:
            self._start_wake()  # without a recipe a wake is a probe; failing, it re-arms

    # --- discovery -----------------------------------------------------------------------

    def _on_list_due(self) -> None:
        """Read the list now if the backend is up and idle (a request beside a stream would
        cut it on llama-cpp-python's server: see the module doc), and again in an interval."""
        if self.list_timer is not None:
            self.list_timer.cancel()
        self.list_timer = call_later(self.probe_interval_s, tell, self.actor_ref, m.ListDue())
        if self.listing is not None or self.asleep or self.draining or self._busy():
            return
        me, backend = self.actor_ref, self.backend

        def listing() -> None:
            outcome = m.Listed(error="the listing was interrupted")
            try:
                ids = discovery.list_ids(backend.base_url, backend.api_key)
                details = discovery.ollama_details(backend.base_url, backend.api_key)
                outcome = m.Listed(tuple(ids), details)
            except discovery.ListingFailed as exc:
                outcome = m.Listed(error=str(exc))
            finally:
                tell(me, outcome)

        self.listing = gevent.spawn(listing)

    def _on_listed(self, msg: m.Listed) -> None:
        self.listing = None
        if msg.error is not None:
            self.catalogue.failed(msg.error)
            return
        changed = self.catalogue.read(msg.ids, msg.details or {})
        if changed is not None and self.on_served is not None:
            self.on_served(self.key, changed)

    def _report(self, status: Status) -> None:
        """Tell the hub, in the order the changes happened (each report waits for the one
        before it)."""
        before, hub, names, session_id = self.reporting, self.hub, list(self.served), \
            self.session_id

        def send() -> None:
            if before is not None:
                before.join()
            report_status(hub, session_id(), names, status)

        self.reporting = gevent.spawn(send)

    def _post_later(self, task_id: str, result: Result) -> None:
        def post() -> None:
            with contextlib.suppress(tasks.TaskGone, Unreachable):
                tasks.post_result(self.hub, self.session_id, task_id, result)

        self.posts = [g for g in self.posts if not g.dead]
        self.posts.append(gevent.spawn(post))

    # --- shutdown (SIGTERM) --------------------------------------------------------------

    def _on_drain(self, _msg: m.Drain) -> None:
        self.draining = True
        self._disarm_idle()
        refused, self.waiting = list(self.waiting), deque()
        for task in refused:
            self._post_later(task["taskId"], _refused())
        if self.waking is not None:  # a wake may take minutes: not worth waiting for
            self.waking.kill(block=False)  # its WakeFinished answers the wake tasks

    def _on_get_drain_state(self, _msg: m.GetDrainState) -> tuple[int, list[gevent.Greenlet]]:
        return len(self.running), [g for g in self.posts if not g.dead]

    def _on_abandon(self, _msg: m.Abandon) -> list[gevent.Greenlet]:
        abandoned, self.running = self.running, {}
        for task_id, greenlet in abandoned.items():
            greenlet.kill(block=False)  # closes the backend call: the backend sees it go
            log.warning("task %s abandoned: the publisher is shutting down", task_id)
            self._post_later(task_id, error_result(
                "the publisher shut down before the backend answered", 503,
                "publisher_disconnected"))
        return [g for g in self.posts if not g.dead]


def _refused() -> Result:
    """For a task the backend never saw: safe to run elsewhere (PROTOCOL: retryable)."""
    return error_result("the publisher is shutting down; the task was not started",
                        503, "publisher_disconnected", retryable=True)
