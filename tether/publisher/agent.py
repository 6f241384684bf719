"""The publisher's session with the hub: register, hold the task stream, heartbeat, and come
back after any loss (stream ended, hub down, 404 on heartbeat) with backoff and jitter, at the
next of the configured hub URLs (docs/protocol.md, Several hub processes). One BackendActor
per backend serves each of its names; a discovering backend's changes are registered and
withdrawn as they come (docs/protocol.md, Discovery), and a name the `hello` frame lists that
nothing here serves is withdrawn at once."""

from __future__ import annotations

import contextlib
import logging
import random
import socket
import time
from collections import deque
from typing import Any

import gevent
import gevent.event
import gevent.lock
import pykka

from tether.common import sse, task_wire
from tether.common.actor import Crash, tell
from tether.common.backend_client import BackendClient, Unreachable
from tether.common.task_wire import error_result
from tether.publisher import channel, tasks
from tether.publisher import messages as m
from tether.publisher.backend import BackendActor, Crashed
from tether.publisher.config import BackendConfig, PublisherConfig
from tether.publisher.discovery import Served
from tether.publisher.drain import ASK_TIMEOUT_S, Drain
from tether.publisher.hub_client import HubClient, body_chunks, socket_of
from tether.publisher.registration import (
    Registrar,
    Registration,
    Status,
    heartbeat,
    provider_spec,
    report_status,
    withdraw,
)
from tether.publisher.session_file import SessionFile

log = logging.getLogger("tether.publisher")

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
# Like the hub's supervisor: a backend actor that crashes more often than this is left down.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 10.0


class Publisher:
    def __init__(self, config: PublisherConfig) -> None:
        self.config = config
        self.hub = HubClient(config.hub, config.key)
        # Results go on the session's result channel first (tasks.post_result), if on; a task
        # whose line the hub refused 404 (it ended there) is stopped as by a cancel.
        self.results = channel.attach(self.hub, self.current_session, config.result_channel,
                                      self.cancel)
        self.session_file = SessionFile(config.session_path)
        self.session_id: str | None = self.session_file.read()
        self.actors: dict[str, pykka.ActorRef] = {}  # by backend key (BackendConfig.key)
        # What each backend serves, by its key: its one name, or what it listed last.
        self.served: dict[str, dict[str, Served]] = {
            b.key: {} if b.discovers else {b.name: Served(b)} for b in config.backends}
        self._sync_lock = gevent.lock.BoundedSemaphore()  # one register/withdraw at a time
        self._idle_logged = False
        self.last_event_id: str | None = None
        self.stopping = gevent.event.Event()
        self._stream: Any = None
        self._heartbeat: gevent.Greenlet | None = None
        self._pending: list[gevent.Greenlet] = []
        self._restarts: dict[str, deque[float]] = {}
        self.down: set[str] = set()  # backends whose actor crashed too often: left down
        self.registrar = Registrar(self.hub, config.probe_interval_s)
        self.drain = Drain(config.drain_timeout_s)
        self._answers: list[gevent.Greenlet] = []
        self._retry_held: gevent.Greenlet | None = None

    # --- session id ----------------------------------------------------------------------

    def _save_session(self, session_id: str) -> None:
        try:
            self.session_file.write(session_id)
        except OSError as exc:
            log.warning("cannot keep the session id in %s: %s", self.session_file.path, exc)

    def current_session(self) -> str | None:
        return self.session_id

    # --- start ---------------------------------------------------------------------------

    def start_backends(self) -> None:
        """Probe each backend: up → active; down with a wake recipe → hibernating; down
        without one → published once its probe passes."""
        for backend in self.config.backends:
            up = BackendClient(backend.base_url, backend.api_key, 1).probe()
            if backend.discovers:  # its actor lists its models once it is up
                self._start_actor(backend, asleep=not up)
                log.info("publishing what %s lists (%s)", backend.key,
                         "up" if up else "down for now")
            elif up or backend.wake is not None:
                self._start_actor(backend, asleep=not up)
                log.info("publishing %s (%s)", backend.name, "active" if up else "hibernating")
            else:
                log.warning("backend %s at %s is down and has no wake recipe: publishing it "
                            "once it answers", backend.name, backend.base_url)
                self._pending.append(gevent.spawn(self._await_backend, backend))

    def _start_actor(self, backend: BackendConfig, asleep: bool) -> None:
        self.actors[backend.key] = BackendActor.start(
            backend, self.hub, self.current_session, asleep, self._on_backend_crashed,
            self.config.probe_interval_s, self.served[backend.key], self._on_served)

    # --- supervision ---------------------------------------------------------------------

    def _on_backend_crashed(self, crash: Crashed) -> None:
        """Called from the crashed actor's on_failure (it answered its tasks already):
        restart it at once in the state it had, or leave it down after too many crashes.
        Never blocks: the actor's greenlet is ending."""
        current = self.actors.get(crash.name)
        if current is None or current.actor_urn != crash.ref.actor_urn or \
                self.stopping.is_set():
            return
        now = time.monotonic()
        history = self._restarts.setdefault(crash.name, deque())
        while history and now - history[0] > RESTART_WINDOW_S:
            history.popleft()
        history.append(now)
        backend = next(b for b in self.config.backends if b.key == crash.name)
        if len(history) > MAX_RESTARTS:
            log.error("the actor of backend %s crashed %d times in %g s: leaving it down "
                      "(its Llm hibernates and every wake fails; restart tether publish)",
                      crash.name, len(history), RESTART_WINDOW_S)
            del self.actors[crash.name]
            self.down.add(crash.name)
            gevent.spawn(self._report_down, crash.name)
            return
        self._start_actor(backend, asleep=crash.asleep)
        log.warning("restarted the actor of backend %s", crash.name)

    def _report_down(self, key: str) -> None:
        """A backend left down hibernates at the hub: a request wakes it, the wake fails at
        once (see dispatch), and the client gets 503 `wake_failed` instead of a wait."""
        report_status(self.hub, self.session_id, list(self.served.get(key, {})), "hibernating")

    def crash_backend(self) -> None:
        """Fault injection (TETHER_FAULT_INJECTION=1, SIGUSR1): the first backend's actor
        raises, as a bug would."""
        ref = self.actors.get(self.config.backends[0].key)
        if ref is not None:
            tell(ref, Crash())

    def _await_backend(self, backend: BackendConfig) -> None:
        client = BackendClient(backend.base_url, backend.api_key, 1)
        while not self.stopping.is_set():
            if client.probe():
                log.info("backend %s is up: publishing it", backend.name)
                self._start_actor(backend, asleep=False)
                if self._stream is not None:
                    try:
                        self.register()
                    except (Registration, Unreachable) as exc:
                        log.warning("could not add %s: %s", backend.name, exc)
                return
            self.stopping.wait(self.config.probe_interval_s)

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        self.start_backends()
        failures = 0
        while not self.stopping.is_set():
            lost = False  # this hub is gone or failing: the next attempt goes to the next one
            try:
                if set(self.routes()):
                    self._idle_logged = False
                    if self.connect_once():
                        failures = 0
                    lost = True  # the stream ended
                else:
                    if not self._idle_logged:  # once, not each interval
                        log.info("no backend is up yet; waiting (one that lists its models "
                                 "is published once it lists one)")
                    self._idle_logged = True
                    self.stopping.wait(self.config.probe_interval_s)
                    continue
            except Unreachable as exc:
                log.warning("hub session lost: %s", exc)
                lost = True
            except Registration as exc:
                log.warning("hub session lost: %s", exc)
                lost = exc.hub_failing
            except Exception:  # keep serving: a bug in one session must not end the agent
                log.exception("hub session failed")
            finally:
                self._stop_heartbeat()
                self._stream = None
            if self.stopping.is_set():
                break
            if lost and len(self.hub.urls) > 1:
                log.info("moving to the next hub: %s", self.hub.move_on())
            delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** failures)
            failures += 1
            self.stopping.wait(delay * random.uniform(0.5, 1.0))
        self.stop()

    def _end_stream(self) -> None:
        """End the stream read from outside the reading greenlet (signal, heartbeat):
        shutting the socket down wakes the read; closing the file under it would not."""
        sock = socket_of(self._stream)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def shutdown(self) -> None:
        """SIGTERM / SIGINT: stop taking tasks, let the running ones finish for up to
        `drain_timeout_s`, answer the rest, then stop. A second signal cuts the wait."""
        self.drain.start(list(self.actors.values()), lambda: self._answers,
                         lambda until: channel.flush(self.results, until), self.stop)

    def stop(self) -> None:
        self.stopping.set()
        self._end_stream()
        for greenlet in self._pending:
            greenlet.kill(block=False)
        for ref in self.actors.values():
            with contextlib.suppress(pykka.ActorDeadError):
                ref.stop(block=False)

    def routes(self) -> dict[str, str]:
        """Each name served here → the key of its backend (the first that lists it)."""
        out: dict[str, str] = {}
        for backend in self.config.backends:
            if backend.key in self.actors or backend.key in self.down:
                for name in self.served.get(backend.key, {}):
                    out.setdefault(name, backend.key)
        return out

    def providers(self, only: set[str] | None = None) -> list[dict[str, Any]]:
        """The register specs of the names served here (of `only`, if given)."""
        routes = self.routes()
        specs = []
        for backend in self.config.backends:
            mine = [name for name, key in routes.items() if key == backend.key
                    and (only is None or name in only)]
            if not mine:
                continue
            status: Status = "hibernating"
            ref = self.actors.get(backend.key)
            if backend.key not in self.down and ref is not None:
                with contextlib.suppress(pykka.ActorDeadError):  # its restart is under way
                    status = ref.ask(m.GetStatus(), block=True, timeout=ASK_TIMEOUT_S)
            served = self.served[backend.key]
            specs += [provider_spec(served[name].config, status, served[name].extra_config)
                      for name in mine]
        return specs

    def _on_served(self, key: str, served: dict[str, Served]) -> None:
        """A discovering backend listed something new (called in its actor: never blocks)."""
        gevent.spawn(self._sync, key, served)

    def _sync(self, key: str, served: dict[str, Served]) -> None:
        """Register what a backend lists anew (or lists with other details), withdraw what
        it no longer lists. If the hub cannot be told now, the next connect registers
        everything, and its `hello` says what to withdraw."""
        with self._sync_lock:
            before = self.served.get(key, {})
            self.served[key] = served
            changed = {name for name, x in served.items() if before.get(name) != x}
            gone = set(before) - set(served)
            # A name held elsewhere (409) was never ours: not retried, nor withdrawn.
            gone, self.registrar.held = gone - self.registrar.held, self.registrar.held - gone
            if changed or gone:
                log.info("%s now lists %d model(s): %d new or changed, %d gone", key,
                         len(served), len(changed), len(gone))
            if self.session_id is None:
                return  # not registered yet: the first connect registers everything
            gone -= set(self.routes())  # another backend serves it still
            try:
                if changed:
                    self.register(only=changed)
            except (Registration, Unreachable) as exc:
                log.warning("could not register %s: %s", ", ".join(sorted(changed)), exc)
            if gone:
                withdraw(self.hub, self.session_id, sorted(gone))

    def _withdraw_stale(self, listed: list[str]) -> None:
        """What the `hello` frame lists and nothing here serves (removed while we were
        away) is withdrawn, or a heartbeat would keep it alive."""
        with self._sync_lock:
            stale = set(listed) - set(self.routes())
            if stale and self.session_id is not None:
                log.info("the hub still lists %s for this session: withdrawing",
                         ", ".join(sorted(stale)))
                withdraw(self.hub, self.session_id, sorted(stale))

    def register(self, only: set[str] | None = None) -> None:
        """Register every name served here (or those of `only`); names another session
        holds are retried every `probe_interval_s` (registration.Registrar)."""
        session_id, taken = self.registrar.register_all(self.session_id, self.providers(only))
        if self.registrar.held and (self._retry_held is None or self._retry_held.dead):
            self._retry_held = gevent.spawn(self._retry_held_names)
        if session_id != self.session_id:
            self.session_id = session_id
            self._save_session(session_id)
        log.info("registered %s as session %s", ", ".join(taken), self.session_id)

    def _retry_held_names(self) -> None:
        while self.registrar.held and not self.stopping.wait(self.config.probe_interval_s):
            if self._stream is None:
                continue  # the next connect registers everything anyway
            try:
                self.register()
            except (Registration, Unreachable) as exc:
                log.debug("retrying the held names: %s", exc)

    def connect_once(self) -> bool:
        """One session: register, stream until it ends. True if the stream said hello."""
        with self._sync_lock:  # a discovery change meanwhile goes after it, not beside it
            self.register()
        assert self.session_id is not None
        response = self.hub.open_stream(self.session_id, self.last_event_id, read_timeout=90)
        if response.status != 200:
            data = response.data
            response.release_conn()
            raise Registration(f"stream answered {response.status}: {data[:200]!r}",
                               response.status)
        self._stream = response
        greeted = False
        try:
            for item in sse.parse(sse.iter_lines(body_chunks(response))):
                if isinstance(item, str):
                    continue  # a keepalive comment
                if item.event == "hello":
                    greeted = True
                    hello = item.json()
                    interval = float(hello.get("heartbeatIntervalS", 30))
                    self._start_heartbeat(interval)
                    listed = hello.get("llms")
                    if isinstance(listed, list) and set(listed) - set(self.routes()):
                        gevent.spawn(self._withdraw_stale, [str(x) for x in listed])
                    if self.results is not None:
                        self.results.said_hello(self.hub.url, hello.get("chunksOnChannel") is True)
                    log.info("connected to %s", self.hub.url)
                elif item.event == "task":
                    if item.id is not None:
                        self.last_event_id = item.id
                    self.dispatch(item.json())
        except (OSError, Exception) as exc:  # a cut connection surfaces as several types
            if not self.stopping.is_set():
                log.warning("stream broke: %s", exc)
        finally:
            response.close()
        if not self.stopping.is_set():
            log.warning("stream from the hub ended; reconnecting")
        return greeted

    def dispatch(self, task: task_wire.Task) -> None:
        self.drain.task_came.set()
        if task["kind"] == "cancel":
            self.cancel(task["taskId"])
            return
        if task["kind"] not in ("infer", "wake"):
            log.warning("ignoring a task of unknown kind %r", task["kind"])
            return
        task_id, name = task["taskId"], task["llmName"]
        key = self.routes().get(name)
        ref = self.actors.get(key) if key is not None else None
        if self.drain.started:
            refusal = error_result("the publisher is shutting down; the task was not started",
                                   503, "publisher_disconnected", retryable=True)
        elif key in self.down:
            refusal = error_result(f"backend {name}'s actor is down on this publisher", 503,
                                   retryable=True)
        elif ref is None:
            refusal = error_result(f"no backend named {name!r} on this publisher", 404)
        else:
            message = m.RunInfer(task) if task["kind"] == "infer" else m.RunWake(task_id)
            if tell(ref, message):
                return
            # it crashed this instant; nothing ran
            refusal = error_result(f"backend {name}'s actor is restarting", 503, retryable=True)
        self._answer_later(task_id, refusal)

    def cancel(self, task_id: str) -> None:
        """Stop working on a task (the hub ended it); one no actor holds is ignored."""
        for actor in list(self.actors.values()):
            tell(actor, m.CancelTask(task_id))

    def _answer_later(self, task_id: str, result: task_wire.Result) -> None:
        """Answer a task the agent itself refuses; kept so a shutdown waits for it."""
        self._answers = [g for g in self._answers if not g.dead]
        self._answers.append(gevent.spawn(self._answer, task_id, result))

    def _answer(self, task_id: str, result: task_wire.Result) -> None:
        with contextlib.suppress(tasks.TaskGone, Unreachable):
            tasks.post_result(self.hub, self.current_session, task_id, result)

    # --- heartbeat -----------------------------------------------------------------------

    def _start_heartbeat(self, interval: float) -> None:
        self._stop_heartbeat()
        # A 404 ends the stream: the loop re-registers and re-opens.
        self._heartbeat = gevent.spawn(heartbeat, self.hub, self.current_session, interval,
                                       self._end_stream)

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.kill(block=False)
            self._heartbeat = None
