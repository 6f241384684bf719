"""/metrics for the whole host when `tether serve` runs several workers (prometheus_client's
multiprocess mode; docs/protocol.md, Several hub processes).

A scrape reaches one worker, so each worker's metrics live in files that every worker can
read: `tether serve` makes a temporary directory for them, names it in
PROMETHEUS_MULTIPROC_DIR before any worker starts (prometheus_client picks its storage when
it is first imported), and removes it when the hub exits. Counters and histograms add up
across workers. The gauges read from the board (tether_in_flight, tether_queued, ...) are
per process: each worker copies its own into file-backed gauges every REFRESH_S, and a
scrape shows their sum over the live workers ("livesum"). Process-level collectors
(CPU, memory, GC) are per process and have no host-wide meaning: they are left out.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "tether-metrics-"  # then the pid of the `tether serve` that made it
REFRESH_S = 1.0


def enabled() -> bool:
    return bool(os.environ.get(ENV))


@contextlib.contextmanager
def directory(workers: int) -> Iterator[None]:
    """For the life of `tether serve`: a fresh metrics directory when there are several
    workers (an operator's own PROMETHEUS_MULTIPROC_DIR is used as it is, and kept)."""
    if workers <= 1 or enabled():
        yield
        return
    if "prometheus_client" in sys.modules:
        raise RuntimeError("prometheus_client was imported before its multiprocess directory "
                           "was set: the workers would each count on their own")
    _remove_stale()
    path = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")
    os.environ[ENV] = path
    try:
        yield
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def _remove_stale() -> None:
    """The directories of hubs that were killed (SIGKILL skips the cleanup): their pid is
    gone."""
    for path in Path(tempfile.gettempdir()).glob(f"{PREFIX}*-*"):
        pid = path.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


def exposition() -> bytes:
    """Every worker's metrics, merged."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def worker_exited(pid: int) -> None:
    """gunicorn's child_exit: a dead worker's gauges stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)


class BoardGauges:
    """This worker's board gauges, copied into file-backed gauges.

    Only what changed since the last copy is written: a worker owning 10,000 Llms has
    20,000 samples (in flight and queued, per Llm), nearly all unchanged from one second to
    the next, and writing each (a label lookup and a locked write into the file) took its
    event loop for seconds at a time: long enough to miss its liveness renewal in a cluster.
    """

    YIELD_EVERY = 1000  # samples compared between two turns of the event loop

    def __init__(self, collector: Any) -> None:
        self._collector = collector  # tether.observability.metrics' board collector
        self._gauges: dict[str, Any] = {}
        # gauge -> label values -> the value written last: a series that goes is set to 0
        # (files keep series: zero, not remove), and is then no longer tracked.
        self._written: dict[str, dict[tuple[str, ...], float]] = {}

    def refresh(self) -> None:
        from prometheus_client import Gauge

        seen = 0
        for family in self._collector.collect():
            labelnames = list(getattr(family, "_labelnames", ()))
            gauge = self._gauges.get(family.name)
            if gauge is None:
                gauge = self._gauges[family.name] = Gauge(
                    family.name, family.documentation, labelnames, registry=None,
                    multiprocess_mode="livesum")
                self._written[family.name] = {}
            before = self._written[family.name]
            now: dict[tuple[str, ...], float] = {}
            for sample in family.samples:
                values = tuple(sample.labels[n] for n in labelnames)
                now[values] = sample.value
                if before.get(values) != sample.value:
                    (gauge.labels(*values) if labelnames else gauge).set(sample.value)
                seen += 1
                if seen % self.YIELD_EVERY == 0:
                    time.sleep(0)  # gevent: let the loop run (liveness, requests)
            for gone in before.keys() - now.keys():
                if before[gone] != 0:
                    gauge.labels(*gone).set(0)
            self._written[family.name] = now


def mirror_board(collector: Any) -> None:
    """In a worker: keep its board gauges in the shared files, every REFRESH_S."""
    from tether.common.runtime import spawn

    gauges = BoardGauges(collector)

    def loop() -> None:
        while True:
            try:
                gauges.refresh()
            except Exception:  # noqa: BLE001 - a metric must not kill its refresher
                import logging

                logging.getLogger("tether.metrics").exception("board gauges: refresh failed")
            time.sleep(REFRESH_S)

    spawn(loop)
