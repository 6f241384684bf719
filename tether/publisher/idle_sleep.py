"""The idle timer that scales a backend to zero, and its sleep recipe: a part of BackendActor
(tether/publisher/backend.py), in a module of its own for size. It runs in the actor, on
the actor's state (declared below)."""

from __future__ import annotations

import logging
from collections import deque

import gevent
import pykka

from tether.common.actor import tell
from tether.common.runtime import Timer, call_later
from tether.common.task_wire import InferTask
from tether.publisher import messages as m
from tether.publisher import recipes
from tether.publisher.config import BackendConfig
from tether.publisher.registration import Status

log = logging.getLogger("tether.publisher.backend")


class IdleSleep:
    @property
    def actor_ref(self) -> pykka.ActorRef:
        raise NotImplementedError  # the actor's own (pykka.Actor)

    backend: BackendConfig
    key: str
    asleep: bool
    draining: bool
    running: dict[str, gevent.Greenlet]
    waiting: deque[InferTask]
    wake_tasks: list[str]
    waking: gevent.Greenlet | None
    sleeping: gevent.Greenlet | None
    idle_generation: int
    idle_timer: Timer | None

    # The actor's own (BackendActor).
    def _report(self, status: Status) -> None:
        raise NotImplementedError

    def _start_wake(self) -> None:
        raise NotImplementedError

    def _fill_slots(self) -> None:
        raise NotImplementedError

    def _busy(self) -> bool:
        return bool(self.running or self.waiting or self.waking or self.sleeping)

    def _disarm_idle(self) -> None:
        self.idle_generation += 1
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def _arm_idle(self) -> None:
        self._disarm_idle()
        idle = self.backend.idle_sleep_s
        if idle is None or self.asleep or self._busy() or self.draining:
            return
        self.idle_timer = call_later(idle, tell, self.actor_ref,
                                     m.IdleExpired(self.idle_generation))

    def _on_idle_expired(self, msg: m.IdleExpired) -> None:
        if msg.generation != self.idle_generation or self.asleep or self._busy():
            return
        recipe = self.backend.sleep
        assert recipe is not None
        self.asleep = True  # from now on an infer waits for a wake
        me, backend = self.actor_ref, self.backend

        def sleep() -> None:
            # Always tell the outcome (see wake): `sleeping` must never stay set.
            error: str | None = "the sleep recipe was interrupted"
            try:
                recipes.run(recipe, backend.wake_timeout_s, "sleep recipe", backend.key)
                error = None
            except recipes.RecipeFailed as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001 - e.g. OSError from send_wol
                log.warning("sleep recipe of %s failed: %r", backend.key, exc)
                error = f"{type(exc).__name__}: {exc}"
            finally:
                tell(me, m.SleepFinished(error))

        log.info("backend %s idle for %gs: running its sleep recipe", backend.key,
                 backend.idle_sleep_s)
        self.sleeping = gevent.spawn(sleep)

    def _on_sleep_finished(self, msg: m.SleepFinished) -> None:
        self.sleeping = None
        if msg.error is not None:
            log.warning("sleep recipe of %s failed: %s", self.key, msg.error)
            self.asleep = False
        else:
            self._report("hibernating")
        if self.wake_tasks or (self.waiting and self.asleep):
            self._start_wake()
        self._fill_slots()
        self._arm_idle()
