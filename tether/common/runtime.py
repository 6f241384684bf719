"""The few primitives that differ between the gevent hub and plain threads (unit tests, CLI).

Under gunicorn's gevent worker, threading is monkey-patched: pykka actors are greenlets and
queue.Queue is cooperative. Timers then live on the gevent loop (no greenlet per timer);
elsewhere they are threading.Timer.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


def gevent_active() -> bool:
    """Whether threads are gevent's: in the hub's worker and the publisher, not in unit
    tests or tools. Asked each time, as a process may patch after it imported this; nothing
    is patched before gevent.monkey was imported."""
    monkey = sys.modules.get("gevent.monkey")
    return monkey is not None and bool(monkey.is_module_patched("threading"))


class _LoopTimer:
    __slots__ = ("_watcher",)

    def __init__(self, delay: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        import gevent

        self._watcher = gevent.get_hub().loop.timer(max(delay, 0.0))
        self._watcher.start(fn, *args)

    def cancel(self) -> None:
        self._watcher.stop()
        self._watcher.close()


def call_later(delay: float, fn: Callable[..., Any], *args: Any) -> Timer:
    """Run `fn(*args)` once after `delay` seconds. `fn` must not block: tell an actor."""
    if gevent_active():
        return _LoopTimer(delay, fn, args)
    timer = threading.Timer(delay, fn, args)
    timer.daemon = True
    timer.start()
    return timer


class Task(Protocol):
    def cancel(self) -> None: ...


class _Greenlet:
    __slots__ = ("_greenlet",)

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        import gevent

        self._greenlet = gevent.spawn(fn, *args)

    def cancel(self) -> None:
        self._greenlet.kill(block=False)


class _Thread:
    """Threads cannot be killed: outside gevent (unit tests, tools) cancel is a no-op."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        threading.Thread(target=fn, args=args, daemon=True).start()

    def cancel(self) -> None:
        return None


def spawn(fn: Callable[..., Any], *args: Any) -> Task:
    """Run blocking work (an upstream call) beside the actors, never inside one."""
    return _Greenlet(fn, args) if gevent_active() else _Thread(fn, args)
