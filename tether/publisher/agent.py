"""The publisher's session with the hub: register, hold the task stream, heartbeat, and come
back after any loss (stream ended, hub down, 404 on heartbeat) with backoff and jitter."""

from __future__ import annotations

import contextlib
import logging
import random
import socket
from typing import Any

import gevent
import gevent.event
import pykka

from tether import sse
from tether.openai_client import BackendClient, Unreachable, body_chunks
from tether.publisher import messages as m
from tether.publisher import tasks
from tether.publisher.backend import BackendActor
from tether.publisher.clients import HubClient, socket_of
from tether.publisher.config import BackendConfig, PublisherConfig

log = logging.getLogger("tether.publisher")

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0
ASK_TIMEOUT_S = 5.0


class Registration(Exception):
    """The hub refused to register us (e.g. a name owned by another publisher)."""


class Publisher:
    def __init__(self, config: PublisherConfig) -> None:
        self.config = config
        self.hub = HubClient(config.hub, config.key)
        self.session_id: str | None = self._load_session()
        self.actors: dict[str, pykka.ActorRef] = {}
        self.last_event_id: str | None = None
        self.stopping = gevent.event.Event()
        self._stream: Any = None
        self._heartbeat: gevent.Greenlet | None = None
        self._pending: list[gevent.Greenlet] = []

    # --- session id ----------------------------------------------------------------------

    def _load_session(self) -> str | None:
        path = self.config.session_path
        try:
            text = path.read_text().strip()
        except OSError:
            return None
        return text or None

    def _save_session(self, session_id: str) -> None:
        path = self.config.session_path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(session_id + "\n")
        except OSError as exc:
            log.warning("cannot keep the session id in %s: %s", path, exc)

    def current_session(self) -> str | None:
        return self.session_id

    # --- start ---------------------------------------------------------------------------

    def start_backends(self) -> None:
        """Probe each backend: up → active; down with a wake recipe → hibernating; down
        without one → published once its probe passes."""
        for backend in self.config.backends:
            up = BackendClient(backend.base_url, backend.api_key, 1).probe()
            if up or backend.wake is not None:
                self._start_actor(backend, asleep=not up)
                log.info("publishing %s (%s)", backend.name, "active" if up else "hibernating")
            else:
                log.warning("backend %s at %s is down and has no wake recipe: publishing it "
                            "once it answers", backend.name, backend.base_url)
                self._pending.append(gevent.spawn(self._await_backend, backend))

    def _start_actor(self, backend: BackendConfig, asleep: bool) -> None:
        self.actors[backend.name] = BackendActor.start(backend, self.hub, self.current_session,
                                                       asleep)

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
            try:
                if self.actors:
                    if self.connect_once():
                        failures = 0
                else:
                    log.info("no backend is up yet; waiting")
            except (Unreachable, Registration) as exc:
                log.warning("hub session lost: %s", exc)
            except Exception:  # keep serving: a bug in one session must not end the agent
                log.exception("hub session failed")
            finally:
                self._stop_heartbeat()
                self._stream = None
            if self.stopping.is_set():
                break
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

    def stop(self) -> None:
        self.stopping.set()
        self._end_stream()
        for greenlet in self._pending:
            greenlet.kill(block=False)
        for ref in self.actors.values():
            with contextlib.suppress(pykka.ActorDeadError):
                ref.stop(block=False)

    def providers(self) -> list[dict[str, Any]]:
        specs = []
        for backend in self.config.backends:
            ref = self.actors.get(backend.name)
            if ref is None:
                continue
            status = ref.ask(m.GetStatus(), timeout=ASK_TIMEOUT_S)
            specs.append({"name": backend.name, "type": backend.type, "model": backend.model,
                          "tier": backend.tier, "description": backend.description,
                          "initialStatus": status})
        return specs

    def register(self) -> None:
        status, body = self.hub.post("/api/v1/llms/_provider-register",
                                     {"providerSessionId": self.session_id,
                                      "providers": self.providers()})
        if status != 200:
            message = (body or {}).get("error", {}).get("message", body)
            raise Registration(f"register answered {status}: {message}")
        if body["providerSessionId"] != self.session_id:
            self.session_id = body["providerSessionId"]
            self._save_session(self.session_id)
        log.info("registered %s as session %s",
                 ", ".join(row["name"] for row in body["llms"]), self.session_id)

    def connect_once(self) -> bool:
        """One session: register, stream until it ends. True if the stream said hello."""
        self.register()
        assert self.session_id is not None
        response = self.hub.open_stream(self.session_id, self.last_event_id, read_timeout=90)
        if response.status != 200:
            data = response.data
            response.release_conn()
            raise Registration(f"stream answered {response.status}: {data[:200]!r}")
        self._stream = response
        greeted = False
        try:
            for item in sse.parse(sse.iter_lines(body_chunks(response))):
                if isinstance(item, str):
                    continue  # a keepalive comment
                if item.event == "hello":
                    greeted = True
                    interval = float(item.json().get("heartbeatIntervalS", 30))
                    self._start_heartbeat(interval)
                    log.info("connected to %s", self.config.hub)
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

    def dispatch(self, task: dict[str, Any]) -> None:
        kind = task.get("kind")
        if kind == "cancel":
            for ref in self.actors.values():
                ref.tell(m.CancelTask(task["taskId"]))
            return
        ref = self.actors.get(task.get("llmName", ""))
        if ref is None:
            gevent.spawn(self._answer_unknown, task)
        elif kind == "infer":
            ref.tell(m.RunInfer(task))
        elif kind == "wake":
            ref.tell(m.RunWake(task["taskId"]))

    def _answer_unknown(self, task: dict[str, Any]) -> None:
        with contextlib.suppress(tasks.TaskGone, Unreachable):
            tasks.post_result(self.hub, self.current_session, task["taskId"],
                              tasks.error_result(f"no backend named {task.get('llmName')!r} "
                                                 "on this publisher", 404))

    # --- heartbeat -----------------------------------------------------------------------

    def _start_heartbeat(self, interval: float) -> None:
        self._stop_heartbeat()
        self._heartbeat = gevent.spawn(self._beat, interval)

    def _stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.kill(block=False)
            self._heartbeat = None

    def _beat(self, interval: float) -> None:
        while True:
            gevent.sleep(interval)
            try:
                status, _ = self.hub.post("/api/v1/llms/_provider-heartbeat",
                                          {"providerSessionId": self.session_id}, timeout=10)
            except Unreachable as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            if status == 404:
                log.warning("the hub forgot this session; registering again")
                self._end_stream()  # the loop re-registers and re-opens
                return

