"""The fault schedule of a chaos run: one fault at a time, spread over the run, in a fixed
order of kinds (cycled on longer runs), targets drawn from a seeded random generator.

| kind | what is done | held |
|---|---|---|
| publisher_kill | `kill -9` of a `tether publish`, started again (same session file) | 1 s |
| publisher_stop | SIGSTOP of a `tether publish`, then SIGCONT | 4 s |
| redis_restart | `kill -9` of the run's redis-server, started again empty | 3 s |
| postgres_down | the proxy closes: every connection reset, new ones refused | 4 s |
| postgres_blackhole | the proxy drops every byte both ways and closes nothing | 4 s |
| hub_kill | `kill -9` of a hub process (master and workers), started again | 1 s |
| hub_term | SIGTERM to a hub process (it drains), started again once it exited | - |
| pool_join | two new `tether publish` register a new pool name at once, one per hub | ≤ 10 s |
| worker_kill | (`--workers 2` variant) `kill -9` of one worker; gunicorn starts another | - |

A black-holed connection lost bytes that TCP would have retransmitted: when the hole ends the
proxy resets the connections it held (as TCP gives up on a silent peer), and new ones pass.
While a hub process is down (killed, or draining after SIGTERM), the load sends it nothing.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.support.chaos import ChaosProxy
from tests.support.hub import wait_until
from tests.support.kill import kill_hub
from tests.support.procs import Publish

if TYPE_CHECKING:
    from tests.chaos.stack import HubProc, Member, Stack

ORDER = ("publisher_kill", "redis_restart", "publisher_stop", "postgres_down", "hub_kill",
         "postgres_blackhole", "hub_term", "pool_join")
ENGINE_KINDS = {"redis_restart", "postgres_down", "postgres_blackhole"}
WARMUP_S = 5.0  # load alone before the first fault: a baseline
MIN_GAP_S = 3.0  # between one fault's end and the next one's start
# On long runs, a fault every 15 s: each leaves a few seconds past its allowance
# (liveness_ttl_s + 2 s) in which the cluster must serve again. A short run has every kind
# once, closer together.
LONG_SLOT_S = 15.0


@dataclass
class Fault:
    kind: str
    target: str
    start: float  # time.time()
    end: float = 0.0  # when it was undone (restarted, continued, reconnected)
    note: str = ""  # what went wrong undoing it (a restart that failed)

    def describe(self) -> str:
        note = f" ({self.note})" if self.note else ""
        return f"{self.kind} {self.target} at +{self.start - T0[0]:.1f} s{note}"


T0 = [0.0]  # the run's start, for readable times in the report


class Schedule:
    def __init__(self, stack: Stack, duration_s: float, seed: int) -> None:
        self.stack = stack
        self.duration_s = duration_s
        self.rng = random.Random(seed)
        self.kinds = list(ORDER) + (["worker_kill"] if stack.workers_2 else [])
        self.faults: list[Fault] = []
        self._hub_turn = 0
        self._joins = 0

    def run(self, started: float) -> list[Fault]:
        """Inject the faults from `started` (time.time()) until the run's duration is over;
        returns when the last one is undone."""
        T0[0] = started
        count = max(len(self.kinds), int((self.duration_s - WARMUP_S) // LONG_SLOT_S))
        slot = (self.duration_s - WARMUP_S) / count
        for i in range(count):
            at = max(started + WARMUP_S + i * slot,
                     (self.faults[-1].end + MIN_GAP_S) if self.faults else 0.0)
            _sleep_until(at)  # a schedule, not a wait for an event: faults are timed
            kind = self.kinds[i % len(self.kinds)]
            self.faults.append(getattr(self, f"_{kind}")())
        return self.faults

    # --- the faults ------------------------------------------------------------------------

    def _member(self) -> Member:
        return self.rng.choice(self.stack.members)

    def _hub(self) -> HubProc:
        self._hub_turn += 1
        return self.stack.hubs[self._hub_turn % len(self.stack.hubs)]

    def _publisher_kill(self) -> Fault:
        member = self._member()
        fault = Fault("publisher_kill", member.label, time.time())
        proc = member.publish.proc
        assert proc is not None
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)
        time.sleep(1)
        member.publish.start()
        fault.end = time.time()
        return fault

    def _publisher_stop(self) -> Fault:
        member = self._member()
        pid = member.pid()
        fault = Fault("publisher_stop", member.label, time.time())
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        member.stopped = True
        time.sleep(4)
        os.kill(pid, signal.SIGCONT)
        member.stopped = False
        fault.end = time.time()
        return fault

    def _redis_restart(self) -> Fault:
        fault = Fault("redis_restart", "redis", time.time())
        self.stack.redis.stop()
        time.sleep(3)
        self.stack.redis.start()
        fault.end = time.time()
        return fault

    def _postgres_down(self) -> Fault:
        proxy = self.stack.proxy
        assert proxy is not None
        fault = Fault("postgres_down", "postgres", time.time())
        proxy.close()
        time.sleep(4)
        self.stack.proxy = ChaosProxy(proxy.target[1], port=proxy.port)
        fault.end = time.time()
        return fault

    def _postgres_blackhole(self) -> Fault:
        proxy = self.stack.proxy
        assert proxy is not None
        fault = Fault("postgres_blackhole", "postgres", time.time())
        proxy.blackhole.set()
        time.sleep(4)
        proxy.blackhole.clear()
        proxy.cut()
        fault.end = time.time()
        return fault

    def _hub_kill(self) -> Fault:
        proc = self._hub()
        fault = Fault("hub_kill", proc.label, time.time())
        proc.up = False
        kill_hub(proc.hub)
        time.sleep(1)
        self._restart(proc, fault)
        return fault

    def _hub_term(self) -> Fault:
        proc = self._hub()
        fault = Fault("hub_term", proc.label, time.time())
        proc.up = False
        try:
            code = proc.hub.stop(signal.SIGTERM, timeout=60)
            if code != 0:
                fault.note = f"exited {code} after SIGTERM"
        except subprocess.TimeoutExpired:
            fault.note = "still draining 60 s after SIGTERM: killed"
        self._restart(proc, fault)
        return fault

    def _pool_join(self) -> Fault:
        self._joins += 1
        name = f"join{self._joins}"
        fault = Fault("pool_join", name, time.time())
        urls = [h.url for h in self.stack.hubs]
        spec = {"name": name, "model": "demo-model", "base_url": self.stack.spare.base_url,
                "pool": True}
        joiners = [Publish(self.stack.tmp, urls[i:] + urls[:i], [spec]) for i in range(2)]
        self.stack.extra += joiners  # stopped by the stack if the run ends meanwhile
        for joiner in joiners:  # as close together as two processes start
            joiner.start()
        try:
            wait_until(lambda: all("registered" in j.logs() for j in joiners), timeout=10)
        except AssertionError:
            fault.note = "not both registered within 10 s: " + " | ".join(
                j.logs().strip().splitlines()[-1][:150] if j.logs().strip() else "(no log)"
                for j in joiners)
        for joiner in joiners:
            joiner.stop()
        fault.end = time.time()
        return fault

    def _worker_kill(self) -> Fault:
        proc = next(h for h in self.stack.hubs if h.workers > 1)
        workers = proc.worker_pids()
        fault = Fault("worker_kill", f"{proc.label} worker", time.time())
        if workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.rng.choice(workers), signal.SIGKILL)
        else:
            fault.note = "no worker to kill"
        fault.end = time.time()
        return fault

    def _restart(self, proc: HubProc, fault: Fault) -> None:
        proc.expected_down = True
        try:
            proc.hub.start(timeout=60)
        except RuntimeError as exc:
            fault.note = f"restart failed: {str(exc).splitlines()[0]}"
            proc.restarts.append(fault.note)
        else:
            proc.expected_down = False
            proc.up = True
        fault.end = time.time()


def _sleep_until(at: float) -> None:
    delay = at - time.time()
    if delay > 0:
        time.sleep(delay)
